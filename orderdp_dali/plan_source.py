"""This rank's batches of each epoch's plan, one batch at a time (numpy only, no DALI or torch).

:class:`PlanSource` keeps the epoch counter, asks the policy for each epoch's plan (or
yields every sample once for evaluation), shards it and cuts this rank's shard into
batches (:class:`EpochBatches`). :class:`BatchFeed` is the callable handed to DALI's
``fn.external_source(batch=True, batch_info=True)``: DALI calls it in the training
process for batch ``k`` of an epoch and it answers with that batch's samples (encoded file
paths or array rows, see :class:`~orderdp_dali.data.source.Samples`), labels, sample indices and loss
weights. No worker processes, no files to publish: one pipeline serves the whole run, and
a new plan is just the next pass of its feed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

from orderdp_dali.data.source import Samples
from orderdp_dali.plan import EpochPlan, num_steps, unit_weights
from orderdp_dali.policies.base import Policy, check_epoch

__all__ = ["BatchFeed", "EpochBatches", "PlanSource", "Samples"]


@dataclass(frozen=True)
class EpochBatches:
    """This rank's samples of one epoch, cut into ``steps`` batches of ``batch_size``.

    Attributes:
        epoch: the epoch.
        indices, weights: the shard's samples in training order (a dropped last partial
            batch already removed).
        batch_size: samples per batch; only the last batch may differ.
        merge_single: training: a last batch of one sample joins the one before it (which
            then holds ``batch_size + 1``), because BatchNorm cannot train on one sample and
            dropping it would train on less than the plan; a shard of a single sample has no
            step at all (nothing to merge it into).
        resolution: the epoch's training crop in pixels (progressive resizing), decided with
            the plan; ``None``: the pipeline's fixed crop.

    Example (``batch_size`` 4, ``merge_single``): 9 samples are batches of 4 and 5, 10 are
    4, 4 and 2, 1 is no batch.
    """

    epoch: int
    indices: np.ndarray
    weights: np.ndarray
    batch_size: int
    merge_single: bool = False
    resolution: Optional[int] = None

    @property
    def steps(self) -> int:
        n = len(self.indices)
        steps = num_steps(n, self.batch_size)
        if self.merge_single and self.batch_size > 1 and n % self.batch_size == 1:
            steps -= 1  # the single last sample rides with the batch before it (none when n == 1)
        return steps

    @property
    def max_batch(self) -> int:
        """The largest batch a pass yields (what the pipeline's batch size must allow)."""
        return self.batch_size + 1 if self.merge_single and self.batch_size > 1 else self.batch_size

    def __len__(self) -> int:
        return self.steps

    def batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
        """(indices, weights) of batch ``step``."""
        steps = self.steps
        if not 0 <= step < steps:
            raise IndexError(f"step {step} outside epoch {self.epoch}'s {steps} batches")
        lo = step * self.batch_size
        hi = len(self.indices) if step == steps - 1 else lo + self.batch_size  # the last takes what is left
        return self.indices[lo:hi], self.weights[lo:hi]


class PlanSource:
    """Each epoch's plan, this rank's shard of it, and the shard's batches.

    Args:
        num_samples: samples in the split.
        policy: chooses each epoch's plan; ``None`` means every sample once, in order.
        batch_size: per-rank batch size.
        rank, world_size: this rank and the number of ranks.
        pad: pad plans by wrap-around so every rank gets the same number of samples
            (training; see :meth:`EpochPlan.shard`).
        drop_last: drop each rank's last partial batch.
        epoch: the first epoch.
        split: how error messages name the samples (e.g. the index's folder).
        resolution: ``resolution(epoch) -> pixels``, each epoch's training crop (progressive
            resizing, see :mod:`orderdp_dali.progressive`); ``None``: the pipeline's fixed crop.
    """

    def __init__(
        self,
        num_samples: int,
        policy: Optional[Policy],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        drop_last: bool = False,
        epoch: int = 0,
        split: str = "the split",
        resolution: Optional[Callable[[int], int]] = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size!r} (need an int >= 1)")
        if policy is not None and policy.num_samples != num_samples:
            raise ValueError(f"policy was built for {policy.num_samples} samples but {split} has {num_samples}")
        EpochPlan(0, np.empty(0), np.empty(0)).shard(rank, world_size)  # validates both
        self.num_samples = int(num_samples)
        self.policy = policy
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.pad = bool(pad)
        self.drop_last = bool(drop_last)
        self._epoch = check_epoch(epoch)
        self.resolution = resolution
        self._plan: Optional[EpochPlan] = None
        self._shard: Optional[EpochPlan] = None

    @property
    def epoch(self) -> int:
        """The epoch that the next (or current) pass covers."""
        return self._epoch

    @property
    def has_plan(self) -> bool:
        """Whether :attr:`plan` of this epoch was already chosen."""
        return self._plan is not None

    @property
    def plan(self) -> EpochPlan:
        """The global plan of :attr:`epoch`, chosen on first use."""
        if self._plan is None:
            if self.policy is None:
                n = self.num_samples
                self._plan = EpochPlan(self._epoch, np.arange(n, dtype=np.int64), unit_weights(n))
            else:
                self._plan = self.policy.select(self._epoch)
        return self._plan

    @property
    def shard(self) -> EpochPlan:
        """This rank's part of :attr:`plan` (before dropping a partial batch), cut once per plan."""
        plan = self.plan
        if self._shard is None or self._shard.epoch != plan.epoch:
            self._shard = plan.shard(self.rank, self.world_size, pad=self.pad)
        return self._shard

    def __len__(self) -> int:
        return self._cut(self.shard).steps

    @property
    def max_batch(self) -> int:
        """The largest batch any epoch yields: ``batch_size``, or one more where a last batch of
        one sample is merged (training without ``drop_last``; see :class:`EpochBatches`)."""
        return EpochBatches(0, np.empty(0), np.empty(0), self.batch_size, self._merge_single).max_batch

    @property
    def _merge_single(self) -> bool:
        return self.pad and not self.drop_last

    def _cut(self, shard: EpochPlan) -> EpochBatches:
        steps = num_steps(len(shard), self.batch_size, self.drop_last)
        used = steps * self.batch_size if self.drop_last else len(shard)
        res = None if self.resolution is None else int(self.resolution(self._epoch))
        return EpochBatches(self._epoch, shard.indices[:used], shard.weights[:used], self.batch_size,
                            self._merge_single, res)

    def batches(self) -> EpochBatches:
        """This epoch's batches.

        Raises:
            ValueError: ``drop_last`` with a shard smaller than one batch (no step at all).
        """
        shard = self.shard
        batches = self._cut(shard)
        if self.drop_last and batches.steps == 0 and len(shard) > 0:
            raise ValueError(
                f"batch_size {self.batch_size} is larger than this rank's {len(shard)} planned samples "
                f"in epoch {self._epoch} with drop_last=True: the epoch would have no step; "
                "lower batch_size or set drop_last=False"
            )
        return batches

    def advance(self) -> None:
        """Move to the next epoch (its plan is chosen when first asked for)."""
        self.set_epoch(self._epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = check_epoch(epoch)
        self._plan = self._shard = None


class BatchFeed:
    """DALI's batch-mode external-source callback, for the whole run of one pipeline.

    Called as ``feed(batch_info)`` in the training process. Each pass (epoch) of the
    pipeline is announced with :meth:`begin`, which hands over that pass's
    :class:`EpochBatches` and the DALI epoch index it runs as; DALI then asks for
    ``(epoch_idx, iteration)`` and gets batch ``iteration`` of that plan as (samples,
    labels, indices, weights), and ``StopIteration`` after the last one, which ends
    DALI's epoch. A request for another epoch index than the announced pass is an error
    rather than a silently wrong batch.

    ``sized=True`` (progressive resizing) adds a fifth output: each sample's output size
    ``[height, width]`` (float32, the pass's :attr:`EpochBatches.resolution`), which the
    pipeline's ``fn.resize`` takes as its per-sample ``size``: the crop changes between
    epochs without a pipeline rebuilt.
    """

    def __init__(self, samples: Samples, batches: Optional[EpochBatches] = None, epoch_idx: int = 0,
                 sized: bool = False) -> None:
        self.samples = samples
        self.batches = batches
        self.epoch_idx = epoch_idx
        self.sized = bool(sized)
        self._stopped = False

    def begin(self, batches: EpochBatches, epoch_idx: int) -> None:
        """Serve ``batches`` as DALI epoch ``epoch_idx`` from now on."""
        if self.sized and batches.resolution is None:
            raise ValueError(f"epoch {batches.epoch}'s batches have no resolution, but this feed sizes every batch")
        self.batches = batches
        self.epoch_idx = int(epoch_idx)
        self._stopped = False

    def stop(self) -> None:
        """End the current pass early: every further request raises ``StopIteration``."""
        self._stopped = True

    def __call__(self, info: Any) -> Tuple[Any, ...]:
        if self.batches is None:
            raise RuntimeError("the pipeline asked for a batch before any pass was begun")
        if info.epoch_idx != self.epoch_idx:
            raise RuntimeError(
                f"the pipeline asked for DALI epoch {info.epoch_idx}, but the pass begun is epoch {self.epoch_idx} "
                f"(training epoch {self.batches.epoch})"
            )
        step = info.iteration
        if self._stopped or step >= self.batches.steps:
            raise StopIteration
        indices, weights = self.batches.batch(step)
        # Unit weights are a stride-0 view (see unit_weights): hand DALI a dense batch.
        batch = (self.samples.fetch(indices), self.samples.labels[indices], indices, np.ascontiguousarray(weights))
        if self.sized:
            batch += (np.full((len(indices), 2), self.batches.resolution, dtype=np.float32),)
        return batch
