"""The scale benchmark at a tiny size, and the scale-path shortcuts it measures (packed paths, lazy weights)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from orderdp_dali.bench import scale_bench
from orderdp_dali.data.folder import FileSamples, SampleIndex
from orderdp_dali.plan import EpochPlan, unit_weights
from orderdp_dali.plan_source import BatchFeed, PlanSource
from orderdp_dali.policies import OrderDP


def test_prepare_split_makes_hard_links_once(tmp_path):
    root = scale_bench.prepare_split(tmp_path, 23, 4, 5, "small", log=lambda _: None)
    index = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    assert len(index) == 23 and len(index.classes) == 4
    assert np.bincount(index.labels).tolist() == [6, 6, 6, 5]
    sources = {os.stat(p).st_ino for p in (tmp_path / "src" / "train").rglob("*.JPEG")}
    assert len(sources) == 5
    inodes = [os.stat(index.path(i)).st_ino for i in range(len(index))]
    assert set(inodes) == sources  # links to the generated JPEGs: no copy of any image
    assert len(index.paths[0]) == len("n00000000/n00000000_0.JPEG")
    first = os.stat(root / index.paths[0]).st_mtime_ns
    again = scale_bench.prepare_split(tmp_path, 23, 4, 5, "small", log=pytest.fail)  # reused: nothing logged
    assert again == root and os.stat(root / index.paths[0]).st_mtime_ns == first


def test_measure_select_reports_time_and_memory():
    r = scale_bench.measure_select("orderdp", 2000, repeats=2, with_update=True)
    assert r["plan_size"] == 1200  # floor(0.8 * floor(0.75 * 2000))
    assert 0 < r["min_ms"] <= r["median_ms"] and r["update_ms"] > 0 and r["inclusion_ms"] > 0
    # In this shared test process, memory freed by earlier tests can make the RSS deltas
    # negative; the benchmark itself measures each block in a fresh process.
    assert all(np.isfinite(r[k]) for k in ("state_mb", "held_mb", "peak_mb"))


def test_packed_paths_equal_per_path_encoding(tmp_path):
    paths = np.array(["a/x.JPEG", "bb/y z.jpg", "", "c/d/e.png"], dtype=np.str_)
    fast = FileSamples(tmp_path, paths, np.arange(4))
    slow = FileSamples(tmp_path, paths.tolist(), np.arange(4))
    np.testing.assert_array_equal(fast._buffer, slow._buffer)
    np.testing.assert_array_equal(fast._offsets, slow._offsets)
    got = [b.tobytes() for b in fast.fetch(np.array([3, 0, 1]))]
    assert got == [os.fsencode(os.path.join(tmp_path, p)) for p in ("c/d/e.png", "a/x.JPEG", "bb/y z.jpg")]
    # Past the first block of rows, with lengths that vary from row to row.
    rng = np.random.default_rng(0)
    many = np.array([f"d{k % 7}/" + "x" * int(rng.integers(0, 40)) + ".JPEG" for k in range(70_001)])
    fast = FileSamples(tmp_path, many, np.zeros(many.size))
    slow = FileSamples(tmp_path, many.tolist(), np.zeros(many.size))
    np.testing.assert_array_equal(fast._buffer, slow._buffer)
    np.testing.assert_array_equal(fast._offsets, slow._offsets)
    # Non-ASCII and absolute paths take the per-path route and give os.path.join's bytes.
    odd = np.array(["é/ü.JPEG", "/abs/p.jpg"], dtype=np.str_)
    samples = FileSamples(tmp_path, odd, np.zeros(2))
    assert [samples.path(i) for i in range(2)] == [os.path.join(tmp_path, "é/ü.JPEG"), "/abs/p.jpg"]


def test_unit_weights_stay_lazy_through_shard_and_feed():
    plan = EpochPlan(0, np.arange(10), unit_weights(10))
    assert plan.weights.strides == (0,) and np.all(plan.weights == 1)
    for world, pad in ((3, True), (4, False), (1, True)):
        for rank in range(world):
            shard = plan.shard(rank, world, pad=pad)
            assert shard.weights.strides == (0,) and shard.weights.shape == shard.indices.shape
            assert shard.weights.tolist() == [1.0] * len(shard)
    policy = OrderDP(50, 0.8, 0.5, seed=1)
    source = PlanSource(50, policy, batch_size=8, rank=1, world_size=3)
    assert source.shard is source.shard  # cut once per plan
    feed = BatchFeed(FileSamples(Path("/d"), np.array(["x.JPEG"] * 50), np.zeros(50)), source.batches())

    class Info:
        iteration = 0
        epoch_idx = 0

    _, labels, indices, weights = feed(Info())
    assert len(indices) == len(labels) == 7  # q = 20 over 3 ranks, padded to 21
    assert weights.flags.c_contiguous and weights.dtype == np.float32 and weights.tolist() == [1.0] * 7
    # Weights that are not all ones are still gathered per position.
    ones_and_twos = EpochPlan(0, np.arange(5), np.array([1, 2, 1, 2, 1], np.float32))
    assert ones_and_twos.shard(1, 3).weights.tolist() == [2.0, 1.0]  # positions 1 and 4
    assert ones_and_twos.shard(2, 3).weights.tolist() == [1.0, 1.0]  # positions 2 and 5 -> 0


@pytest.mark.slow
def test_scale_bench_tiny_run_reports_every_figure_with_its_goal(tmp_path, capsys):
    out = tmp_path / "results"
    argv = [
        "--workdir", str(tmp_path / "work"), "--num-samples", "2000", "--num-classes", "10", "--images", "20",
        "--image-mode", "small", "--big-samples", "20000", "--world-size", "2", "--merge-ranks", "2",
        "--batch-size", "32", "--repeats", "1", "--out", str(out),
    ]
    assert scale_bench.main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "scale.json").read_text())
    rows = res["rows"]
    goals = {r["goal"] for r in rows if r["goal"] is not None}
    assert goals == set(scale_bench.GOALS.values())  # every goal is reported
    for r in rows:
        assert np.isfinite(r["value"]) and r["value"] >= 0, r
        assert (r["met"] is None) == (r["goal"] is None)
        assert r["figure"] in printed
    names = " ".join(r["figure"] for r in rows)
    for policy in scale_bench.POLICY_NAMES:
        assert f"select() {policy}, n = 2,000" in names and f"select() {policy}, n = 20,000" in names
    assert "index scan" in names and "index load" in names and "score merge" in names
    assert sum("plan + shard + first batch" in r["figure"] for r in rows) == 2
    report = (out / "scale.md").read_text()
    assert res["command"] in report and "Load average" in report
    assert all(r["figure"] in report for r in rows)
    assert res["rank"]["epochs"][0]["batch"] == 32 and res["scan"]["num_samples"] == 2000
