"""Tests of the pruning policies (pure numpy, CPU, a few seconds in all)."""
from __future__ import annotations

import math
import sys
from typing import Callable, Dict

import numpy as np
import pytest

from orderdp_dali.plan import EpochPlan
from orderdp_dali.policies import (
    POLICIES,
    RS2,
    FullData,
    InfoBatch,
    OrderDP,
    Policy,
    UniformRandom,
    inclusion_probabilities,
    make_policy,
)
from orderdp_dali.policies.base import first_full_epoch, floor_times
from orderdp_dali.policies.infobatch import well_learned
from orderdp_dali.policies.orderdp import per_sample_inclusion, subset_sizes, top_q_of_random_subset
from orderdp_dali.policies.rs2 import cycle_length, ring_window

# A policy of each kind with small, distinct settings; every factory takes (n, seed).
FACTORIES: Dict[str, Callable[..., Policy]] = {
    "full": lambda n, seed=0: FullData(n, seed=seed, num_epochs=10),
    "orderdp": lambda n, seed=0: OrderDP(n, 0.8, 0.5, seed=seed, num_epochs=10),
    "orderdp_anneal": lambda n, seed=0: OrderDP(n, 0.8, 0.5, anneal_delta=0.5, seed=seed, num_epochs=10),
    "infobatch": lambda n, seed=0: InfoBatch(n, 0.5, 0.875, seed=seed, num_epochs=10),
    "uniform": lambda n, seed=0: UniformRandom(n, random_len_ratio=0.8, top_q_ratio=0.5, seed=seed),
    "rs2": lambda n, seed=0: RS2(n, random_len_ratio=0.8, top_q_ratio=0.5, seed=seed),
}


def exact_pi(n: int, s: int, q: int) -> np.ndarray:
    """SPEC.md's combinatorial formula, with exact integers (small n only)."""
    total = math.comb(n, s)
    out = []
    for j in range(1, n + 1):
        num = sum(
            math.comb(j - 1, k - 1) * math.comb(n - j, s - k)
            for k in range(max(1, s - n + j), min(q, j) + 1)
        )
        out.append(num / total)
    return np.array(out)


def train_epochs(policy: Policy, epochs: range, loss_seed: int = 123) -> None:
    """Select each epoch's plan and feed it fake losses in batches, like a training loop."""
    for epoch in epochs:
        plan = policy.select(epoch)
        rng = np.random.default_rng([loss_seed, epoch])
        losses = rng.gamma(2.0, 1.0, len(plan)).astype(np.float32)
        for start in range(0, len(plan), 64):
            policy.update(plan.indices[start : start + 64], losses[start : start + 64])


def assert_same_plan(a: EpochPlan, b: EpochPlan) -> None:
    assert a.epoch == b.epoch
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_registry_and_make_policy():
    assert {"full", "orderdp", "infobatch", "uniform", "rs2"} <= set(POLICIES)
    assert isinstance(make_policy("orderdp", 100, random_len_ratio=0.5, top_q_ratio=0.5), OrderDP)
    assert isinstance(make_policy("infobatch", 100, num_epochs=5), InfoBatch)
    rs2 = make_policy("rs2", 100, keep_ratio=0.3)
    assert isinstance(rs2, RS2) and rs2.budget == 30 and len(rs2.select(0)) == 30
    with pytest.raises(ValueError, match="Unknown policy"):
        make_policy("topk", 100)


# ---------------------------------------------------------------- OrderDP


@pytest.mark.parametrize(
    "n,r,t", [(100, 0.75, 0.8), (1000, 0.8, 0.375), (37, 1.0, 1.0), (50, 0.29, 1.0)]
)
def test_orderdp_plan_size_unique_weights(n, r, t):
    policy = OrderDP(n, r, t, seed=3)
    s, q = subset_sizes(n, r, t)
    assert (s, q) == (floor_times(r, n), floor_times(t, floor_times(r, n)))
    assert (policy.subset_size, policy.keep_size) == (s, q)
    train_epochs(policy, range(2))
    for epoch in range(2, 5):
        plan = policy.select(epoch)
        assert len(plan) == q == policy.expected_size(epoch)
        assert np.unique(plan.indices).size == q
        assert plan.indices.min() >= 0 and plan.indices.max() < n
        assert plan.indices.dtype == np.int64 and plan.weights.dtype == np.float32
        np.testing.assert_array_equal(plan.weights, 1.0)


def test_subset_sizes_imagenet_reference():
    assert subset_sizes(1_281_167, 0.75, 0.8) == (960_875, 768_700)
    assert subset_sizes(1_281_167, 0.8, 0.9) == (1_024_933, 922_439)
    assert subset_sizes(100, 0.29, 1.0) == (29, 29)  # 0.29 * 100 == 28.999999999999996 in floats


def test_orderdp_ratios_that_keep_nothing():
    with pytest.raises(ValueError, match="keep no sample"):
        OrderDP(10, 0.1, 0.5)  # s = 1, q = 0
    with pytest.raises(ValueError, match="Invalid random_len_ratio"):
        OrderDP(10, None, 0.5)  # required, unlike UniformRandom's optional ratios


def test_orderdp_keeps_exactly_the_top_q_of_its_subset():
    """Re-derive the subset: with r=1 the plan must be exactly the q largest scores."""
    n = 200
    policy = OrderDP(n, 1.0, 0.25, seed=0)
    scores = np.random.default_rng(0).permutation(n).astype(np.float32)
    policy.update(np.arange(n), scores)
    plan = policy.select(0)
    assert set(plan.indices.tolist()) == set(np.argsort(scores)[-50:].tolist())
    # the order is shuffled, not by score
    assert not np.all(np.diff(scores[plan.indices]) < 0)


def test_orderdp_prefers_unseen_samples():
    n = 100
    policy = OrderDP(n, 1.0, 0.5, seed=1)  # q = 50
    policy.update(np.arange(50), np.full(50, 1e3, dtype=np.float32))  # high, but below the initial 1e4
    plan = policy.select(0)
    assert set(plan.indices.tolist()) == set(range(50, 100))
    # With a random subset (s = 50, q = 25) and 20 unseen samples, every unseen sample that
    # is drawn is kept (at most 20 < q of them), so each is kept with probability s/n = 0.5,
    # while the 25 lowest-scored seen samples (ranks 76..100 > n - s + q) are never kept.
    policy = OrderDP(n, 0.5, 0.5, seed=1)
    scores = np.random.default_rng(2).permutation(80).astype(np.float32)
    policy.update(np.arange(80), scores)
    counts = np.zeros(n)
    draws = 400
    for epoch in range(draws):
        counts[policy.select(epoch).indices] += 1
    np.testing.assert_allclose(policy.inclusion_probabilities()[80:], 0.5)
    assert np.all(np.abs(counts[80:] / draws - 0.5) <= 5 * np.sqrt(0.25 / draws) + 0.005)
    assert np.all(counts[np.argsort(scores)[:25]] == 0)


@pytest.mark.parametrize("s,q", [(s, q) for s in range(1, 13) for q in range(1, s + 1)])
def test_inclusion_probabilities_match_exact_formula(s, q):
    n = 12
    pi = inclusion_probabilities(n, s, q)
    assert pi.dtype == np.float64 and pi.shape == (n,)
    np.testing.assert_allclose(pi, exact_pi(n, s, q), rtol=1e-10, atol=1e-13)
    assert pi.sum() == pytest.approx(q, rel=1e-12)
    assert np.all(np.diff(pi) <= 1e-15)  # never increases with rank


def test_inclusion_probabilities_other_sizes_and_errors():
    for n, s, q in [(1, 1, 1), (7, 7, 3), (40, 20, 10), (1000, 750, 600)]:
        assert inclusion_probabilities(n, s, q).sum() == pytest.approx(q, rel=1e-9)
    np.testing.assert_allclose(
        inclusion_probabilities(30, 17, 5), exact_pi(30, 17, 5), rtol=1e-9, atol=1e-14
    )
    for bad in [(10, 5, 0), (10, 11, 2), (10, 4, 5)]:
        with pytest.raises(ValueError, match="Invalid sizes"):
            inclusion_probabilities(*bad)


@pytest.mark.parametrize("r,t,s,q", [(0.5, 0.5, 20, 10), (0.3, 0.34, 12, 4)])  # subset >= / < n/2
def test_orderdp_empirical_inclusion_matches_exact_pi(r, t, s, q):
    """4000 seeded epochs at n=40 with distinct scores.

    Each rank's kept count over N epochs is Binomial(N, pi_j) (epochs use independent
    generators). Tolerance: 5 binomial standard errors plus 0.005 slack, per rank. A
    correct sampler fails this with probability about 40 * 6e-7; a policy that broke ties
    by index, kept the top q of all n, or drew a non-uniform subset fails it outright.
    """
    n, draws = 40, 4000
    policy = OrderDP(n, r, t, seed=7)
    assert (policy.subset_size, policy.keep_size) == (s, q)
    scores = np.random.default_rng(5).permutation(n).astype(np.float32) + 1.0  # distinct
    policy.update(np.arange(n), scores)
    counts = np.zeros(n)
    for epoch in range(draws):
        counts[policy.select(epoch).indices] += 1
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[np.argsort(-scores)] = np.arange(n)
    freq = np.empty(n)
    freq[rank_of] = counts / draws
    pi = exact_pi(n, s, q)
    tol = 5 * np.sqrt(pi * (1 - pi) / draws) + 0.005
    assert np.all(np.abs(freq - pi) <= tol), np.max(np.abs(freq - pi) - tol)
    # the per-sample method agrees with the per-rank vector
    np.testing.assert_allclose(policy.inclusion_probabilities()[np.argsort(-scores)], pi, rtol=1e-9)


def test_orderdp_ties_are_broken_at_random():
    """Ten samples share the cut-off score: each must be kept equally often, not by index."""
    n, draws = 30, 2000
    policy = OrderDP(n, 1.0, 0.5, seed=11)  # s = 30, q = 15
    scores = np.concatenate([np.full(10, 50.0), np.full(10, 5.0), np.full(10, 1.0)]).astype(np.float32)
    policy.update(np.arange(n), scores)
    counts = np.zeros(n)
    for epoch in range(draws):
        counts[policy.select(epoch).indices] += 1
    freq = counts / draws
    expected = policy.inclusion_probabilities()
    np.testing.assert_allclose(expected, np.repeat([1.0, 0.5, 0.0], 10))
    # Binomial(2000, 0.5): 5 standard errors = 0.056
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(0.25 / draws) + 0.005)


def test_per_sample_inclusion_sums_to_q_with_ties():
    scores = np.array([3, 3, 1, 2, 2, 2, 0, 5], dtype=np.float32)
    pi = per_sample_inclusion(scores, 5, 3)
    assert pi.sum() == pytest.approx(3)
    exact = exact_pi(8, 5, 3)  # by rank: 5 -> 1; 3, 3 -> 2, 3; 2, 2, 2 -> 4..6; 1 -> 7; 0 -> 8
    group = [exact[1:3].mean()] * 2 + [exact[6]] + [exact[3:6].mean()] * 3 + [exact[7], exact[0]]
    np.testing.assert_allclose(pi, group, rtol=1e-12)
    assert pi[7] == pi[0] > pi[3] > pi[2] == pi[6] == 0.0  # pi_j = s/n for j <= q; 0 past n - s + q


def test_top_q_of_random_subset_all_tied_is_uniform():
    n, s, q, draws = 20, 15, 5, 3000
    counts = np.zeros(n)
    scores = np.ones(n, dtype=np.float32)
    for k in range(draws):
        kept = top_q_of_random_subset(scores, s, q, np.random.default_rng([1, k]))
        assert kept.size == q and np.unique(kept).size == q
        counts[kept] += 1
    p = q / n
    assert np.all(np.abs(counts / draws - p) <= 5 * np.sqrt(p * (1 - p) / draws) + 0.005)


def test_orderdp_anneal():
    policy = OrderDP(100, 0.5, 0.5, anneal_delta=0.875, num_epochs=90)
    # the reference: full data once epoch + 1 > delta * epochs, i.e. from epoch 78 of 90
    assert first_full_epoch(0.875, 90) == 78
    assert [policy.prunes(e) for e in (0, 77, 78, 89)] == [True, True, False, False]
    assert len(policy.select(77)) == 25
    plan = policy.select(78)
    assert sorted(plan.indices.tolist()) == list(range(100)) and np.all(plan.weights == 1)
    np.testing.assert_array_equal(policy.inclusion_probabilities(78), 1.0)
    assert first_full_epoch(0.7, 10) == 7  # 0.7 * 10 is 7.000000000000001 in floats
    assert first_full_epoch(0.29, 100) == 29  # 28.999999999999996 in floats
    assert first_full_epoch(1.0, 90) == 90  # never anneals
    for delta, epochs in ((0.875, 90), (0.5, 7), (0.3, 10), (0.875, 8)):  # the reference's rule, epoch by epoch
        reference = min(e for e in range(epochs + 1) if e + 1 > delta * epochs or e == epochs)
        assert first_full_epoch(delta, epochs) == reference
    with pytest.raises(ValueError, match="num_epochs"):
        OrderDP(100, anneal_delta=0.5)


def _python_lines_run(fn) -> int:
    """How many Python lines ``fn()`` executes (every frame, numpy's Python wrappers included)."""
    lines = 0

    def tracer(frame, event, arg):
        nonlocal lines
        lines += event == "line"
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return lines


def test_orderdp_select_is_vectorised_and_sorts_nothing(monkeypatch):
    """At ImageNet size select() must stay a few numpy calls (bench/scale_bench.py times it).

    Deterministic stand-ins for a time limit: the Python lines select() runs do not grow with
    n (a per-sample Python loop would add ~n of them), and no full sort is called (the top q
    come from np.partition).
    """

    def scored_policy(n):
        policy = OrderDP(n, 0.75, 0.8)
        policy.update(np.arange(n), np.random.default_rng(0).random(n))
        policy.select(0)
        return policy

    small, big = scored_policy(1_000), scored_policy(200_000)
    lines_small = _python_lines_run(lambda: small.select(1))
    lines_big = _python_lines_run(lambda: big.select(1))
    assert lines_small < 1_000 and lines_big < lines_small + 100, (lines_small, lines_big)

    def no_sort(*args, **kwargs):
        raise AssertionError("OrderDP.select called a full sort")

    for name in ("sort", "argsort", "lexsort"):
        monkeypatch.setattr(np, name, no_sort)
    plan = big.select(2)
    assert len(plan) == 120_000 and np.unique(plan.indices).size == 120_000


# ---------------------------------------------------------------- InfoBatch


def _infobatch_with_scores(n: int, **kw) -> tuple:
    policy = InfoBatch(n, num_epochs=kw.pop("num_epochs", 10), **kw)
    scores = np.random.default_rng(4).gamma(2.0, 1.0, n).astype(np.float32)
    policy.update(np.arange(n), scores)
    return policy, scores


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.7])
def test_infobatch_counts_and_weights(p):
    n = 1000
    policy, scores = _infobatch_with_scores(n, prune_ratio=p)
    well = scores < scores.mean(dtype=np.float64)
    count = int(well.sum())
    assert 0 < count < n
    for epoch in range(3):
        plan = policy.select(epoch)
        assert len(plan) == (n - count) + math.floor((1 - p) * count) == policy.expected_size(epoch)
        assert np.unique(plan.indices).size == len(plan)
        in_well = well[plan.indices]
        assert np.sum(~in_well) == n - count  # every other sample is kept
        np.testing.assert_array_equal(plan.weights[in_well], np.float32(1 / (1 - p)))
        np.testing.assert_array_equal(plan.weights[~in_well], 1.0)
    assert not np.array_equal(policy.select(0).indices, policy.select(1).indices)


def test_infobatch_clamps_keep_ratio():
    n = 1000
    policy, scores = _infobatch_with_scores(n, prune_ratio=0.95)
    assert policy.keep_ratio == 0.1
    count = int((scores < scores.mean(dtype=np.float64)).sum())
    plan = policy.select(0)
    assert len(plan) == n - count + math.floor(0.1 * count)
    assert set(np.unique(plan.weights).tolist()) == {1.0, 10.0}


def test_infobatch_unseen_never_well_learned():
    n = 100
    policy = InfoBatch(n, 0.5, num_epochs=10)
    assert len(policy.select(0)) == n  # nothing seen: nothing to prune
    policy.update(np.arange(50), np.arange(50, dtype=np.float32))  # mean over seen = 24.5
    mask = well_learned(policy.scores.values, policy.scores.seen)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(25))
    plan = policy.select(1)
    assert set(range(25, 100)) <= set(plan.indices.tolist())
    assert len(plan) == 75 + 12
    # seen losses above the unseen placeholder (1e4): unseen samples still are not well learned
    policy = InfoBatch(n, 0.5, num_epochs=10)
    policy.update(np.arange(50), np.linspace(1.0, 1e5, 50, dtype=np.float32))
    mask = well_learned(policy.scores.values, policy.scores.seen)
    assert not mask[50:].any() and mask[:25].all()


def test_infobatch_annealing():
    policy, _ = _infobatch_with_scores(200, num_epochs=8)  # anneal_delta 0.875: epoch 7 is full
    assert len(policy.select(6)) < 200
    plan = policy.select(7)
    assert sorted(plan.indices.tolist()) == list(range(200))
    np.testing.assert_array_equal(plan.weights, 1.0)
    policy = InfoBatch(200, anneal_delta=0.875, num_epochs=90)
    assert [policy.prunes(e) for e in (77, 78)] == [True, False]  # the reference: epoch + 1 > 78.75


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(prune_ratio=1.0), "prune_ratio"),
        (dict(prune_ratio=-0.1), "prune_ratio"),
        (dict(prune_ratio="abc"), "prune_ratio"),
        (dict(prune_ratio=float("nan")), "prune_ratio"),
        (dict(anneal_delta=0.0), "anneal_delta"),
        (dict(anneal_delta=1.5), "anneal_delta"),
        (dict(anneal_delta="abc"), "anneal_delta"),
    ],
)
def test_infobatch_bad_params(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        InfoBatch(100, num_epochs=10, **kwargs)


def test_infobatch_needs_num_epochs():
    with pytest.raises(ValueError, match="num_epochs"):
        InfoBatch(100)


# ---------------------------------------------------------------- Uniform and Full


@pytest.mark.parametrize(
    "n,r,t", [(1_281_167, 0.75, 0.8), (1_281_167, 0.8, 0.9), (50_000, 0.8, 0.375), (97, 0.33, 0.7)]
)
def test_uniform_budget_matches_orderdp(n, r, t):
    uniform = UniformRandom(n, random_len_ratio=r, top_q_ratio=t)
    assert uniform.budget == OrderDP(n, r, t).keep_size
    if n < 100_000:
        plan = uniform.select(0)
        assert len(plan) == uniform.budget and np.unique(plan.indices).size == uniform.budget
        np.testing.assert_array_equal(plan.weights, 1.0)
    assert UniformRandom(1000, keep_ratio=0.6).budget == 600


def test_uniform_bad_budget_forms():
    for kwargs in [dict(), dict(keep_ratio=0.5, random_len_ratio=0.5, top_q_ratio=0.5)]:
        with pytest.raises(ValueError, match="either keep_ratio or"):
            UniformRandom(100, **kwargs)
    with pytest.raises(ValueError, match="top_q_ratio"):
        UniformRandom(100, random_len_ratio=0.5)
    with pytest.raises(ValueError, match="keeps no sample"):
        UniformRandom(100, keep_ratio=0.001)


def test_uniform_inclusion_is_uniform():
    """n=50, budget 10, 3000 epochs: each sample's frequency is Binomial(3000, 0.2)/3000.

    Tolerance per sample: 5 standard errors plus 0.005 slack; a chi-square test over all
    samples (each sample's count as a cell) must not reject at 1e-4 either.
    """
    from scipy.stats import chisquare

    n, draws = 50, 3000
    policy = UniformRandom(n, keep_ratio=0.2, seed=2)
    policy.update(np.arange(n), np.arange(n, dtype=np.float32))  # scores must not matter
    counts = np.zeros(n)
    for epoch in range(draws):
        counts[policy.select(epoch).indices] += 1
    p = 0.2
    assert np.all(np.abs(counts / draws - p) <= 5 * np.sqrt(p * (1 - p) / draws) + 0.005)
    assert chisquare(counts).pvalue > 1e-4


def test_full_is_a_fresh_permutation():
    n = 500
    policy = FullData(n, seed=5)
    plans = [policy.select(e) for e in range(3)]
    for plan in plans:
        assert len(plan) == n == policy.expected_size(0)
        np.testing.assert_array_equal(np.sort(plan.indices), np.arange(n))
        np.testing.assert_array_equal(plan.weights, 1.0)
    assert not np.array_equal(plans[0].indices, plans[1].indices)
    assert not np.array_equal(plans[1].indices, plans[2].indices)
    assert not np.array_equal(plans[0].indices, np.arange(n))


# ---------------------------------------------------------------- RS2


def rs2_cycle_plans(policy: RS2, cycle: int) -> list:
    m = policy.cycle_length
    return [policy.select(e) for e in range(cycle * m, (cycle + 1) * m)]


@pytest.mark.parametrize(
    "n,kwargs,window",
    [
        (120, dict(keep_ratio=0.25), 4),
        (120, dict(keep_ratio=0.1), 10),
        (120, dict(keep_ratio=0.5), 2),
        (120, dict(keep_ratio=1.0), 1),
        (100, dict(random_len_ratio=0.5, top_q_ratio=0.5), 4),  # q = 25
        (1000, dict(random_len_ratio=0.8, top_q_ratio=0.25), 5),  # q = 200
    ],
)
def test_rs2_every_sample_exactly_once_per_window_when_the_budget_divides_n(n, kwargs, window):
    """Windows of ceil(1 / fraction) epochs, aligned to epoch 0: each is one permutation of all samples.

    An independent draw per epoch (uniform) or a permutation not refreshed per window fails this.
    """
    policy = RS2(n, seed=3, **kwargs)
    assert n % policy.budget == 0 and math.ceil(n / policy.budget) == window == policy.cycle_length
    if "keep_ratio" in kwargs:
        assert math.ceil(1 / kwargs["keep_ratio"]) == window
    windows = []
    for w in range(4):
        plans = [policy.select(e) for e in range(w * window, (w + 1) * window)]
        for plan in plans:
            assert len(plan) == policy.budget == policy.expected_size(plan.epoch)
            np.testing.assert_array_equal(plan.weights, 1.0)
        seen = np.concatenate([plan.indices for plan in plans])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))  # each sample exactly once
        windows.append(seen)
    if window > 1:  # a fresh permutation per window: the first epochs of windows differ
        assert not np.array_equal(np.sort(windows[0][: policy.budget]), np.sort(windows[1][: policy.budget]))


@pytest.mark.parametrize(
    "n,keep",
    [(10, 0.4), (97, 0.3), (1001, 0.1), (100, 0.6), (10, 0.9), (7, 1.0), (12, 0.7)],
)
def test_rs2_leftover_wraps_to_the_start_of_the_same_permutation(n, keep):
    """n not (always) a multiple of the budget: plans of exactly ``budget`` distinct samples;
    every sample at least once in each cycle of ceil(n / budget) epochs, and the cycle's last
    epoch is the leftover r plus the permutation's first budget - r samples (the RS2 code's rule)."""
    policy = RS2(n, keep_ratio=keep, seed=5)
    b = policy.budget
    m = policy.cycle_length
    assert b == floor_times(keep, n) and m == math.ceil(n / b) == cycle_length(n, b)
    r = n - (m - 1) * b  # samples left for the cycle's last epoch, 1..b
    for cycle in range(4):
        plans = rs2_cycle_plans(policy, cycle)
        perm = policy.permutation(cycle)
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        for slot, plan in enumerate(plans):
            assert len(plan) == b == policy.expected_size(plan.epoch)
            assert np.unique(plan.indices).size == b  # no sample twice within an epoch
            if slot < m - 1:
                np.testing.assert_array_equal(plan.indices, perm[slot * b : (slot + 1) * b])
        last = set(plans[-1].indices.tolist())
        assert last == set(perm[(m - 1) * b :].tolist()) | set(perm[: b - r].tolist())
        counts = np.bincount(np.concatenate([p.indices for p in plans]), minlength=n)
        assert counts.min() == 1 and counts.max() <= 2  # every sample covered, at most once more
        assert np.count_nonzero(counts == 2) == m * b - n
        np.testing.assert_array_equal(np.flatnonzero(counts == 2), np.sort(perm[: b - r]))


def test_rs2_wrap_around_plan_is_shuffled():
    """The last epoch of a cycle mixes leftover and top-up: over 400 cycles its first sample is a
    leftover one about r / budget = half the time (tolerance 5 binomial standard errors)."""
    policy = RS2(10, keep_ratio=0.4, seed=1)  # budget 4, cycles of 3, r = 2
    cycles = 400
    first_is_leftover = 0
    for k in range(cycles):
        plan = policy.select(3 * k + 2)
        first_is_leftover += plan.indices[0] in set(policy.permutation(k)[8:].tolist())
    assert abs(first_is_leftover / cycles - 0.5) <= 5 * np.sqrt(0.25 / cycles)


def test_rs2_budget_matches_orderdp_and_uniform():
    for n, r, t in [(1_281_167, 0.75, 0.8), (1_281_167, 0.8, 0.9), (50_000, 0.8, 0.375), (97, 0.33, 0.7)]:
        budget = RS2(n, random_len_ratio=r, top_q_ratio=t).budget
        assert budget == OrderDP(n, r, t).keep_size == UniformRandom(n, random_len_ratio=r, top_q_ratio=t).budget
    assert RS2(1_281_167, random_len_ratio=0.8, top_q_ratio=0.9).budget == 922_439  # keep_ratio=0.72: 922,440
    assert RS2(1_281_167, keep_ratio=0.1).cycle_length == 11  # 10 x 128,116 = 1,281,160: 7 left over
    assert RS2(1000, keep_ratio=0.6).budget == 600


def test_rs2_plans_are_a_pure_function_of_seed_and_epoch():
    """A run that trained epochs 0..5 (scores fed back) and a fresh instance asked for epochs in any
    order give the same plans; a restored instance continues the same sequence; scores never matter."""
    n, epochs = 103, range(0, 25)
    run = RS2(n, keep_ratio=0.3, seed=7, num_epochs=20)
    train_epochs(run, range(6))
    state = run.state_dict()
    plans = {e: run.select(e) for e in epochs}
    fresh = RS2(n, keep_ratio=0.3, seed=7, num_epochs=20)
    for e in reversed(epochs):
        assert_same_plan(plans[e], fresh.select(e))
    restored = RS2(n, keep_ratio=0.3, seed=7, num_epochs=20)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.scores.values, run.scores.values)
    for e in range(6, 25):
        assert_same_plan(plans[e], restored.select(e))
    longer = RS2(n, keep_ratio=0.3, seed=7, num_epochs=30)  # no annealing: the epoch count may grow
    longer.load_state_dict(state)
    assert_same_plan(plans[6], longer.select(6))
    other = RS2(n, keep_ratio=0.3, seed=8)
    assert not np.array_equal(plans[0].indices, other.select(0).indices)
    assert sorted(state) == ["config", "policy", "scores", "version"] and state["policy"] == "rs2"
    assert state["config"]["budget"] == 30 and state["config"]["keep_ratio"] == 0.3


def test_rs2_anneal():
    policy = RS2(100, keep_ratio=0.3, anneal_delta=0.5, num_epochs=10)  # epochs 5..9 full
    assert policy.cycle_length == 4
    for e in range(5):
        assert len(policy.select(e)) == 30 == policy.expected_size(e)
    seen = np.concatenate([policy.select(e).indices for e in range(4)])
    np.testing.assert_array_equal(np.unique(seen), np.arange(100))
    for e in range(5, 10):
        plan = policy.select(e)
        assert policy.expected_size(e) == 100
        np.testing.assert_array_equal(np.sort(plan.indices), np.arange(100))
    with pytest.raises(ValueError, match="num_epochs"):
        RS2(100, keep_ratio=0.3, anneal_delta=0.5)


def test_rs2_bad_budget_forms():
    for kwargs in [dict(), dict(keep_ratio=0.5, random_len_ratio=0.5, top_q_ratio=0.5)]:
        with pytest.raises(ValueError, match="RS2 needs either keep_ratio or"):
            RS2(100, **kwargs)
    with pytest.raises(ValueError, match="top_q_ratio"):
        RS2(100, random_len_ratio=0.5)
    with pytest.raises(ValueError, match="keeps no sample"):
        RS2(100, keep_ratio=0.001)
    with pytest.raises(ValueError, match="keep no sample"):
        RS2(10, random_len_ratio=0.1, top_q_ratio=0.5)


def test_ring_window_and_cycle_length():
    perm = np.array([5, 1, 6, 3, 4, 8, 9, 7, 2, 0])
    np.testing.assert_array_equal(ring_window(perm, 0, 4), [5, 1, 6, 3])
    np.testing.assert_array_equal(ring_window(perm, 2, 4), [2, 0, 5, 1])
    np.testing.assert_array_equal(ring_window(perm, 1, 5), [8, 9, 7, 2, 0])
    window = ring_window(perm, 0, 4)
    window[0] = -1
    assert perm[0] == 5  # a copy, not a view
    assert [cycle_length(10, b) for b in (1, 3, 4, 5, 9, 10)] == [10, 4, 3, 2, 2, 1]
    for slot in (-1, 3, 1.0):
        with pytest.raises(ValueError, match="Invalid slot"):
            ring_window(perm, slot, 4)
    for budget in (0, 11):
        with pytest.raises(ValueError, match="Invalid budget"):
            cycle_length(10, budget)


# ---------------------------------------------------------------- common contract


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_state_dict_round_trip_mid_run(kind):
    n = 300
    policy = FACTORIES[kind](n, seed=9)
    train_epochs(policy, range(3))
    state = policy.state_dict()
    restored = FACTORIES[kind](n, seed=9)
    restored.load_state_dict(state)
    fresh = FACTORIES[kind](n, seed=9)
    for epoch in range(3, 8):
        plan = policy.select(epoch)
        assert_same_plan(plan, restored.select(epoch))
        rng = np.random.default_rng(epoch)
        losses = rng.random(len(plan)).astype(np.float32)
        policy.update(plan.indices, losses)
        restored.update(plan.indices, losses)
    if kind in ("orderdp", "infobatch"):  # score-driven: without the restored scores, plans differ
        assert policy.prunes(7)  # (infobatch anneals from epoch 8 of 10)
        assert not np.array_equal(policy.select(7).indices, fresh.select(7).indices)


@pytest.mark.parametrize(
    "kind,other",
    [
        ("orderdp", lambda n: OrderDP(n, 0.8, 0.6, seed=9, num_epochs=10)),
        ("orderdp", lambda n: OrderDP(n, 0.8, 0.5, seed=10, num_epochs=10)),
        ("orderdp_anneal", lambda n: OrderDP(n, 0.8, 0.5, anneal_delta=0.6, seed=9, num_epochs=10)),
        ("infobatch", lambda n: InfoBatch(n, 0.4, 0.875, seed=9, num_epochs=10)),
        ("infobatch", lambda n: InfoBatch(n, 0.5, 0.875, seed=9, num_epochs=20)),
        ("uniform", lambda n: UniformRandom(n, keep_ratio=0.4, seed=9)),
        ("rs2", lambda n: RS2(n, keep_ratio=0.4, seed=9)),
        ("rs2", lambda n: RS2(n, random_len_ratio=0.8, top_q_ratio=0.5, seed=10)),
        ("rs2", lambda n: UniformRandom(n, random_len_ratio=0.8, top_q_ratio=0.5, seed=9)),  # same budget, other policy
        ("uniform", lambda n: RS2(n, random_len_ratio=0.8, top_q_ratio=0.5, seed=9)),
        ("full", lambda n: OrderDP(n, 0.8, 0.5, seed=9, num_epochs=10)),
        (
            "orderdp",
            lambda n: UniformRandom(n, random_len_ratio=0.8, top_q_ratio=0.5, seed=9, num_epochs=10),
        ),
    ],
)
def test_load_state_dict_refuses_other_settings(kind, other):
    n = 300
    policy = FACTORIES[kind](n, seed=9)
    train_epochs(policy, range(1))
    target = other(n)
    before = target.state_dict()
    with pytest.raises(ValueError, match="settings differ|state_dict is for policy|moves infobatch's annealing"):
        target.load_state_dict(policy.state_dict())
    np.testing.assert_array_equal(target.scores.values, before["scores"]["values"])


def test_load_state_dict_refuses_other_dataset_size():
    policy = FACTORIES["orderdp"](300)
    with pytest.raises(ValueError):
        FACTORIES["orderdp"](301).load_state_dict(policy.state_dict())


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "abc", float("nan"), float("inf")])
@pytest.mark.parametrize(
    "name,build",
    [
        ("random_len_ratio", lambda v: OrderDP(100, random_len_ratio=v, top_q_ratio=0.5)),
        ("top_q_ratio", lambda v: OrderDP(100, random_len_ratio=0.5, top_q_ratio=v)),
        ("anneal_delta", lambda v: OrderDP(100, anneal_delta=v, num_epochs=10)),
        ("keep_ratio", lambda v: UniformRandom(100, keep_ratio=v)),
        ("random_len_ratio", lambda v: UniformRandom(100, random_len_ratio=v, top_q_ratio=0.5)),
        ("top_q_ratio", lambda v: UniformRandom(100, random_len_ratio=0.5, top_q_ratio=v)),
        ("keep_ratio", lambda v: RS2(100, keep_ratio=v)),
        ("random_len_ratio", lambda v: RS2(100, random_len_ratio=v, top_q_ratio=0.5)),
        ("top_q_ratio", lambda v: RS2(100, random_len_ratio=0.5, top_q_ratio=v)),
        ("anneal_delta", lambda v: RS2(100, keep_ratio=0.5, anneal_delta=v, num_epochs=10)),
        ("anneal_delta", lambda v: InfoBatch(100, anneal_delta=v, num_epochs=10)),
    ],
)
def test_ratio_outside_unit_interval_names_parameter(name, build, bad):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        build(bad)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_determinism_and_seeds(kind):
    n = 400
    a, b, c = FACTORIES[kind](n, seed=1), FACTORIES[kind](n, seed=1), FACTORIES[kind](n, seed=2)
    for policy in (a, b, c):
        train_epochs(policy, range(2), loss_seed=5)  # same losses per position, so a and b match
    for epoch in (2, 3):
        assert_same_plan(a.select(epoch), b.select(epoch))
        assert_same_plan(a.select(epoch), a.select(epoch))  # select() is repeatable
        assert not np.array_equal(a.select(epoch).indices, c.select(epoch).indices)
    assert not np.array_equal(a.select(2).indices, a.select(3).indices)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_plan_order_is_random(kind):
    """The plan's order is a fresh shuffle: neither index order nor score order.

    Over 400 epochs, plan[0] < plan[-1] is a fair coin for a uniformly random order; the
    tolerance is 5 standard errors (5 * 0.025). Sorted or partially sorted output fails it.
    """
    n, draws = 200, 400
    policy = FACTORIES[kind](n, seed=4)
    policy.update(np.arange(n), np.random.default_rng(0).random(n).astype(np.float32))
    first_smaller = 0
    for epoch in range(draws):
        idx = policy.select(epoch).indices
        assert not np.all(np.diff(idx) > 0)
        first_smaller += idx[0] < idx[-1]
    assert abs(first_smaller / draws - 0.5) <= 5 * 0.025


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_select_does_not_mutate_state(kind):
    policy = FACTORIES[kind](300)
    train_epochs(policy, range(2))
    before = policy.state_dict()
    updated = policy.scores.updated.copy()
    policy.select(2)
    policy.expected_size(2)
    after = policy.state_dict()
    np.testing.assert_array_equal(before["scores"]["values"], after["scores"]["values"])
    np.testing.assert_array_equal(before["scores"]["seen"], after["scores"]["seen"])
    np.testing.assert_array_equal(updated, policy.scores.updated)
    assert before["config"] == after["config"]


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_policies_do_not_touch_the_global_rng(kind):
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)
    policy = FACTORIES[kind](300)
    train_epochs(policy, range(2))
    assert np.random.random() == expected


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (1.5, TypeError), ("3", TypeError)])
def test_bad_epoch_is_refused(bad, exc):
    with pytest.raises(exc, match="Invalid epoch"):
        FACTORIES["orderdp"](100).select(bad)


def test_bad_seed_is_refused():
    with pytest.raises(ValueError, match="Invalid seed"):
        FullData(10, seed=-1)
    with pytest.raises(TypeError, match="Invalid seed"):
        FullData(10, seed=1.5)


@pytest.mark.parametrize(
    "make", [lambda **kw: OrderDP(50, 0.8, 0.5, **kw), lambda **kw: InfoBatch(50, num_epochs=4, **kw)]
)
def test_initial_score_is_a_parameter_and_part_of_the_settings(make):
    default, low = make(), make(initial_score=1.0)
    assert default.scores.initial == 1e4 and low.scores.initial == 1.0
    assert default.config()["initial_score"] == 1e4 and low.config()["initial_score"] == 1.0
    restored = make(initial_score=1.0)
    restored.load_state_dict(low.state_dict())
    assert restored.config() == low.config()
    with pytest.raises(ValueError, match="initial_score"):
        make(initial_score=float("nan"))
    with pytest.raises(TypeError, match="initial_score"):
        make(initial_score="high")


def test_a_low_initial_score_ranks_unseen_samples_last():
    """The reference's choice (initial 1, losses above it): OrderDP keeps trained high-loss samples
    before unseen ones; with the default, unseen samples come first."""
    n = 100
    for initial, unseen_first in ((1.0, False), (1e4, True)):
        policy = OrderDP(n, 1.0, 0.5, initial_score=initial)
        policy.update(np.arange(50), np.full(50, 2.0, dtype=np.float32))  # samples 0..49 seen, loss 2
        kept = set(policy.select(1).indices.tolist())
        assert kept == (set(range(50, 100)) if unseen_first else set(range(50))), initial


def test_a_run_may_get_more_epochs_only_where_no_plan_depends_on_the_count():
    n = 300
    for short, longer in ((OrderDP(n, 0.8, 0.5, num_epochs=10), OrderDP(n, 0.8, 0.5, num_epochs=12)),
                          (FullData(n, num_epochs=10), FullData(n, num_epochs=12))):
        train_epochs(short, range(2))
        longer.load_state_dict(short.state_dict())  # no annealing: the plans do not depend on the count
        assert_same_plan(short.select(2), longer.select(2))
    ib = InfoBatch(n, num_epochs=10)
    moved = r"from 10 to 12 moves infobatch's annealing \(full data from epoch 8 instead of 10\)"
    with pytest.raises(ValueError, match=moved):
        InfoBatch(n, num_epochs=12).load_state_dict(ib.state_dict())
    annealed = OrderDP(n, 0.8, 0.5, anneal_delta=0.5, num_epochs=10)
    with pytest.raises(ValueError, match="moves orderdp's annealing"):
        OrderDP(n, 0.8, 0.5, anneal_delta=0.5, num_epochs=20).load_state_dict(annealed.state_dict())


# ------------------------------------------- the release's variants as options
def _train(policy, plan, epoch):
    """Give every planned sample a loss that depends on (sample, epoch), as a training epoch would."""
    idx = np.unique(plan.indices)
    policy.update(idx, 1.5 + ((idx * 7919 + epoch * 104729) % 1000) / 100.0)


@pytest.mark.parametrize("make", [lambda **kw: OrderDP(500, 0.75, 0.8, initial_score=1.0, **kw),
                                  lambda **kw: InfoBatch(500, 0.5, None, initial_score=1.0, **kw)])
def test_score_lag_plans_from_the_scores_of_two_epochs_ago(make):
    """score_lag=1: epoch e's plan is the plan a lag-free policy chooses from the scores up to e-2
    (the release's distributed ImageNet path); epochs 0 and 1 come from the initial scores."""
    lagged, fresh = make(score_lag=1), make()
    scores_after = [fresh.scores.state_dict()]  # [k]: the table after epoch k - 1
    for epoch in range(6):
        plan = lagged.select(epoch)
        np.testing.assert_array_equal(lagged.select(epoch).indices, plan.indices)  # a second call: the same plan
        reference = make()
        reference.scores.load_state_dict(scores_after[max(epoch - 1, 0)])
        expect = reference.select(epoch)
        np.testing.assert_array_equal(plan.indices, expect.indices)
        np.testing.assert_array_equal(plan.weights, expect.weights)
        _train(lagged, plan, epoch)
        _train(fresh, plan, epoch)
        scores_after.append(fresh.scores.state_dict())
    assert lagged.config()["score_lag"] == 1 and "score_lag" not in fresh.config()  # old checkpoints still match


def test_score_lag_resumes_exactly_whether_the_next_plan_was_chosen_or_not():
    def run(stop_after=None, preselect=False):
        p = OrderDP(400, 0.75, 0.8, initial_score=1.0, score_lag=1)
        plans = []
        for epoch in range(6):
            if stop_after is not None and epoch == stop_after + 1:
                if preselect:
                    p.select(epoch)  # the iterator may choose the next plan before the checkpoint
                state = p.state_dict()
                p = OrderDP(400, 0.75, 0.8, initial_score=1.0, score_lag=1)
                p.load_state_dict(state)
            plans.append(p.select(epoch).indices)
            _train(p, p.select(epoch), epoch)
        return plans

    whole = run()
    for stop in (0, 2, 3):
        for pre in (False, True):
            for a, b in zip(whole, run(stop, pre)):
                np.testing.assert_array_equal(a, b)


def test_score_lag_out_of_order_and_bad_values():
    p = OrderDP(100, 0.8, 0.5, score_lag=1)
    p.select(0)
    _train(p, p.select(0), 0)
    with pytest.raises(ValueError, match="epoch 4's plan needs the scores recorded when epoch 3"):
        p.select(4)
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="score_lag"):
            OrderDP(100, 0.8, 0.5, score_lag=bad)


def test_infobatch_with_replacement_keeps_the_expected_weight():
    """replace=True (the release's ImageNet baseline): duplicates happen; each copy weighs 1/keep, so a
    well-learned sample's expected total weight per epoch is still 1 (checked over 400 epochs)."""
    n, epochs = 1000, 400
    policy = InfoBatch(n, 0.5, None, replace=True)
    policy.update(np.arange(n), np.where(np.arange(n) < 600, 1.0, 5.0))  # 0..599 below the mean
    total = np.zeros(n)
    duplicated = 0
    for epoch in range(epochs):
        plan = policy.select(epoch)
        assert len(plan) == 400 + 300
        assert set(plan.weights[plan.indices < 600].tolist()) == {2.0} and set(plan.weights[plan.indices >= 600]) == {1}
        np.add.at(total, plan.indices, plan.weights)
        duplicated += len(plan) - np.unique(plan.indices).size
    assert np.all(total[600:] == epochs)
    # each copy count is Binomial(300, 1/600): mean weight 1 per epoch, sd of the 400-epoch mean ~0.05
    mean = total[:600] / epochs
    assert abs(mean.mean() - 1.0) < 0.01 and np.abs(mean - 1.0).max() < 0.35
    assert duplicated > 0.15 * 300 * epochs  # about 22% of the draws repeat a sample; none without replacement
    plain = InfoBatch(n, 0.5, None)
    plain.update(np.arange(n), np.where(np.arange(n) < 600, 1.0, 5.0))
    assert np.unique(plain.select(0).indices).size == 700
    assert policy.config()["replace"] is True and "replace" not in plain.config()
    with pytest.raises(TypeError, match="replace"):
        InfoBatch(n, 0.5, None, replace="yes")


def test_infobatch_without_annealing_prunes_every_epoch():
    policy = InfoBatch(100, 0.5, None, num_epochs=10)
    policy.update(np.arange(100), np.arange(100, dtype=np.float32))
    assert all(policy.prunes(e) and len(policy.select(e)) == 50 + 25 for e in (0, 8, 9, 50))
    assert InfoBatch(100, 0.5, None).anneal_delta is None  # no num_epochs needed without annealing
