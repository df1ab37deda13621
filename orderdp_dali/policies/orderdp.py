"""OrderDP: each epoch, train on the q highest-loss samples of a uniform random subset of size s.

The math lives in pure numpy functions (:func:`subset_sizes`, :func:`top_q_of_random_subset`,
:func:`inclusion_probabilities`, :func:`per_sample_inclusion`) so it can be tested without
torch or DALI; :class:`OrderDP` is the thin stateful wrapper around them.

Why the random subset: a plain top-k by loss would train on the same hard (or mislabelled)
samples every epoch. Ranking only within a random subset gives every sample a known chance
of being kept: the sample ranked j-th by score (j = 1 the largest) is kept with probability

    pi_j = sum_{l = max(1, s-n+j)}^{min(q, j)} C(j-1, l-1) C(n-j, s-l) / C(n, s),

and sum_j pi_j = q. The expected gradient of a pruned epoch is therefore that of an ordered
(L-statistic) surrogate loss with weights pi_j: OrderDP is unbiased with respect to that
surrogate.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from orderdp_dali.plan import EpochPlan, unit_weights
from orderdp_dali.policies.base import (
    Policy,
    check_ratio,
    floor_times,
    register_policy,
)
from orderdp_dali.policies.full import full_plan

__all__ = [
    "OrderDP",
    "subset_sizes",
    "top_q_of_random_subset",
    "inclusion_probabilities",
    "per_sample_inclusion",
]


def subset_sizes(num_samples: int, random_len_ratio: float, top_q_ratio: float) -> Tuple[int, int]:
    """``(s, q) = (floor(r * n), floor(t * s))``: the random subset's size and how many of it are kept.

    Example (ImageNet-1k, ResNet-50 reference): n = 1,281,167, r = 0.75, t = 0.8 gives
    s = 960,875 and q = 768,700, i.e. 60.0% of the samples per pruned epoch.

    Raises:
        ValueError: a ratio outside (0, 1], or ratios that keep no sample for this ``n``.
    """
    r = check_ratio("random_len_ratio", random_len_ratio)
    t = check_ratio("top_q_ratio", top_q_ratio)
    n = int(num_samples)
    s = floor_times(r, n)
    q = floor_times(t, s)
    if q < 1:
        raise ValueError(
            f"random_len_ratio={random_len_ratio!r} and top_q_ratio={top_q_ratio!r} keep no "
            f"sample of num_samples={n}: s = floor(r*n) = {s}, q = floor(t*s) = {q}; "
            f"raise the ratios (need t * floor(r * n) >= 1)"
        )
    return s, q


def _check_sizes(n: int, s: int, q: int) -> None:
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (n, s, q)):
        raise TypeError(f"n, s, q must be ints, got {n!r}, {s!r}, {q!r}")
    if not 1 <= q <= s <= n:
        raise ValueError(f"Invalid sizes n={n}, s={s}, q={q} (need 1 <= q <= s <= n)")


def top_q_of_random_subset(scores: np.ndarray, s: int, q: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``q`` largest ``scores`` within a uniform random ``s``-subset, in random order.

    Ties at the cut-off are broken uniformly at random with ``rng`` (never by index order),
    so samples with equal scores (all unseen samples, say) have equal chances. Cost at
    n = 1.28M: a min(s, n - s)-element draw, one gather, one ``np.partition`` and a
    q-element shuffle; no full sort.

    Args:
        scores: per-sample scores, shape (n,); larger means "keep first".
        s: size of the random subset, 1 <= s <= n.
        q: how many of the subset to keep, 1 <= q <= s.
        rng: the generator all randomness comes from.

    Returns:
        int64 array of q distinct sample indices in uniformly random order.
    """
    scores = np.asarray(scores)
    n = int(scores.shape[0])
    _check_sizes(n, s, q)
    if s == n:
        subset = np.arange(n, dtype=np.int64)
    elif 2 * s >= n:
        # Drawing the complement is cheaper than drawing s of n when s >= n / 2 (the usual
        # 75-80%), and leaves the subset in index order, so the gather below is sequential.
        in_subset = np.ones(n, dtype=bool)
        in_subset[rng.choice(n, n - s, replace=False, shuffle=False)] = False
        subset = np.flatnonzero(in_subset)
    else:
        subset = rng.choice(n, s, replace=False, shuffle=False)
    if q < s:
        values = scores[subset]
        cut = np.partition(values, s - q)[s - q]  # the q-th largest value
        keep = values > cut
        short = q - int(np.count_nonzero(keep))
        tied = np.flatnonzero(values == cut)
        if short < tied.size:
            tied = rng.choice(tied, short, replace=False, shuffle=False)
        keep[tied] = True
        subset = subset[keep]
    rng.shuffle(subset)
    return subset


def inclusion_probabilities(n: int, s: int, q: int) -> np.ndarray:
    """Exact probability that OrderDP keeps the sample ranked j-th by score, for j = 1..n.

    A sample is kept iff it is drawn into the subset (probability s/n) and fewer than q of
    the j - 1 higher-ranked samples are drawn with it. Given that it is drawn, the other
    s - 1 members are a uniform sample of the other n - 1, so the count X of higher-ranked
    ones is hypergeometric (population n - 1, j - 1 "successes", s - 1 draws):

        pi_j = (s / n) * P(X <= q - 1),

    which equals the combinatorial sum in the module docstring, without big factorials.
    Vectorised through ``scipy.stats.hypergeom``: about a second for n = 1.28M.

    Returns:
        float64 array of length n, non-increasing, entry j - 1 is pi_j; it sums to q.
    """
    _check_sizes(n, s, q)
    if q == s:  # every drawn sample is kept, whatever its rank
        return np.full(int(n), s / n, dtype=np.float64)
    higher = np.arange(int(n), dtype=np.int64)  # j - 1 for j = 1..n
    from scipy.stats import hypergeom  # imported here: scipy costs a second at start-up

    cdf = hypergeom.cdf(q - 1, n - 1, higher, s - 1)
    return np.clip(cdf, 0.0, 1.0) * (s / n)


def per_sample_inclusion(scores: np.ndarray, s: int, q: int) -> np.ndarray:
    """Per-sample probability of being kept in the next OrderDP epoch, given ``scores``.

    Samples are ranked by score (largest first). Samples with equal scores are exchangeable
    (ties are broken uniformly at random), so each gets the mean of pi_j over the ranks
    their group occupies. The result sums to q.
    """
    scores = np.asarray(scores)
    n = int(scores.shape[0])
    pi = inclusion_probabilities(n, s, q)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    counts = np.diff(np.r_[starts, n])
    out = np.empty(n, dtype=np.float64)
    out[order] = np.repeat(np.add.reduceat(pi, starts) / counts, counts)
    return out


@register_policy
class OrderDP(Policy):
    """Top-q by loss within a random s-subset each epoch: drops easy samples, unbiased for a surrogate.

    ``s = floor(random_len_ratio * n)`` and ``q = floor(top_q_ratio * s)``; see
    :func:`subset_sizes`. Samples never scored hold the score table's large initial value,
    so they rank first and every sample is seen early. All weights are 1: the training loop
    backpropagates the plain mean loss of the kept samples and feeds the same (unweighted)
    per-sample losses to :meth:`update`.

    Like the reference, every epoch is pruned by default. With ``anneal_delta`` (and
    ``num_epochs``) epochs from ``first_full_epoch(anneal_delta, num_epochs)`` on train on
    all samples, as InfoBatch does (``anneal_delta=0.875`` over 90 epochs: epochs 78..89).

    Args:
        num_samples: n, the number of training samples.
        random_len_ratio: r in (0, 1]; the reference uses 0.75 (ImageNet ResNet-50),
            0.8 (ImageNet ResNet-18, CIFAR-100).
        top_q_ratio: t in (0, 1]; the reference uses 0.8, 0.9 and 0.375 respectively.
        anneal_delta: None (prune every epoch) or the fraction of epochs to prune, in (0, 1].
        seed: seed of the per-epoch generators.
        num_epochs: total epochs; needed with ``anneal_delta``.
        initial_score: the score of a sample never trained on. The default (1e4, above any
            real loss) ranks unseen samples first, so every sample is seen within a few
            epochs; the reference uses 1 (ImageNet) or 3 (CIFAR), below every loss under label
            smoothing 0.1 on ImageNet, so there unseen samples rank last.
        score_lag: epochs the scores arrive late (see :meth:`Policy.scores_for`); 0 uses every
            loss at once, 1 reproduces the release's distributed ImageNet path (epoch e plans
            from scores up to e - 2; epochs 0 and 1 random). With a lag, the first ``select``
            of an epoch records the score table for a later epoch.

    Raises:
        ValueError: a ratio outside (0, 1] (the message names it), ratios that keep no
            sample, or ``anneal_delta`` without ``num_epochs``.
    """

    name = "orderdp"
    ranks_by_loss = True

    def __init__(
        self,
        num_samples: int,
        random_len_ratio: float = 0.75,
        top_q_ratio: float = 0.8,
        *,
        anneal_delta: Optional[float] = None,
        seed: int = 0,
        num_epochs: Optional[int] = None,
        initial_score: float = 1e4,
        score_lag: int = 0,
    ) -> None:
        super().__init__(num_samples, seed=seed, num_epochs=num_epochs, initial_score=initial_score,
                         score_lag=score_lag)
        self.random_len_ratio = check_ratio("random_len_ratio", random_len_ratio)
        self.top_q_ratio = check_ratio("top_q_ratio", top_q_ratio)
        self.subset_size, self.keep_size = subset_sizes(
            self.num_samples, self.random_len_ratio, self.top_q_ratio
        )
        self.anneal_delta = self._check_anneal_delta(anneal_delta)

    def select(self, epoch: int) -> EpochPlan:
        """Top-q of a random s-subset by current score, shuffled; all samples in annealing epochs."""
        rng = self.rng(epoch)
        if not self.prunes(epoch):
            return full_plan(epoch, self.num_samples, rng)
        values, _ = self.scores_for(epoch)
        indices = top_q_of_random_subset(values, self.subset_size, self.keep_size, rng)
        return EpochPlan(epoch, indices, unit_weights(indices.shape[0]))

    def expected_size(self, epoch: int) -> int:
        """q in pruned epochs, n in annealing ones (never depends on scores)."""
        return self.keep_size if self.prunes(epoch) else self.num_samples

    def inclusion_probabilities(self, epoch: Optional[int] = None) -> np.ndarray:
        """Each sample's chance to be in the plan of ``epoch`` (a pruned epoch if None), given current scores.

        A sample whose score ties with others gets the mean probability of the ranks they share.
        """
        if epoch is not None and not self.prunes(epoch):
            return np.ones(self.num_samples, dtype=np.float64)
        values = self.scores.values if epoch is None else self.peek_scores_for(epoch)[0]
        return per_sample_inclusion(values, self.subset_size, self.keep_size)

    def config(self) -> Dict[str, Any]:
        """Base settings plus random_len_ratio, top_q_ratio and anneal_delta."""
        return {
            **super().config(),
            "random_len_ratio": self.random_len_ratio,
            "top_q_ratio": self.top_q_ratio,
            "anneal_delta": self.anneal_delta,
            "initial_score": self.initial_score,
        }
