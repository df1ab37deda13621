"""Multi-process (gloo, CPU) runs: same plan on every rank, disjoint equal shards, merged scores.

* 2 and 4 ranks drive real DALI iterators for two epochs with synthetic per-sample losses
  that differ per rank, and report what they saw;
* 2 ranks train end to end with DDP through ``torchrun -m orderdp_dali.train``.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from train_helpers import overrides, write_colour_dataset

EPOCHS, BATCH = 2, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # n = 45; the iterator test's OrderDP keeps q = 33 (s = 40), so 2 and 4 ranks need padding
    return write_colour_dataset(tmp_path_factory.mktemp("colours"), train_per_class=15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, root: str, out: str) -> None:
    """One rank: two epochs of the real iterator, recording plans, shards, steps and scores."""
    import torch
    import torch.distributed as dist

    from orderdp_dali import make_policy
    from orderdp_dali.data.folder import SampleIndex
    from orderdp_dali.iterator import DALIPlanIterator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    index = SampleIndex.scan(Path(root) / "train", cache_dir=Path(out) / f"cache{rank}")
    policy = make_policy("orderdp", len(index), random_len_ratio=0.9, top_q_ratio=0.825, seed=5, num_epochs=EPOCHS)
    it = DALIPlanIterator(index, policy, BATCH, device="cpu", num_threads=1)
    report = []
    try:
        for _ in range(EPOCHS):
            plan, steps, seen = it.plan.indices.copy(), len(it), []
            for batch in it:
                idx = batch["index"]
                seen.append(idx.numpy().copy())
                # losses differ per rank, so only the epoch-end merge makes the tables agree
                it.update(idx, idx.double().mul(0.01).add(rank))
            ran = len(seen)
            report.append({
                "plan": plan, "steps": steps, "ran": ran, "seen": np.concatenate(seen),
                "scores": policy.scores.values.copy(), "seen_mask": policy.scores.seen.copy(),
            })
    finally:
        it.close()
        dist.destroy_process_group()
    with open(Path(out) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(report, f)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_agree_on_plans_shards_and_scores(world, data, tmp_path):
    mp.spawn(_rank_main, args=(world, free_port(), str(data), str(tmp_path)), nprocs=world, join=True)
    reports = []
    for r in range(world):
        with open(tmp_path / f"rank{r}.pkl", "rb") as f:
            reports.append(pickle.load(f))
    for epoch in range(EPOCHS):
        ranks = [rep[epoch] for rep in reports]
        plan = ranks[0]["plan"]
        for rank in ranks[1:]:  # the same global plan everywhere
            np.testing.assert_array_equal(rank["plan"], plan)
        padded = -(-len(plan) // world)
        for rank in ranks:  # equal step counts, known up front (a last single sample joins the batch before it)
            assert rank["steps"] == rank["ran"] == padded // BATCH + (padded % BATCH > 1)
            assert len(rank["seen"]) == padded
        # disjoint strided shards of the wrap-padded plan: together exactly that plan
        padded_plan = plan[np.arange(padded * world) % len(plan)]
        for r, rank in enumerate(ranks):
            np.testing.assert_array_equal(rank["seen"], padded_plan[r::world])
        everything = np.concatenate([rank["seen"] for rank in ranks])
        assert set(everything.tolist()) == set(plan.tolist())
        assert len(everything) - len(plan) < world  # only the wrap-around padding repeats
        for rank in ranks[1:]:  # bit-identical score tables after the epoch-end merge
            np.testing.assert_array_equal(rank["scores"], ranks[0]["scores"])
            np.testing.assert_array_equal(rank["seen_mask"], ranks[0]["seen_mask"])
        assert ranks[0]["seen_mask"][plan].all()
    # after epoch 0 a sample holds the mean of the losses the ranks that trained it reported
    # (rank r reports 0.01 * index + r; padding makes a few samples train on two ranks)
    reported = defaultdict(set)
    for r in range(world):
        for i in reports[r][0]["seen"].tolist():
            reported[i].add(0.01 * i + r)
    assert any(len(v) > 1 for v in reported.values()) == (len(reports[0][0]["plan"]) % world != 0)
    for i, values in reported.items():
        assert reports[0][0]["scores"][i] == pytest.approx(np.mean(sorted(values)), rel=1e-6)


@pytest.mark.slow
def test_ddp_training_with_torchrun(data, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "orderdp_dali.train", f"--output-dir={out}",
        *overrides(data, tmp_path / "cache", "train.epochs=2", "policy.name=orderdp",
                   "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5}", "train.batch_size=4"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1]  # rank 0 alone logs
    for r in lines:
        assert r["world_size"] == 2 and r["planned"] == 18  # s = floor(0.8 * 45) = 36, q = 18
        assert r["samples"] == 18 and r["steps"] == 2  # 9 per rank: batches of 4 and 5 (4 + 4 + 1 merged)
        assert r["val_samples"] == 12  # unpadded validation shards: exact counts
    assert (out / "last.pth").is_file()
