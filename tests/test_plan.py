"""EpochPlan sharding: equal, disjoint shards that cover the plan (pure numpy, no DALI)."""
import numpy as np
import pytest

from orderdp_dali.plan import EpochPlan, num_steps

torch_data = pytest.importorskip("torch.utils.data")


def make_plan(n, seed=0):
    rng = np.random.default_rng(seed)
    return EpochPlan(3, rng.permutation(1000)[:n], rng.random(n).astype(np.float32))


@pytest.mark.parametrize("n", [1, 2, 7, 30, 52, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_padded_shards_equal_disjoint_and_cover(n, world):
    plan = make_plan(n)
    shards = [plan.shard(r, world) for r in range(world)]
    lengths = {len(s) for s in shards}
    assert lengths == {-(-n // world)}, "every rank gets ceil(n / world) samples"
    # Positions are disjoint; the padding repeats the plan's head (wrap-around), nothing else.
    stacked = np.concatenate([s.indices for s in shards])
    assert set(stacked.tolist()) == set(plan.indices.tolist())
    padded = np.resize(plan.indices, len(stacked))  # numpy's resize repeats cyclically
    assert sorted(stacked.tolist()) == sorted(padded.tolist())
    # weights travel with their index
    lookup = dict(zip(plan.indices.tolist(), plan.weights.tolist()))
    for s in shards:
        assert [lookup[i] for i in s.indices.tolist()] == s.weights.tolist()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 16, 17, 100, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_padded_shards_match_torchs_distributed_sampler(n, world):
    """``shard(pad=True)`` is DistributedSampler(shuffle=False, drop_last=False) applied to the plan.

    Torch pads the position list by repeating it from the start (more than once when
    n < world_size) and hands rank r the positions r, r + W, ...; the plan's indices are a
    random permutation, so the positions are also checked to be mapped through the plan.
    """
    rng = np.random.default_rng([n, world])
    plan = EpochPlan(5, rng.permutation(n) + 1000, rng.random(n).astype(np.float32))
    for rank in range(world):
        sampler = torch_data.DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=False, drop_last=False
        )
        positions = list(sampler)
        assert len(positions) == len(sampler) == -(-n // world)
        shard = plan.shard(rank, world, pad=True)
        assert shard.epoch == plan.epoch
        assert shard.indices.tolist() == plan.indices[positions].tolist()
        assert shard.weights.tolist() == plan.weights[positions].tolist()


@pytest.mark.parametrize("n,world", [(7, 3), (10, 4), (3, 8)])
def test_unpadded_shards_partition_the_plan(n, world):
    plan = make_plan(n)
    shards = [plan.shard(r, world, pad=False) for r in range(world)]
    stacked = np.concatenate([s.indices for s in shards])
    assert sorted(stacked.tolist()) == sorted(plan.indices.tolist())
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_docstring_example():
    plan = EpochPlan(0, np.arange(7), np.ones(7))
    assert [plan.shard(r, 3).indices.tolist() for r in range(3)] == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]
    assert [plan.shard(r, 3, pad=False).indices.tolist() for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_empty_plan_gives_empty_shards():
    plan = EpochPlan(0, np.empty(0), np.empty(0))
    assert len(plan.shard(1, 2)) == 0


@pytest.mark.parametrize("rank,world", [(2, 2), (-1, 2), (0, 0), (0, "2")])
def test_bad_rank_or_world_size(rank, world):
    with pytest.raises(ValueError, match="rank|world_size"):
        make_plan(5).shard(rank, world)


def test_mismatched_lengths_rejected():
    with pytest.raises(ValueError, match="equal length"):
        EpochPlan(0, np.arange(3), np.ones(2))


def test_num_steps():
    assert num_steps(30, 8) == 4
    assert num_steps(30, 8, drop_last=True) == 3
    assert num_steps(0, 8) == 0
    with pytest.raises(ValueError, match="batch_size"):
        num_steps(5, 0)
