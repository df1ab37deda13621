"""The iterator end to end on real JPEGs through DALI's CPU backend.

Each epoch must yield exactly its plan's shard: no sample missing, none repeated, labels
and weights belonging to their index, across epochs whose plans differ in size.
"""
import logging
import os
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import HAS_CUDA, write_jpeg_folder

from orderdp_dali import DALIPlanIterator, EpochPlan, Policy, SampleIndex
from orderdp_dali.errors import DecodeError
from orderdp_dali.pipelines import ImagePipelineConfig

SMALL = ImagePipelineConfig(crop=16, val_resize=20)


class ScriptedPolicy(Policy):
    """Plans of scripted sizes (smaller than a batch, not a multiple of it, everything), random weights."""

    name = "scripted"
    SIZES = (3, 30, 52, 17, 8)

    def select(self, epoch):
        rng = self.rng(epoch)
        m = self.SIZES[epoch % len(self.SIZES)]
        return EpochPlan(epoch, rng.permutation(self.num_samples)[:m], rng.uniform(0.5, 2, m))


def make_iterator(index, policy, batch_size=8, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("num_threads", 1)
    kw.setdefault("pipeline_config", SMALL)
    return DALIPlanIterator(index, policy, batch_size, **kw)


@pytest.fixture(scope="module")
def index(jpeg_split, tmp_path_factory):
    return SampleIndex.scan(jpeg_split, cache_dir=tmp_path_factory.mktemp("cache"))


def run_epoch(it, index, losses=True):
    """Iterate one epoch, checking each batch; returns (indices seen, weights seen, batches)."""
    seen, weights, batches = [], [], 0
    for batch in it:
        assert set(batch) == {"data", "label", "index", "weight"}
        b = batch["data"]
        assert b.dtype == torch.float32 and b.shape[1:] == (3, SMALL.crop, SMALL.crop)
        idx = batch["index"].numpy()
        assert len(idx) == len(batch["label"]) == len(batch["weight"]) == b.shape[0]
        assert batch["label"].tolist() == index.labels[idx].tolist()
        seen += idx.tolist()
        weights += batch["weight"].tolist()
        batches += 1
        if losses:
            it.update(batch["index"], b.mean(dim=(1, 2, 3)))
    return seen, weights, batches


def test_each_epoch_yields_exactly_its_plan(index):
    policy = ScriptedPolicy(len(index), seed=7)
    with make_iterator(index, policy) as it:
        for epoch in range(len(ScriptedPolicy.SIZES)):
            plan = it.plan
            assert plan.epoch == epoch and len(plan) == ScriptedPolicy.SIZES[epoch]
            steps = len(it)  # known before the epoch is iterated
            seen, weights, batches = run_epoch(it, index)
            # a last batch of one sample rides with the batch before it (17 samples: 8 + 9)
            assert batches == steps == len(plan) // 8 + (len(plan) % 8 > 1)
            assert Counter(seen) == Counter(plan.indices.tolist()), f"epoch {epoch}"
            expected_w = dict(zip(plan.indices.tolist(), plan.weights.tolist()))
            assert weights == pytest.approx([expected_w[i] for i in seen])
            assert it.epoch == epoch + 1
    # every sample that was trained got its loss recorded
    trained = policy.scores.seen
    assert trained.sum() > 0 and np.all(policy.scores.values[trained] != policy.scores.initial)


@pytest.mark.parametrize("policy_name,params", [
    ("orderdp", {"random_len_ratio": 0.75, "top_q_ratio": 0.8}),
    ("infobatch", {"prune_ratio": 0.5, "num_epochs": 4}),
    ("uniform", {"keep_ratio": 0.6}),
    ("full", {}),
])
def test_real_policies_through_dali(index, policy_name, params):
    from orderdp_dali import make_policy

    policy = make_policy(policy_name, len(index), seed=3, **params)
    sizes = []
    with make_iterator(index, policy, batch_size=16) as it:
        for _ in range(2):
            plan = it.plan
            seen, _, _ = run_epoch(it, index)
            assert Counter(seen) == Counter(plan.indices.tolist())
            sizes.append(len(plan))
    if policy_name != "full":
        assert min(sizes) < len(index)


@pytest.mark.parametrize("world_size", [2, 4])
def test_simulated_ranks_get_equal_disjoint_shards(index, world_size):
    per_rank = []
    for rank in range(world_size):
        policy = ScriptedPolicy(len(index), seed=11)
        with make_iterator(index, policy, rank=rank, world_size=world_size, sync_scores=False) as it:
            epochs = []
            for _ in range(2):
                plan = it.plan
                steps = len(it)
                seen, _, batches = run_epoch(it, index)
                assert batches == steps
                epochs.append((plan, seen, steps))
            per_rank.append(epochs)
    for e in range(2):
        plan = per_rank[0][e][0]
        assert all(np.array_equal(r[e][0].indices, plan.indices) for r in per_rank), "same plan on every rank"
        steps = {r[e][2] for r in per_rank}
        assert len(steps) == 1, "every rank runs the same number of steps"
        lengths = {len(r[e][1]) for r in per_rank}
        shard = -(-len(plan) // world_size)
        assert lengths == ({0} if shard == 1 else {shard}), "a one-sample shard is not trained (BatchNorm)"
        union = Counter()
        for r in per_rank:
            union.update(r[e][1])
        padded = np.resize(plan.indices, sum(len(r[e][1]) for r in per_rank))
        assert union == Counter(padded.tolist()), "shards cover the plan, padding by wrap-around only"
        assert shard == 1 or union.keys() == set(plan.indices.tolist())


def test_evaluation_yields_every_sample_once_in_order(index):
    with make_iterator(index, None, batch_size=10) as it:
        assert not it.train and len(it) == 6
        seen, weights, _ = run_epoch(it, index, losses=False)
    assert seen == list(range(len(index)))
    assert set(weights) == {1.0}


def test_drop_last(index):
    policy = ScriptedPolicy(len(index), seed=1)
    with make_iterator(index, policy, drop_last=True) as it:
        it.load_state_dict({**it.state_dict(), "epoch": 1})  # 30-sample plan
        plan = it.plan
        assert len(it) == 3
        seen, _, _ = run_epoch(it, index)
        assert Counter(seen) == Counter(plan.indices[:24].tolist())
        # epoch 2 holds 52 samples, epoch 3 17; epoch 0's 3-sample plan cannot fill a batch of 8
        it.load_state_dict({**it.state_dict(), "epoch": 0})
        with pytest.raises(ValueError, match="batch_size 8 is larger than this rank's 3 planned samples"):
            run_epoch(it, index)


def test_breaking_out_mid_epoch_then_continuing(index):
    policy = ScriptedPolicy(len(index), seed=5)
    with make_iterator(index, policy) as it:
        it.load_state_dict({**it.state_dict(), "epoch": 2})  # 52 samples, 7 batches
        for step, _ in enumerate(it):
            if step == 1:
                break
        it.load_state_dict({**it.state_dict(), "epoch": 3})
        plan = it.plan
        seen, _, _ = run_epoch(it, index)
        assert Counter(seen) == Counter(plan.indices.tolist())


def test_state_dict_round_trip_gives_same_future_plans(index, tmp_path):
    a = ScriptedPolicy(len(index), seed=9)
    with make_iterator(index, a) as it:
        run_epoch(it, index)
        state = it.state_dict()
        expected = [it.plan.indices.tolist()]
    restored = make_iterator(index, ScriptedPolicy(len(index), seed=9))
    restored.load_state_dict(state)
    assert restored.epoch == 1 and restored.plan.indices.tolist() == expected[0]
    np.testing.assert_array_equal(restored.policy.scores.values, a.scores.values)


def test_state_from_another_dataset_is_refused(index, tmp_path):
    other = SampleIndex.scan(write_jpeg_folder(tmp_path / "other", 2, 5), cache_dir=tmp_path)
    state = make_iterator(other, None).state_dict()
    with pytest.raises(ValueError, match="another dataset"):
        make_iterator(index, None).load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_bad_batch_size(index, bad):
    with pytest.raises(ValueError, match="batch_size"):
        make_iterator(index, None, batch_size=bad)


def test_policy_for_another_dataset_size(index):
    with pytest.raises(ValueError, match="samples"):
        make_iterator(index, ScriptedPolicy(len(index) + 1))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_undecodable_jpeg_is_named(tmp_path, damage):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=6)
    victim = root / "class_01" / "img_003.JPEG"
    data = victim.read_bytes()
    victim.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\x00not a jpeg" * 40, "empty": b""}[damage])
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    with make_iterator(index, None, batch_size=4) as it:
        with pytest.raises(DecodeError) as err:
            run_epoch(it, index, losses=False)
    assert str(victim) in str(err.value) and "sample 9" in str(err.value)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised without CUDA")
def test_gpu_without_cuda_is_a_clear_error(index):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        make_iterator(index, None, device="gpu")


def test_batches_stay_valid_after_later_steps(index):
    """Batches may share DALI's output memory: a batch kept by the caller must not change."""
    with make_iterator(index, ScriptedPolicy(len(index), seed=2)) as it:
        it.load_state_dict({**it.state_dict(), "epoch": 2})  # 52 samples, 7 batches
        kept, copies = [], []
        for batch in it:
            kept.append(batch["data"])
            copies.append(batch["data"].clone())
        for k, (held, copy) in enumerate(zip(kept, copies)):
            assert torch.equal(held, copy), f"batch {k} was overwritten by a later step"
        assert len({c.sum().item() for c in copies}) == len(copies), "batches differ from each other"


def test_plan_replaced_after_the_next_epoch_was_prefetched(index):
    """The next pass starts when an epoch ends; replacing the plan then must not leak it."""
    with make_iterator(index, ScriptedPolicy(len(index), seed=4)) as it:
        run_epoch(it, index)  # epoch 0 ends: epoch 1's 30-sample pass starts decoding
        it.load_state_dict({**it.state_dict(), "epoch": 3})  # 17 samples instead
        plan = it.plan
        seen, _, _ = run_epoch(it, index)
        assert len(plan) == 17 and Counter(seen) == Counter(plan.indices.tolist())
        # and the pass prefetched after epoch 3 is the one epoch 4 yields
        plan = it.plan
        seen, _, _ = run_epoch(it, index)
        assert Counter(seen) == Counter(plan.indices.tolist())


def test_state_dict_loads_with_weights_only(index, tmp_path):
    """The README's snippet: torch.save the state, torch.load it with PyTorch's default weights_only=True."""
    policy = ScriptedPolicy(len(index), seed=6)
    with make_iterator(index, policy) as it:
        run_epoch(it, index)
        torch.save({"data": it.state_dict()}, tmp_path / "ckpt.pth")
        expected = it.plan.indices.copy()
    state = torch.load(tmp_path / "ckpt.pth", weights_only=True)["data"]
    restored = make_iterator(index, ScriptedPolicy(len(index), seed=6))
    restored.load_state_dict(state)
    assert restored.epoch == 1
    np.testing.assert_array_equal(restored.plan.indices, expected)
    np.testing.assert_array_equal(restored.policy.scores.values, policy.scores.values)


def _epoch_pixels(it):
    batches = {}
    for batch in it:
        for i, img in zip(batch["index"].tolist(), batch["data"]):
            batches[i] = img.clone()
    return batches


def _pixels_of_epochs(it, epochs):
    return [_epoch_pixels(it) for _ in range(epochs)]


def _same_pixels(a, b):
    return set(a) == set(b) and all(torch.equal(a[i], b[i]) for i in a)


def test_resume_from_state_dict_replays_the_same_crops_and_flips(index, tmp_path):
    """One pipeline for the run: its DALI checkpoint in state_dict() makes a resumed iterator
    draw exactly the crops and flips of an uninterrupted one, through torch.save/torch.load."""
    full = lambda: make_policy_full(len(index))  # noqa: E731
    with make_iterator(index, full(), train=True) as it:
        first = _epoch_pixels(it)
        torch.save({"it": it.state_dict()}, tmp_path / "it.pth")
        later = _pixels_of_epochs(it, 2)
        assert it.pipelines_built == 1
    state = torch.load(tmp_path / "it.pth", weights_only=True)["it"]
    assert state["pipelines"][0]["checkpoint"].dtype == torch.uint8
    with make_iterator(index, full(), train=True) as resumed:
        resumed.load_state_dict(state)
        again = _pixels_of_epochs(resumed, 2)
        assert resumed.pipelines_built == 1
    assert all(_same_pixels(a, b) for a, b in zip(later, again))
    assert sum(not torch.equal(first[i], later[0][i]) for i in first) > len(first) // 2, "epochs draw new crops"
    # without the pipeline state (another world size, an old checkpoint) the crops are fresh ones
    with make_iterator(index, full(), train=True) as fresh:
        fresh.load_state_dict({**state, "pipelines": [None, None]})
        other = _epoch_pixels(fresh)
    assert sum(not torch.equal(other[i], later[0][i]) for i in other) > len(other) // 2


def test_each_rank_restores_its_own_pipeline_state(index):
    full = lambda: make_policy_full(len(index))  # noqa: E731
    states, expected = [], []
    for rank in range(2):
        with make_iterator(index, full(), train=True, rank=rank, world_size=2, sync_scores=False) as it:
            _epoch_pixels(it)
            states.append(it.state_dict())
            expected.append(_epoch_pixels(it))
    assert states[0]["pipelines"][1] is None and states[1]["pipelines"][0] is None
    assert not _same_pixels(expected[0], expected[1]) or set(expected[0]) != set(expected[1])
    gathered = [states[0]["pipelines"][0], states[1]["pipelines"][1]]  # what the training script saves
    for rank in range(2):
        with make_iterator(index, full(), train=True, rank=rank, world_size=2, sync_scores=False) as it:
            it.load_state_dict({**states[0], "pipelines": gathered})
            assert _same_pixels(_epoch_pixels(it), expected[rank])


def test_a_changed_world_size_is_said_in_one_line(index, caplog):
    full = lambda: make_policy_full(len(index))  # noqa: E731
    with make_iterator(index, full(), train=True) as it:
        _epoch_pixels(it)
        state = it.state_dict()
    with caplog.at_level("WARNING", logger="orderdp_dali.iterator"):
        with make_iterator(index, full(), train=True, rank=0, world_size=2, sync_scores=False) as it:
            it.load_state_dict(state)
            plan = it.plan
            seen = _epoch_pixels(it)
    assert set(seen) == set(plan.shard(0, 2).indices.tolist())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "from 1 rank(s), this run has 2" in warnings[0] and "fresh" in warnings[0]


def test_one_pipeline_serves_every_epoch(index, monkeypatch):
    """Five epochs of different plan sizes, a break mid-epoch and a replaced plan: DALI builds one pipeline."""
    from nvidia.dali.pipeline import Pipeline

    built = []
    original = Pipeline.__init__
    monkeypatch.setattr(Pipeline, "__init__", lambda self, *a, **kw: (built.append(1), original(self, *a, **kw))[1])
    policy = ScriptedPolicy(len(index), seed=12)
    with make_iterator(index, policy) as it:
        it.start()
        assert len(built) == 1 and it.last_pass == {}
        for epoch in range(len(ScriptedPolicy.SIZES)):
            plan = it.plan
            seen, _, _ = run_epoch(it, index)
            assert Counter(seen) == Counter(plan.indices.tolist())
            assert it.last_pass["prestarted"] and it.last_pass["built"] == (epoch == 0)  # built by start()
        for step, _ in enumerate(it):
            if step == 1:
                break
        it.load_state_dict({**it.state_dict(), "pipelines": [None], "epoch": 2})
        plan = it.plan
        seen, _, _ = run_epoch(it, index)
        assert Counter(seen) == Counter(plan.indices.tolist())
    assert len(built) == 1 and it.pipelines_built == 1


def test_a_failed_epoch_reruns_from_the_state_it_began_with(tmp_path):
    """A bad file mid-epoch: the error names it; once it is fixed, the rerun of that epoch (a
    pipeline rebuilt from the epoch's start) draws the crops an uninterrupted run drew."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=12)
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    full = lambda: make_policy_full(len(index))  # noqa: E731
    with make_iterator(index, full(), train=True, batch_size=4) as clean:
        expected = _pixels_of_epochs(clean, 2)
    with make_iterator(index, full(), train=True, batch_size=4) as it:
        assert _same_pixels(_epoch_pixels(it), expected[0])
        victim_index = int(it.shard.indices[9])  # epoch 1, step 2
        victim = index.path(victim_index)
        good = victim.read_bytes()
        victim.write_bytes(good[: len(good) // 3])
        with pytest.raises(DecodeError, match=rf"sample {victim_index} .*epoch 1, step 2"):
            _epoch_pixels(it)
        victim.write_bytes(good)
        assert it.epoch == 1 and it.pipelines_built == 1
        assert _same_pixels(_epoch_pixels(it), expected[1])
        assert it.pipelines_built == 2


def make_policy_full(n):
    from orderdp_dali import make_policy

    return make_policy("full", n, seed=0)


def _children():
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    found.append(pid)
        except OSError:
            pass
    return found


def test_no_worker_process_is_started(index):
    before = _children()
    with make_iterator(index, ScriptedPolicy(len(index), seed=3), num_threads=2) as it:
        for _ in it:
            assert _children() == before
        run_epoch(it, index)
        assert _children() == before


def test_the_file_that_failed_is_named_when_several_bad_files_are_prefetched(tmp_path):
    """Bad files in batches 2 and 3 of an in-order pass (DALI has both in flight): the error
    names batch 2's file and step, and the next pass runs (no hang, no leftover state)."""
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=12)
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    first, second = index.path(9), index.path(13)  # batch size 4: batches 2 and 3
    good = first.read_bytes()
    first.write_bytes(good[: len(good) // 3])
    second.write_bytes(b"\x00not a jpeg" * 40)
    with make_iterator(index, None, batch_size=4, prefetch_queue_depth=3) as it:
        with pytest.raises(DecodeError) as err:
            run_epoch(it, index, losses=False)
        assert f"sample 9 ({first})" in str(err.value) and "step 2" in str(err.value)
        assert "truncated" in str(err.value)
        first.write_bytes(good)
        with pytest.raises(DecodeError, match=r"sample 13 .*step 3"):
            run_epoch(it, index, losses=False)
        second.write_bytes(good)
        seen, _, _ = run_epoch(it, index, losses=False)
    assert seen == list(range(len(index)))


def test_a_file_removed_after_indexing_is_named(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=5)
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    index.path(6).unlink()
    with make_iterator(index, None, batch_size=4) as it:
        with pytest.raises(DecodeError, match=rf"sample 6 \({index.path(6)}\) in epoch 0, step 1: unreadable"):
            run_epoch(it, index, losses=False)


def test_iterating_twice_at_once_is_refused(index):
    with make_iterator(index, ScriptedPolicy(len(index))) as it:
        batches = iter(it)
        next(batches)
        with pytest.raises(RuntimeError, match="already iterating"):
            iter(it)


def test_a_failure_no_check_explains_names_the_batch_and_dalis_cause(tmp_path, monkeypatch):
    """When the file checks find nothing (a file PIL reads but DALI's decoder does not), the
    error still names the epoch, step and samples, and DALI's cause without its traceback."""
    from orderdp_dali.data.folder import FileSamples

    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=6)
    index = SampleIndex.scan(root, cache_dir=tmp_path / "c")
    victim = index.path(5)
    victim.write_bytes(victim.read_bytes()[:200])
    monkeypatch.setattr(FileSamples, "find_broken", lambda self, indices: None)
    with make_iterator(index, None, batch_size=4) as it:
        with pytest.raises(RuntimeError) as err:
            run_epoch(it, index, losses=False)
    message = str(err.value)
    assert message.startswith("DALI pipeline failed in epoch 0, step 1 (samples [4, 5, 6, 7]): Error in CPU operator")
    assert "decoders" in message and "traceback" not in message and "File " not in message
    assert "Critical error" in str(err.value.__cause__)  # DALI's full text stays on the chain


def test_float16_output(index):
    half = ImagePipelineConfig(crop=16, val_resize=20, dtype="float16")
    with make_iterator(index, None, batch_size=8, pipeline_config=half) as it:
        batch = next(iter(it))
    assert batch["data"].dtype == torch.float16 and batch["data"].shape == (8, 3, 16, 16)
    assert torch.isfinite(batch["data"]).all()


def test_the_next_epoch_is_fed_to_dali_as_soon_as_an_epoch_ends(index, monkeypatch):
    """Prefetching that prefetches: when an epoch ends, its successor's first batches are
    already handed to DALI (which decodes them while the caller validates), before anyone
    asks for them; and they are the ones that epoch then yields."""
    from orderdp_dali.data.folder import FileSamples

    fed = []
    original = FileSamples.fetch
    monkeypatch.setattr(FileSamples, "fetch", lambda self, idx: fed.append(idx.tolist()) or original(self, idx))
    with make_iterator(index, ScriptedPolicy(len(index), seed=8), prefetch_queue_depth=2) as it:
        first = it.plan.indices
        run_epoch(it, index)  # epoch 0: 3 samples, one batch
        expected = it.plan.indices  # epoch 1: 30 samples, chosen when epoch 0 ended
        assert it.last_pass["prestarted"] is False
        # epoch 0's batch, then epoch 1's first two, handed to DALI before epoch 1 is asked for
        assert fed == [first.tolist(), expected[:8].tolist(), expected[8:16].tolist()]
        seen, _, _ = run_epoch(it, index)
        assert it.last_pass["prestarted"] is True
        assert seen == expected.tolist()


@pytest.mark.parametrize("change", ["augment", "resolution"])
def test_a_state_from_another_pipeline_graph_resumes_from_fresh_seeds(index, change, caplog):
    """A recipe change let through on resume (--allow-changes) that changes the pipeline's operators
    (augmentation on or off, progressive resizing on): DALI cannot restore the old graph's
    checkpoint into the new one, so the iterator says so and draws fresh crops; plans still resume."""
    full = lambda: make_policy_full(len(index))  # noqa: E731
    with make_iterator(index, full(), train=True) as it:
        _epoch_pixels(it)
        state = it.state_dict()
        plan = it.plan.indices.copy()
    kwargs = {"augment": False} if change == "augment" else {"resolution": lambda epoch: 24}
    with caplog.at_level(logging.WARNING), make_iterator(index, full(), train=True, **kwargs) as resumed:
        resumed.load_state_dict(state)
        np.testing.assert_array_equal(resumed.plan.indices, plan)
        pixels = _epoch_pixels(resumed)
    assert sorted(pixels) == sorted(plan.tolist())
    assert f"other operators ({'augment True -> False' if change == 'augment' else 'sized False -> True'})" \
        in caplog.text
