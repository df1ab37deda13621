"""The ranking diagnostics (orderdp_dali.ranking) on hand-made tables with hand-computed answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from orderdp_dali.plan import EpochPlan, unit_weights
from orderdp_dali.plan_source import PlanSource
from orderdp_dali.policies.base import Policy
from orderdp_dali.ranking import FIELDS, epoch_figures, score_ratio, seen_mean, snapshot, spearman, trained_count

# A table of 8 samples: 0..4 scored, 5..7 never scored (they hold the initial value).
VALUES = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0], dtype=np.float32)
SEEN = np.array([True] * 5 + [False] * 3)
PLAN = np.array([4, 5, 3, 1, 2, 6])  # kept: scores 4, (unseen), 3, 1, 2, (unseen)
# Each planned sample's loss in the epoch it trains.
AFTER = VALUES.copy()
AFTER[[4, 5, 3, 1, 2, 6]] = [0.4, 0.8, 0.1, 0.3, 0.2, 0.7]


def test_seen_mean_is_over_scored_samples_only():
    assert seen_mean(VALUES, SEEN) == pytest.approx(10.5 / 5)  # (0.5 + 1 + 2 + 3 + 4) / 5
    assert seen_mean(VALUES, np.zeros(8, dtype=bool)) is None


def test_score_ratio_hand_computed():
    # kept scored samples 4, 3, 1, 2: mean 2.5; table's scored mean 2.1
    s = snapshot(PLAN, VALUES, SEEN)
    assert score_ratio(s.scores, s.seen, s.table_seen_mean) == pytest.approx(2.5 / 2.1)
    assert score_ratio([1.0, 3.0], [True, True], 2.0) == pytest.approx(1.0)  # as a uniform draw
    assert score_ratio([4.0, 9e9], [True, False], 2.0) == pytest.approx(2.0)  # the unseen one left out


def test_score_ratio_undefined_cases():
    assert score_ratio([5.0, 5.0], [False, False], 2.0) is None  # no kept sample has a score
    assert score_ratio([1.0], [True], None) is None  # nothing scored in the table
    assert score_ratio([0.0], [True], 0.0) is None  # zero mean: no ratio
    with pytest.raises(ValueError, match="kept_seen"):
        score_ratio([1.0, 2.0], [True], 1.0)


def test_spearman_hand_computed():
    # no ties: d = (-1, 1, -1, 1, 0), 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties get average ranks: x ranks (1, 2.5, 2.5, 4), y ranks (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 4], [10, 30, 20, 40]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert spearman([3, 1, 2], [10, 30, 20]) == pytest.approx(-1.0)


def test_spearman_undefined_cases():
    assert spearman([], []) is None
    assert spearman([1.0], [2.0]) is None
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # constant side: no ranking
    assert spearman([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) is None
    with pytest.raises(ValueError, match="pairs"):
        spearman([1.0, 2.0], [1.0])


def test_epoch_figures_hand_computed():
    before = snapshot(PLAN, VALUES, SEEN)
    assert before.table_unseen == 3 and before.table_size == 8
    figures = epoch_figures(before, AFTER)
    assert tuple(figures) == FIELDS
    assert figures["ranking_score_ratio"] == pytest.approx(2.5 / 2.1)
    assert figures["ranking_kept_unseen"] == 2
    assert figures["ranking_uniform_unseen"] == pytest.approx(6 * 3 / 8)
    # pairs (stored, next loss) of the scored kept samples 4, 3, 1, 2: (4, .4) (3, .1) (1, .3) (2, .2);
    # ranks (4, 3, 1, 2) and (4, 1, 3, 2): d = (0, 2, -2, 0), 1 - 6 * 8 / (4 * 15) = 0.2
    assert figures["ranking_spearman"] == pytest.approx(0.2)
    assert figures["ranking_spearman_pairs"] == 4


def test_epoch_figures_pair_only_the_trained_prefix():
    # only 4, 5, 3, 1 trained (drop_last): pairs (4, .4) (3, .1) (1, .3): ranks (3, 2, 1), (3, 1, 2): 1 - 12 / 24
    figures = epoch_figures(snapshot(PLAN, VALUES, SEEN), AFTER, trained=4)
    assert figures["ranking_spearman"] == pytest.approx(0.5)
    assert figures["ranking_spearman_pairs"] == 3
    assert figures["ranking_score_ratio"] == pytest.approx(2.5 / 2.1)  # about the plan: every kept sample


def test_unseen_samples_placeholder_value_does_not_matter():
    big = np.where(SEEN, VALUES, np.float32(1e4))
    assert epoch_figures(snapshot(PLAN, big, SEEN), AFTER) == epoch_figures(snapshot(PLAN, VALUES, SEEN), AFTER)


def test_first_epoch_has_no_figures_but_counts_unseen():
    unseen = np.zeros(8, dtype=bool)
    figures = epoch_figures(snapshot(PLAN, np.full(8, 9.0, np.float32), unseen), AFTER)
    assert figures == {"ranking_score_ratio": None, "ranking_kept_unseen": 6, "ranking_uniform_unseen": 6.0,
                       "ranking_spearman": None, "ranking_spearman_pairs": 0}


def test_snapshot_copies_what_it_keeps():
    values, seen = VALUES.copy(), SEEN.copy()
    s = snapshot(PLAN, values, seen)
    values[:] = 0.0
    seen[:] = True
    assert s.scores.tolist() == [4.0, 9.0, 3.0, 1.0, 2.0, 9.0]
    assert s.seen.tolist() == [True, False, True, True, True, False]
    with pytest.raises(ValueError, match="shape"):
        snapshot(PLAN, VALUES, SEEN[:5])


class _FixedPlan(Policy):
    """A policy whose every plan is ``order`` (a shuffled part of the samples)."""

    name = "fixed-plan-test"

    def __init__(self, num_samples: int, order: np.ndarray) -> None:
        super().__init__(num_samples)
        self.order = np.asarray(order, dtype=np.int64)

    def select(self, epoch: int) -> EpochPlan:
        return EpochPlan(epoch, self.order, unit_weights(len(self.order)))


@pytest.mark.parametrize(
    "planned, world, batch, drop_last, expected",
    [
        (7, 3, 2, True, 6),  # shards of 3, one batch of 2 each: positions 0..5
        (7, 3, 2, False, 7),  # shards of 3: a batch of 2 and 1 merged into one of 3 (training)
        (3, 3, 2, False, 0),  # shards of 1: no step at all (BatchNorm cannot train on one sample)
        (7, 1, 2, True, 6),
        (7, 2, 3, True, 6),  # shards of 4, one batch of 3 each
        (10, 4, 2, True, 8),
        (5, 4, 1, True, 5),  # padded to 8: the ranks' 8 positions wrap around the 5 samples
        (13, 2, 4, False, 13),
    ],
)
def test_trained_count_is_the_prefix_the_ranks_train(planned, world, batch, drop_last, expected):
    order = np.random.default_rng(planned).permutation(20)[:planned]
    policy = _FixedPlan(20, order)
    trained, samples = set(), 0
    for rank in range(world):
        src = PlanSource(20, policy, batch, rank=rank, world_size=world, drop_last=drop_last)
        batches = src.batches()
        yielded = [batches.batch(k)[0] for k in range(batches.steps)]
        trained |= {int(i) for b in yielded for i in b}
        samples += sum(len(b) for b in yielded)  # as the epoch's record counts them
    count = trained_count(planned, samples)
    assert count == expected
    assert trained == set(order[:count].tolist())


# ------------------------------------------------------------ in training
def _train_cfg(data, cache, *extra):
    from train_helpers import overrides

    from orderdp_dali.config import load_config

    return load_config(None, overrides(data, cache, "train.eval_every=0", *extra))


def test_orderdp_training_records_carry_the_figures(data, cache, tmp_path):
    """Each epoch's metrics line carries the figures, equal to what the table said before and after
    the epoch (recomputed here from full copies of it), and OrderDP keeps above-mean scores."""
    from scipy.stats import spearmanr

    from orderdp_dali.checkpoint import METRICS
    from orderdp_dali.train import TrainingRun

    cfg = _train_cfg(data, cache, "train.epochs=4", "policy.name=orderdp",
                     "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5}")
    records = []
    with TrainingRun(cfg, output_dir=tmp_path) as run:
        for epoch in range(cfg.train.epochs):
            table = run.train_it.policy.scores
            values, seen, plan = table.values.copy(), table.seen.copy(), run.train_it.plan.indices.copy()
            record = run.run_epoch(epoch)
            records.append(record)
            after = run.train_it.policy.scores.values
            kept = seen[plan]
            assert record["ranking_kept_unseen"] == int((~kept).sum())
            assert record["ranking_uniform_unseen"] == pytest.approx(len(plan) * (~seen).sum() / len(seen))
            assert record["ranking_spearman_pairs"] == int(kept.sum())
            if not kept.any():
                assert record["ranking_score_ratio"] is None and record["ranking_spearman"] is None
                continue
            ratio = values[plan][kept].astype(np.float64).mean() / values[seen].astype(np.float64).mean()
            assert record["ranking_score_ratio"] == pytest.approx(ratio)
            if kept.sum() >= 2:
                assert record["ranking_spearman"] == pytest.approx(spearmanr(values[plan][kept], after[plan][kept])[0])
    assert records[0]["ranking_score_ratio"] is None and records[0]["ranking_kept_unseen"] == records[0]["planned"]
    # OrderDP ranks unseen samples first: epoch 1 may keep only unseen ones (no ratio); from then on
    # the kept scored samples are the top of their subset, above the table's mean.
    ratios = [r["ranking_score_ratio"] for r in records[1:] if r["ranking_score_ratio"] is not None]
    assert ratios and all(x > 1.0 for x in ratios), [r["ranking_score_ratio"] for r in records]
    logged = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [{k: r[k] for k in FIELDS} for r in logged] == json.loads(json.dumps([{k: r[k] for k in FIELDS}
                                                                                  for r in records]))


def test_full_data_training_records_leave_the_figures_out(data, cache, tmp_path):
    from orderdp_dali.train import run_training

    records = run_training(_train_cfg(data, cache, "train.epochs=2", "policy.name=full"), output_dir=tmp_path)
    assert len(records) == 2 and not any(k.startswith("ranking_") for r in records for k in r)
