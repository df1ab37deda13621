"""InfoBatch: randomly drop part of the well-learned samples and up-weight the rest of them.

"Well learned" means a score (last loss) below the mean score. A fraction ``prune_ratio``
of those is dropped at random each epoch and the kept ones get loss weight
``1 / (1 - prune_ratio)``, so the expected gradient of the epoch equals the full-data one.
The last ``1 - anneal_delta`` of the epochs train on all samples (annealing).

Division of labour with the training loop: the loss for backward is
``mean(per_sample_loss * weight)`` over the batch, while :meth:`InfoBatch.update` must get
the *unweighted* per-sample losses (scores are losses, not weighted losses).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from orderdp_dali.plan import EpochPlan
from orderdp_dali.policies.base import (
    Policy,
    check_ratio,
    floor_times,
    register_policy,
)
from orderdp_dali.policies.full import full_plan

__all__ = ["InfoBatch", "well_learned", "soft_prune", "MIN_KEEP_RATIO"]

MIN_KEEP_RATIO = 0.1
"""The kept fraction of the well-learned samples never drops below this (weights at most 10)."""


def well_learned(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mask of samples whose score is below the mean score of the *seen* samples.

    Unseen samples are never well learned (nothing is known about them) and do not enter the
    mean: their placeholder score (the table's large initial value) would otherwise inflate
    it and mark almost every seen sample as well learned. With no seen sample, none is.
    """
    scores = np.asarray(scores)
    seen = np.asarray(seen, dtype=bool)
    if seen.all():  # every epoch after the first: no masked copy of the scores needed
        return scores < scores.mean(dtype=np.float64)
    if not seen.any():
        return np.zeros(scores.shape, dtype=bool)
    threshold = scores[seen].mean(dtype=np.float64)
    return seen & (scores < threshold)


def soft_prune(
    prunable: np.ndarray, keep_ratio: float, rng: np.random.Generator, replace: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """Keep a random ``floor(keep_ratio * count)`` of the ``prunable`` samples and all others.

    Args:
        prunable: boolean mask over all samples (the well-learned ones).
        keep_ratio: fraction of the prunable samples to keep, in (0, 1]; they get weight
            ``1 / keep_ratio``, every other sample weight 1.
        rng: the generator all randomness comes from.
        replace: draw the kept ones with replacement (the OrderDP release's ImageNet InfoBatch
            baseline): a sample may appear more than once, each copy with weight ``1 / keep_ratio``,
            so its expected weight is still 1.

    Returns:
        (indices, weights): int64 indices in uniformly random order and their float32 weights.
    """
    prunable = np.asarray(prunable, dtype=bool)
    candidates = np.flatnonzero(prunable)
    if replace:
        drawn = candidates[rng.integers(0, candidates.size, floor_times(keep_ratio, candidates.size))]
        indices = np.concatenate([np.flatnonzero(~prunable), drawn])
        rng.shuffle(indices)
        return indices, np.where(prunable[indices], np.float32(1.0 / keep_ratio), np.float32(1.0))
    # The draws of rng.choice(candidates, ...), marked by position among the candidates: a
    # scatter into a small mask and one in-order pass, instead of a random gather of indices.
    chosen = np.zeros(candidates.size, dtype=bool)
    chosen[rng.choice(candidates.size, floor_times(keep_ratio, candidates.size), replace=False, shuffle=False)] = True
    keep = np.logical_not(prunable)
    keep[candidates] = chosen
    indices = np.flatnonzero(keep)
    rng.shuffle(indices)
    # 1 + flag * (w - 1) is exactly w or 1 in float32, and much cheaper than np.where here.
    up = np.float32(1.0 / keep_ratio)
    weights = prunable[indices].astype(np.float32)
    weights *= up - np.float32(1.0)
    weights += np.float32(1.0)
    return indices, weights


def _check_prune_ratio(value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid prune_ratio: {value!r} (need a number in [0, 1))") from None
    if not 0.0 <= p < 1.0:
        raise ValueError(f"Invalid prune_ratio: {value!r} (need a number in [0, 1))")
    return p


@register_policy
class InfoBatch(Policy):
    """Drop part of the below-mean-loss samples, up-weight the rest: cheaper, same expected gradient.

    Before :func:`first_full_epoch` (while ``epoch + 1 <= anneal_delta * num_epochs``): of the ``count``
    well-learned samples (score below the mean score of the seen samples, see
    :func:`well_learned`) a random ``floor(keep_ratio * count)``, drawn without replacement,
    are kept with weight ``1 / keep_ratio``, where ``keep_ratio = max(0.1, 1 - prune_ratio)``;
    every other sample is kept with weight 1. From that epoch on: all samples, weights 1.

    Example: 1000 seen samples, 600 below the mean, ``prune_ratio=0.5``: the plan holds the
    400 others (weight 1) plus 300 random well-learned ones (weight 2), 700 in all.

    Args:
        num_samples: n, the number of training samples.
        prune_ratio: fraction of the well-learned samples to drop, in [0, 1); default 0.5.
        anneal_delta: fraction of the epochs that prune, in (0, 1]; default 0.875 (the
            reference's ``delta``); None prunes every epoch (the OrderDP release's InfoBatch
            baselines: ``--is_anealing 0`` on CIFAR, the annealing commented out on ImageNet).
        replace: draw the kept well-learned samples with replacement (the release's ImageNet
            baseline; see :func:`soft_prune`); default False, as InfoBatch's own release.
        score_lag: epochs the scores arrive late (:meth:`Policy.scores_for`); 1 is the release's
            distributed ImageNet path.
        seed: seed of the per-epoch generators.
        num_epochs: total epochs (required: annealing depends on it).
        initial_score: the score of a sample never trained on (default 1e4: above the mean,
            so never pruned before its first loss).

    Raises:
        ValueError: a parameter out of range (the message names it) or no ``num_epochs``.
    """

    name = "infobatch"
    ranks_by_loss = True

    def __init__(
        self,
        num_samples: int,
        prune_ratio: float = 0.5,
        anneal_delta: Optional[float] = 0.875,
        *,
        replace: bool = False,
        seed: int = 0,
        num_epochs: Optional[int] = None,
        initial_score: float = 1e4,
        score_lag: int = 0,
    ) -> None:
        super().__init__(num_samples, seed=seed, num_epochs=num_epochs, initial_score=initial_score,
                         score_lag=score_lag)
        self.prune_ratio = _check_prune_ratio(prune_ratio)
        if self.num_epochs is None and anneal_delta is not None:
            raise ValueError("InfoBatch needs num_epochs (its annealing starts at anneal_delta * num_epochs)")
        self.anneal_delta = None if anneal_delta is None else check_ratio("anneal_delta", anneal_delta)
        if not isinstance(replace, (bool, np.bool_)):
            raise TypeError(f"Invalid replace: {replace!r} (need true or false)")
        self.replace = bool(replace)
        self.keep_ratio = max(MIN_KEEP_RATIO, 1.0 - self.prune_ratio)

    def select(self, epoch: int) -> EpochPlan:
        """All non-well-learned samples plus a random share of the well-learned ones, shuffled."""
        rng = self.rng(epoch)
        if not self.prunes(epoch):
            return full_plan(epoch, self.num_samples, rng)
        prunable = well_learned(*self.scores_for(epoch))
        indices, weights = soft_prune(prunable, self.keep_ratio, rng, replace=self.replace)
        return EpochPlan(epoch, indices, weights)

    def expected_size(self, epoch: int) -> int:
        """The plan length of ``epoch`` from the current scores, without drawing the plan."""
        if not self.prunes(epoch):
            return self.num_samples
        count = int(np.count_nonzero(well_learned(*self.peek_scores_for(epoch))))
        return self.num_samples - count + floor_times(self.keep_ratio, count)

    def config(self) -> Dict[str, Any]:
        """Base settings plus prune_ratio and anneal_delta."""
        return {
            **super().config(),
            "prune_ratio": self.prune_ratio,
            "anneal_delta": self.anneal_delta,
            "initial_score": self.initial_score,
            **({"replace": True} if self.replace else {}),  # only when set: earlier checkpoints still match
        }
