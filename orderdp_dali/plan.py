"""An epoch plan (which samples, with which loss weights) and how it is split across ranks.

A plan is decided *before* its epoch starts, so the step count of the epoch is known up
front (``len(iterator)`` is never stale) and the input pipeline reads only planned files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["EpochPlan", "num_steps", "unit_weights"]


@dataclass(frozen=True)
class EpochPlan:
    """The samples of one epoch in training order, with their loss weights.

    Attributes:
        epoch: the epoch this plan is for (0-based).
        indices: int64 sample indices into the sample index, in the order to train them.
        weights: float32 per-sample loss weights (1 except for InfoBatch's rescaled samples).
            All-ones weights are a read-only view of one value (:func:`unit_weights`), so a
            plan of 14M samples does not hold 57 MB of ones.
    """

    epoch: int
    indices: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        idx = np.ascontiguousarray(self.indices, dtype=np.int64)
        w = np.asarray(self.weights, dtype=np.float32)
        if not _is_constant(w):
            w = np.ascontiguousarray(w)
        if idx.ndim != 1 or w.shape != idx.shape:
            raise ValueError(
                f"EpochPlan needs 1-D indices and weights of equal length, got shapes "
                f"{idx.shape} and {w.shape}"
            )
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "weights", w)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def shard(self, rank: int, world_size: int, pad: bool = True) -> "EpochPlan":
        """The part of this plan that ``rank`` trains on.

        Ranks take strided slices (rank r gets positions r, r + W, r + 2W, ... of the plan,
        W = world_size), so each shard keeps the plan's random order. With ``pad=True``
        (training) the plan is first padded by wrapping around to a multiple of W, so every
        rank gets exactly ``ceil(len / W)`` samples and runs the same number of steps: DDP
        never waits on a short rank. At most W - 1 samples are trained twice in an epoch.
        With ``pad=False`` (evaluation) nothing is repeated and shards differ by at most one.

        Example: a 7-sample plan ``[a b c d e f g]`` on 3 ranks is padded to
        ``[a b c d e f g a b]``; rank 0 gets ``[a d g]``, rank 1 ``[b e a]``, rank 2
        ``[c f b]``. Without padding: ``[a d g]``, ``[b e]``, ``[c f]``.
        """
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"Invalid world_size: {world_size!r} (need an int >= 1)")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"Invalid rank: {rank!r} (need 0 <= rank < world_size={world_size})")
        n = len(self)
        total = math.ceil(n / world_size) * world_size if pad else n
        if total == n:  # nothing to pad: a strided slice, and the plan itself on one rank
            if world_size == 1:
                return self
            return EpochPlan(self.epoch, self.indices[rank::world_size], self.weights[rank::world_size])
        positions = np.arange(rank, total, world_size)
        positions[positions >= n] %= n  # padded by wrapping around the plan
        weights = unit_weights(positions.size) if _is_constant(self.weights, 1.0) else self.weights[positions]
        return EpochPlan(self.epoch, self.indices[positions], weights)


def unit_weights(length: int) -> np.ndarray:
    """``length`` float32 weights of 1: a read-only view of a single value, no memory per sample."""
    return np.broadcast_to(np.float32(1.0), (int(length),))


def _is_constant(weights: np.ndarray, value: Optional[float] = None) -> bool:
    """Whether ``weights`` is a 1-D view repeating one value (stride 0), optionally ``value``."""
    if weights.ndim != 1 or weights.strides[0] != 0 or weights.size == 0:
        return False
    return value is None or bool(weights[0] == value)


def num_steps(num_samples: int, batch_size: int, drop_last: bool = False) -> int:
    """Steps needed for ``num_samples`` at ``batch_size`` (last partial batch kept unless ``drop_last``)."""
    if num_samples < 0:
        raise ValueError(f"Invalid num_samples: {num_samples}")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size} (need >= 1)")
    return num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
