"""Whether a loss-ranked policy's ranking ranks: two figures per epoch, as pure functions.

A policy that ranks by loss (OrderDP, InfoBatch: ``Policy.ranks_by_loss``) keeps samples
because of their *stored* score, the loss recorded when each was last trained, possibly
several epochs ago. Pruning by it pays only if two things hold, and each epoch's training
record measures both:

``ranking_score_ratio``
    Does the plan keep high-score samples? The mean stored score of the kept samples over
    the mean of a uniform draw of the same size from the same table. The uniform draw is
    not sampled: its exact expectation, the table's mean, is used, so the figure carries
    no noise of its own. 1.0: the plan is no better than chance at finding high scores;
    OrderDP, keeping the top fraction of a random subset, lands above 1.
``ranking_spearman``
    Is a stored score still the sample's loss when it is trained? The Spearman rank
    correlation between each kept sample's stored score when the plan was chosen and its
    loss when next trained, which is in that same epoch. Near 0: the scores are stale (the
    model moved on since they were recorded) and ranking by them ranks noise; near 1:
    they predict. Only kept samples are trained, so the correlation is over the kept ones
    (for OrderDP a range cut at the top of each subset, which lowers it against the whole
    table's).

**Never-scored samples** hold the table's ``initial`` value (1e4 by default: a placeholder
that makes score-greedy policies try them, not a loss). Both figures leave them out, so a
few placeholders cannot swamp the means:

* the ratio's numerator is the mean over the kept samples *with* a stored score, its
  denominator the mean over the table's samples with one. That is the exact expectation of
  the same figure for a uniform draw: given that a uniform draw holds k >= 1 scored
  samples, they are a uniform k-subset of the scored ones, whose mean has expectation the
  scored mean, for every k;
* beside it, ``ranking_kept_unseen`` counts the kept samples without a score and
  ``ranking_uniform_unseen`` is the count a uniform draw of the same size expects
  (``planned * unseen / n``, exact): a policy that ranks unseen samples first keeps more;
* the correlation's pairs (``ranking_spearman_pairs`` of them) are the kept samples that had
  a stored score and were trained in the epoch.

The first epoch of a run has no stored scores: its ratio and correlation are None, as is a
correlation with fewer than 2 pairs or a constant side (undefined). For policies that do
not rank by loss the training loop writes none of these fields (they are absent, not None).

Cost: :func:`snapshot` copies the planned samples' scores (O(planned)) and takes one pass
over the table for its scored mean; :func:`epoch_figures` reads the planned samples'
new scores and sorts them for the ranks (O(planned log planned)). The training loop calls
both outside its timed epoch. With several ranks every rank holds the merged table after
each epoch, so every rank computes the same figures from its own copy; no collective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

__all__ = [
    "FIELDS",
    "PlanScores",
    "snapshot",
    "seen_mean",
    "score_ratio",
    "spearman",
    "trained_count",
    "epoch_figures",
]

#: The training record's fields this module writes, in order.
FIELDS = (
    "ranking_score_ratio",
    "ranking_kept_unseen",
    "ranking_uniform_unseen",
    "ranking_spearman",
    "ranking_spearman_pairs",
)


@dataclass(frozen=True)
class PlanScores:
    """What the table said about an epoch's plan when it was chosen (see :func:`snapshot`).

    Attributes:
        indices: the plan's sample indices in training order (not copied: plans are not mutated).
        scores: float32 copy of their stored scores.
        seen: bool copy: whether each had a stored score (False: it held ``initial``).
        table_seen_mean: mean stored score over the table's scored samples (None: none scored).
        table_unseen: how many of the table's samples were never scored.
        table_size: samples in the table.
    """

    indices: np.ndarray
    scores: np.ndarray
    seen: np.ndarray
    table_seen_mean: Optional[float]
    table_unseen: int
    table_size: int


def seen_mean(values: np.ndarray, seen: np.ndarray) -> Optional[float]:
    """Mean of ``values`` where ``seen`` (float64 accumulation, no copy of the table); None if none seen."""
    count = int(np.count_nonzero(seen))
    if count == 0:
        return None
    return float(np.sum(values, dtype=np.float64, where=seen) / count)


def snapshot(indices: Any, values: np.ndarray, seen: np.ndarray) -> PlanScores:
    """The planned samples' stored scores and the table's scored mean, before the epoch trains.

    Args:
        indices: the epoch plan's sample indices.
        values, seen: the score table's arrays (``ScoreTable.values`` and ``.seen``) as the plan
            was chosen from them; only the planned entries are copied.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    values, seen = np.asarray(values), np.asarray(seen, dtype=bool)
    if values.shape != seen.shape or values.ndim != 1:
        raise ValueError(f"values and seen must be 1-D of one shape, got {values.shape} and {seen.shape}")
    return PlanScores(
        indices=idx,
        scores=values[idx].astype(np.float32),
        seen=seen[idx].copy(),
        table_seen_mean=seen_mean(values, seen),
        table_unseen=int(seen.size - np.count_nonzero(seen)),
        table_size=int(seen.size),
    )


def score_ratio(kept_scores: Any, kept_seen: Any, table_seen_mean: Optional[float]) -> Optional[float]:
    """Mean stored score of the kept samples that had one, over the table's scored mean.

    The denominator is the exact expectation of the numerator for a uniform draw of the same
    size (module docstring), so 1.0 means "as a uniform draw". None when no kept sample had a
    score or the table's scored mean is not positive (losses are >= 0; a ratio of means is
    meaningless otherwise).
    """
    s = np.asarray(kept_scores, dtype=np.float64).reshape(-1)
    m = np.asarray(kept_seen, dtype=bool).reshape(-1)
    if s.shape != m.shape:
        raise ValueError(f"kept_scores has {s.size} entries but kept_seen {m.size}")
    if table_seen_mean is None or not table_seen_mean > 0 or not m.any():
        return None
    return float(s[m].mean() / table_seen_mean)


def spearman(x: Any, y: Any) -> Optional[float]:
    """Spearman rank correlation of paired ``x`` and ``y`` (ties get average ranks, as
    ``scipy.stats.spearmanr``); None when undefined: fewer than 2 pairs or a constant side."""
    from scipy.stats import spearmanr

    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs pairs: {a.size} x values but {b.size} y values")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    rho = float(spearmanr(a, b)[0])
    return None if np.isnan(rho) else rho


def trained_count(planned: int, samples: int) -> int:
    """How many of a plan's samples trained in its epoch: always a prefix of the plan.

    Ranks take strided slices of the plan padded by wrap-around
    (:meth:`~orderdp_dali.plan.EpochPlan.shard`: rank r gets positions r, r + W, r + 2W, ...)
    and each trains a prefix of its slice, the same length on every rank, so together they
    train positions ``0 .. samples - 1`` of the padded plan (``samples``: what the ranks
    trained, padding included, as the epoch's record counts it); padding repeats the plan's
    start. Without ``drop_last`` that is the whole plan (unless a rank's shard is a single
    sample, which trains nothing); with it, the first ``samples``. Example: 7 samples on 3
    ranks, batch 2, drop_last: shards of 3, one batch of 2 each, 6 samples: positions 0..5
    train, sample 7 does not.
    """
    return int(min(int(planned), int(samples)))


def epoch_figures(before: PlanScores, values_after: np.ndarray, trained: Optional[int] = None) -> Dict[str, Any]:
    """The epoch's ranking figures (:data:`FIELDS`) from the plan's snapshot and the table after
    the epoch's losses were merged into it.

    Args:
        before: :func:`snapshot` of the plan, taken before the epoch trained.
        values_after: the score table's values once the epoch's losses are in it (a trained
            sample's value is then its loss in this epoch).
        trained: how many samples of the plan (a prefix, :func:`trained_count`) trained; all by
            default. The correlation pairs only those: an untrained one still holds its old score.
    """
    n = len(before.indices)
    k = n if trained is None else max(0, min(int(trained), n))
    pair = before.seen[:k]
    x = before.scores[:k][pair]
    y = np.asarray(values_after)[before.indices[:k][pair]]
    kept_unseen = int(n - np.count_nonzero(before.seen))
    return {
        "ranking_score_ratio": score_ratio(before.scores, before.seen, before.table_seen_mean),
        "ranking_kept_unseen": kept_unseen,
        "ranking_uniform_unseen": n * before.table_unseen / before.table_size,
        "ranking_spearman": spearman(x, y),
        "ranking_spearman_pairs": int(x.size),
    }
