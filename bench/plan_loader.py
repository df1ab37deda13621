"""Our side of the loader comparison: the plan iterator over one fixed plan, as a timed loader.

:class:`DaliPlanLoader` wraps :class:`~orderdp_dali.iterator.DALIPlanIterator` with the
``epoch() -> images`` interface every compared loader has (see
:mod:`orderdp_dali.bench.baseline_loaders` for the others); :func:`orderdp_plan` makes the
realistic pruned plan they all read, :class:`FixedPlan` serves it every epoch, and
:func:`feed_only_pipeline` swaps decoding for a byte count, so that only feeding is timed.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.plan import EpochPlan
from orderdp_dali.policies.base import Policy

__all__ = ["DaliPlanLoader", "FixedPlan", "bytes_only", "feed_only_pipeline", "orderdp_plan", "sync_device"]


class FixedPlan(Policy):
    """A policy that returns the same plan every epoch (benchmarks time one plan repeatedly).

    Not registered in :data:`~orderdp_dali.policies.POLICIES`: it is a timing fixture, not a
    pruning method.
    """

    name = "fixed-plan"

    def __init__(self, num_samples: int, plan: EpochPlan) -> None:
        super().__init__(num_samples)
        if len(plan) and (plan.indices.min() < 0 or plan.indices.max() >= num_samples):
            raise ValueError(f"plan indices must lie in [0, {num_samples})")
        self._plan = plan

    def select(self, epoch: int) -> EpochPlan:
        return EpochPlan(epoch, self._plan.indices, self._plan.weights)


def orderdp_plan(
    num_samples: int, random_len_ratio: float = 0.75, top_q_ratio: float = 0.8, seed: int = 0
) -> EpochPlan:
    """An OrderDP plan after one epoch of (random) scores: the realistic pruned plan to time.

    With the ImageNet ResNet-50 reference ratios (0.75, 0.8) it keeps 60% of the samples.
    ``random_len_ratio = top_q_ratio = 1`` gives every sample (a full epoch, random order).
    """
    from orderdp_dali.policies import make_policy

    policy = make_policy(
        "orderdp", num_samples, random_len_ratio=random_len_ratio, top_q_ratio=top_q_ratio, seed=seed
    )
    rng = np.random.default_rng([seed, 1234])
    policy.update(np.arange(num_samples), rng.random(num_samples).astype(np.float32))
    return policy.select(1)



def sync_device(device: str) -> None:
    """Wait for the GPU's queued work (``device == "gpu"``), so that an epoch's time includes it."""
    if device == "gpu":
        import torch

        torch.cuda.synchronize()



class DaliPlanLoader:
    """This library's iterator over a fixed plan; one :meth:`epoch` = one pass over the plan.

    ``feed_only`` swaps decoding and augmentation for the byte count of the file bytes, so
    only the feeding path is timed: main-process batch source, ``fn.io.file.read``,
    conversion to torch. The pipeline is built here (:meth:`DALIPlanIterator.start`), as
    :class:`DaliReaderLoader` builds its own on construction. As in training, the next epoch
    starts decoding when an epoch ends (``prefetch_next_epoch``), outside the timed epoch:
    DALI's own reader runs ahead into its next epoch in the same way, so neither gets a head
    start the other lacks. Set-up is measured apart
    (:func:`~orderdp_dali.bench.loader_timing.measure_pipeline_start`).
    ``resolution``: each epoch's crop, fed with the batches (progressive resizing), instead of
    the pipeline config's fixed crop.
    """

    name = "dali-plan"

    def __init__(
        self,
        index: SampleIndex,
        plan: EpochPlan,
        *,
        batch_size: int,
        workers: int,
        device: str = "cpu",
        seed: int = 0,
        pipeline_config: Any = None,
        feed_only: bool = False,
        resolution: Optional[Callable[[int], int]] = None,
    ) -> None:
        from orderdp_dali.iterator import DALIPlanIterator

        self.device = device
        self.samples = len(plan)
        self.iterator = DALIPlanIterator(
            index,
            FixedPlan(len(index), plan),
            batch_size,
            device=device,
            num_threads=workers,
            seed=seed,
            sync_scores=False,
            prefetch_next_epoch=True,
            pipeline_config=pipeline_config,
            pipeline=feed_only_pipeline(index.transform) if feed_only else None,
            resolution=resolution,
        )
        self.iterator.start()  # the one pipeline, built before any timed epoch

    def epoch(self) -> int:
        n = 0
        for batch in self.iterator:
            n += int(batch["index"].shape[0])
        sync_device(self.device)
        return n

    def close(self) -> None:
        self.iterator.close()


def bytes_only(encoded_files):
    """Feeding-only graphs end here: one cheap dense output per sample (its byte count) instead of decoding."""
    return encoded_files.shape()


def feed_only_pipeline(transform: str):
    """A pipeline factory for :class:`~orderdp_dali.iterator.DALIPlanIterator` that reads a
    ``transform`` source's samples and ends in their byte count instead of decoding them."""

    def make(feed: Any, *, train: bool, config: Any, **settings: Any):
        from nvidia.dali import fn

        from orderdp_dali.pipelines.common import plan_pipeline

        def read_only(samples):  # tar shards hand over the bytes themselves
            return bytes_only(samples if transform == "encoded" else
                               fn.io.file.read(samples, dont_use_mmap=not config.use_mmap))

        return plan_pipeline(feed, read_only, **settings)

    return make

