"""The plan source without DALI or torch: plans, shards, batches and the batch feed."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from orderdp_dali.data.cifar import ArraySamples
from orderdp_dali.data.folder import FileSamples
from orderdp_dali.plan import EpochPlan
from orderdp_dali.plan_source import BatchFeed, PlanSource
from orderdp_dali.policies import make_policy


def test_importing_the_plan_source_pulls_in_neither_torch_nor_dali():
    code = ("import sys, orderdp_dali.plan_source, orderdp_dali.data; "
            "print(sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "n,world,batch,drop_last", [(7, 3, 2, False), (52, 4, 8, False), (52, 4, 8, True), (5, 1, 8, False)]
)
def test_batches_cover_exactly_this_ranks_shard(n, world, batch, drop_last):
    for rank in range(world):
        src = PlanSource(n, make_policy("full", n, seed=1), batch, rank=rank, world_size=world, drop_last=drop_last)
        shard = src.shard
        batches = src.batches()
        assert batches.steps == len(src)
        got = [batches.batch(k) for k in range(batches.steps)]
        assert all(len(i) == batch for i, _ in got[:-1]) and 0 < len(got[-1][0]) <= batches.max_batch
        assert len(got[-1][0]) > 1 or len(got) == 1  # a last single sample joins the batch before it
        indices = np.concatenate([i for i, _ in got])
        keep = len(shard) // batch * batch if drop_last else len(shard)
        np.testing.assert_array_equal(indices, shard.indices[:keep])
        with pytest.raises(IndexError):
            batches.batch(batches.steps)


@pytest.mark.parametrize("n, sizes", [(9, [4, 5]), (10, [4, 4, 2]), (5, [5]), (4, [4]), (1, []), (2, [2])])
def test_a_last_single_sample_joins_the_batch_before_it_in_training(n, sizes):
    """BatchNorm cannot train on one sample: training merges it (batch_size + 1); evaluation does not."""
    plan = EpochPlan(0, np.arange(n), np.ones(n))
    policy = SimpleNamespace(num_samples=n, select=lambda epoch: plan)
    train = PlanSource(n, policy, 4)
    batches = train.batches()
    assert [len(batches.batch(k)[0]) for k in range(batches.steps)] == sizes and len(train) == len(sizes)
    assert train.max_batch == batches.max_batch == 5
    evaluation = PlanSource(n, policy, 4, pad=False).batches()
    assert [len(evaluation.batch(k)[0]) for k in range(evaluation.steps)][-1:] == [n % 4 or 4]
    assert PlanSource(n, policy, 4, pad=False).max_batch == PlanSource(n, policy, 4, drop_last=True).max_batch == 4


def test_the_seven_sample_example_of_the_readme():
    plan = EpochPlan(0, np.arange(7), np.ones(7))
    policy = SimpleNamespace(num_samples=7, select=lambda epoch: plan)
    shards = [PlanSource(7, policy, 4, rank=r, world_size=3).batches().indices.tolist() for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]
    unpadded = [PlanSource(7, policy, 4, rank=r, world_size=3, pad=False).batches().indices.tolist() for r in range(3)]
    assert unpadded == [[0, 3, 6], [1, 4], [2, 5]]


def test_evaluation_plan_is_every_sample_in_order_and_epochs_advance():
    src = PlanSource(5, None, 2, pad=False)
    assert src.plan.indices.tolist() == [0, 1, 2, 3, 4] and len(src) == 3
    first = src.plan
    src.advance()
    assert src.epoch == 1 and not src.has_plan and src.plan is not first


def test_drop_last_with_a_shard_smaller_than_a_batch_is_an_error_naming_both():
    src = PlanSource(3, make_policy("full", 3), 8, drop_last=True)
    with pytest.raises(ValueError, match="batch_size 8 is larger than this rank's 3 planned samples"):
        src.batches()


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size"):
        PlanSource(4, None, bad)


def test_feed_returns_each_batch_then_ends_the_pass(tmp_path):
    paths = ["a/x.JPEG", "b/ü y.JPEG", "c/z.jpeg"]
    samples = FileSamples(tmp_path, paths, np.array([2, 0, 1]))
    src = PlanSource(3, make_policy("full", 3, seed=4), 2, pad=False)  # as evaluation: batches of 2 and 1
    feed = BatchFeed(samples)
    with pytest.raises(RuntimeError, match="before any pass was begun"):
        feed(SimpleNamespace(iteration=0, epoch_idx=0))
    feed.begin(src.batches(), epoch_idx=4)  # the pipeline's 5th pass
    seen = []
    for step in range(2):
        data, labels, indices, weights = feed(SimpleNamespace(iteration=step, epoch_idx=4))
        assert [bytes(d).decode() for d in data] == [str(tmp_path / paths[i]) for i in indices]
        assert labels.tolist() == [[2, 0, 1][i] for i in indices] and weights.dtype == np.float32
        seen += indices.tolist()
    assert sorted(seen) == [0, 1, 2]
    with pytest.raises(StopIteration):
        feed(SimpleNamespace(iteration=2, epoch_idx=4))
    # a request for another pass than the one begun is an error, not a silently wrong batch
    with pytest.raises(RuntimeError, match="asked for DALI epoch 5, but the pass begun is epoch 4"):
        feed(SimpleNamespace(iteration=0, epoch_idx=5))
    # the next pass; stop() ends it early (an abandoned epoch)
    src.advance()
    feed.begin(src.batches(), epoch_idx=5)
    assert len(feed(SimpleNamespace(iteration=0, epoch_idx=5))[2]) == 2
    feed.stop()
    with pytest.raises(StopIteration):
        feed(SimpleNamespace(iteration=1, epoch_idx=5))


def test_array_samples_gather_rows_and_refuse_other_dtypes():
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    samples = ArraySamples(images, np.arange(4))
    batch = samples.fetch(np.array([3, 1]))
    assert batch.flags.c_contiguous and np.array_equal(batch, images[[3, 1]])
    with pytest.raises(ValueError, match="uint8"):
        ArraySamples(images.astype(np.float32), np.arange(4))


def test_file_samples_name_the_broken_file_first_in_batch_order(tmp_path):
    from PIL import Image

    for name in ("good.JPEG", "cut.JPEG"):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / name, quality=90)
    data = (tmp_path / "cut.JPEG").read_bytes()
    (tmp_path / "cut.JPEG").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.JPEG").write_bytes(b"")
    samples = FileSamples(tmp_path, ["good.JPEG", "cut.JPEG", "empty.JPEG", "gone.JPEG"], np.zeros(4))
    assert samples.find_broken(np.array([0])) is None
    i, path, reason = samples.find_broken(np.array([0, 2, 1]))
    assert (i, path) == (2, str(tmp_path / "empty.JPEG")) and reason.startswith("empty_file")
    assert samples.find_broken(np.array([1]))[2].startswith("truncated")
    assert samples.find_broken(np.array([3]))[0] == 3
