"""Uniform random pruning at a fixed budget: the ablation that matches OrderDP's sample count.

Trained with the same budget as OrderDP (``budget = q``), it separates the effect of
"fewer samples per epoch" from that of "the right samples": any accuracy gap between the
two comes from OrderDP's loss ranking alone.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from orderdp_dali.plan import EpochPlan, unit_weights
from orderdp_dali.policies.base import (
    Policy,
    check_ratio,
    floor_times,
    register_policy,
)
from orderdp_dali.policies.full import full_plan
from orderdp_dali.policies.orderdp import subset_sizes

__all__ = ["FixedBudgetPolicy", "UniformRandom"]


class FixedBudgetPolicy(Policy):
    """Base of the policies that train on a fixed number of samples per pruned epoch, weights 1.

    Give the budget in one of two ways:

    * ``keep_ratio=f``: ``budget = floor(f * n)``;
    * ``random_len_ratio=r, top_q_ratio=t`` (OrderDP's ratios): ``budget = q =
      floor(t * floor(r * n))``, exactly OrderDP's plan length for the same n. For
      ImageNet (n = 1,281,167) with r = 0.75, t = 0.8 that is 768,700, whereas
      ``keep_ratio=0.6`` would give 768,700 too but ``keep_ratio=0.72`` (r = 0.8, t = 0.9)
      gives 922,440 against OrderDP's 922,439: prefer the ratios form for a matched run.

    ``anneal_delta`` (with ``num_epochs``) mirrors OrderDP's option, so the budgets still
    match when OrderDP anneals. Scores are recorded but never used. Subclasses implement
    :meth:`select`: which ``budget`` samples an epoch takes.

    Raises:
        ValueError: neither or both budget forms, a ratio outside (0, 1] (the message names
            it), a budget of 0 samples, or ``anneal_delta`` without ``num_epochs``.
    """

    def __init__(
        self,
        num_samples: int,
        keep_ratio: Optional[float] = None,
        *,
        random_len_ratio: Optional[float] = None,
        top_q_ratio: Optional[float] = None,
        anneal_delta: Optional[float] = None,
        seed: int = 0,
        num_epochs: Optional[int] = None,
    ) -> None:
        super().__init__(num_samples, seed=seed, num_epochs=num_epochs)
        who = type(self).__name__
        orderdp_form = (random_len_ratio, top_q_ratio) != (None, None)
        if (keep_ratio is None) == (not orderdp_form):
            raise ValueError(
                f"{who} needs either keep_ratio or both random_len_ratio and top_q_ratio "
                f"(got keep_ratio={keep_ratio!r}, random_len_ratio={random_len_ratio!r}, "
                f"top_q_ratio={top_q_ratio!r})"
            )
        self.keep_ratio: Optional[float] = None
        self.random_len_ratio: Optional[float] = None
        self.top_q_ratio: Optional[float] = None
        if orderdp_form:
            if random_len_ratio is None or top_q_ratio is None:
                missing = "random_len_ratio" if random_len_ratio is None else "top_q_ratio"
                raise ValueError(f"{who} got one of OrderDP's ratios but not {missing}")
            self.random_len_ratio = check_ratio("random_len_ratio", random_len_ratio)
            self.top_q_ratio = check_ratio("top_q_ratio", top_q_ratio)
            _, self.budget = subset_sizes(self.num_samples, self.random_len_ratio, self.top_q_ratio)
        else:
            self.keep_ratio = check_ratio("keep_ratio", keep_ratio)
            self.budget = floor_times(self.keep_ratio, self.num_samples)
            if self.budget < 1:
                raise ValueError(
                    f"keep_ratio={keep_ratio!r} keeps no sample of num_samples={self.num_samples}"
                )
        self.anneal_delta = self._check_anneal_delta(anneal_delta)

    def expected_size(self, epoch: int) -> int:
        """``budget`` in pruned epochs, n in annealing ones."""
        return self.budget if self.prunes(epoch) else self.num_samples

    def config(self) -> Dict[str, Any]:
        """Base settings plus the budget's source ratios, the budget and anneal_delta."""
        return {
            **super().config(),
            "keep_ratio": self.keep_ratio,
            "random_len_ratio": self.random_len_ratio,
            "top_q_ratio": self.top_q_ratio,
            "budget": self.budget,
            "anneal_delta": self.anneal_delta,
        }


@register_policy
class UniformRandom(FixedBudgetPolicy):
    """A uniform random subset of fixed size each epoch, weights 1: the matched-budget ablation.

    Each pruned epoch draws ``budget`` samples afresh, independently of earlier epochs (so a
    sample may be drawn in consecutive epochs, or not for many); ``rs2`` draws them without
    replacement across epochs instead. The budget's two forms (``keep_ratio``, or OrderDP's
    ``random_len_ratio`` and ``top_q_ratio``), ``anneal_delta`` and the errors are those of
    :class:`FixedBudgetPolicy`.
    """

    name = "uniform"

    def select(self, epoch: int) -> EpochPlan:
        """``budget`` distinct samples drawn uniformly without replacement, in random order."""
        rng = self.rng(epoch)
        if not self.prunes(epoch):
            return full_plan(epoch, self.num_samples, rng)
        indices = rng.choice(self.num_samples, self.budget, replace=False, shuffle=True)
        return EpochPlan(epoch, indices, unit_weights(self.budget))
