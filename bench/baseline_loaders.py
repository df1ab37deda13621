"""The loaders ours is compared with: DALI's own file reader, torchvision's ``DataLoader`` and the
per-sample worker feeding this library replaced. Each has the ``epoch() -> images`` interface of
:class:`~orderdp_dali.bench.plan_loader.DaliPlanLoader` and reads the same plan.
"""
from __future__ import annotations

import os
from typing import Any, Sequence, Tuple

import numpy as np

from orderdp_dali.bench.plan_loader import bytes_only, sync_device
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.plan import EpochPlan

__all__ = ["DaliReaderLoader", "PerSampleFiles", "PerSampleWorkerLoader", "TorchvisionLoader"]


class PerSampleFiles:
    """The feeding path this library replaced, for comparison: a per-sample callback in
    DALI's spawned worker processes returning (file bytes, label, index, weight), one file
    per call (picklable).

    Positions past the plan up to a whole batch repeat the last sample (per-sample mode
    only emits whole batches); :class:`PerSampleWorkerLoader` does not count them.
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, plan: EpochPlan, batch_size: int) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.indices = plan.indices
        self.weights = plan.weights
        self.padded = -(-len(plan) // batch_size) * batch_size

    def __call__(self, info: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if info.idx_in_epoch >= self.padded:
            raise StopIteration
        pos = min(info.idx_in_epoch, len(self.indices) - 1)
        i = int(self.indices[pos])
        data = np.fromfile(self.paths[i], dtype=np.uint8)
        return data, np.array(self.labels[i]), np.array(i, dtype=np.int64), np.array(self.weights[pos])


class PerSampleWorkerLoader:
    """Feeding only, the replaced way: ``external_source(parallel=True)`` per sample, ``workers`` processes."""

    name = "per-sample-feed"

    def __init__(self, index: SampleIndex, plan: EpochPlan, *, batch_size: int, workers: int, device: str = "cpu",
                 seed: int = 0, pipeline_config: Any = None) -> None:
        from nvidia.dali import fn, pipeline_def, types

        self.samples = len(plan)
        feed = PerSampleFiles([str(index.path(i)) for i in range(len(index))], index.labels, plan, batch_size)

        @pipeline_def(batch_size=batch_size, num_threads=workers, device_id=None, seed=seed,
                      py_num_workers=workers, py_start_method="spawn")
        def per_sample_pipeline():
            data, labels, indices, weights = fn.external_source(
                source=feed, num_outputs=4, batch=False, parallel=True,
                dtype=[types.UINT8, types.INT64, types.INT64, types.FLOAT],
            )
            return bytes_only(data), labels, indices, weights

        self.pipe = per_sample_pipeline()
        self.pipe.build()
        self._fresh = True

    def epoch(self) -> int:
        if not self._fresh:
            self.pipe.reset()
        self._fresh = False
        n = 0
        while True:
            try:
                out = self.pipe.run()
            except StopIteration:
                return n
            n += min(len(out[0]), self.samples - n)

    def close(self) -> None:
        self.pipe = None


class DaliReaderLoader:
    """DALI's ``fn.readers.file`` over the plan's files (plan order), same decode and augmentation
    (or, with ``feed_only``, only the bytes' count, as the feeding-only plan loader gives)."""

    name = "dali-reader"

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
    ) -> None:
        from nvidia.dali import fn, pipeline_def
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from orderdp_dali.pipelines.image import ImagePipelineConfig, decode_and_augment

        cfg = pipeline_config or ImagePipelineConfig()
        files = [str(index.path(int(i))) for i in plan.indices]
        labels = [int(index.labels[int(i)]) for i in plan.indices]
        self.device = device
        self.samples = len(plan)

        @pipeline_def(
            batch_size=batch_size,
            num_threads=workers,
            device_id=0 if device == "gpu" else None,
            seed=seed,
        )
        def reader_pipeline():
            jpegs, label = fn.readers.file(
                files=files, labels=labels, random_shuffle=False, pad_last_batch=True, name="Reader"
            )
            if feed_only:
                return bytes_only(jpegs), label
            images = decode_and_augment(jpegs, train=True, device=device, config=cfg)
            return images, label

        pipe = reader_pipeline()
        pipe.build()
        self.iterator = DALIGenericIterator(
            pipe,
            ["data", "label"],
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=False,
        )
        self._fresh = True

    def epoch(self) -> int:
        # DALI's iterator schedules runs after the last batch, so the reader decodes its next
        # epoch's first batches after this epoch's timing ends (measured: about 0.25 CPU-s
        # right after each epoch here); the plan loader starts its next epoch early too.
        if not self._fresh:
            self.iterator.reset()
        self._fresh = False
        n = 0
        for out in self.iterator:
            n += int(out[0]["data"].shape[0])
        sync_device(self.device)
        return n

    def close(self) -> None:
        self.iterator = None


class TorchvisionLoader:
    """``ImageFolder`` + ``DataLoader`` (the research release's loader), the plan as the sampler."""

    name = "torchvision"

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
    ) -> None:
        import torch
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        from orderdp_dali.pipelines import ImagePipelineConfig

        cfg = pipeline_config or ImagePipelineConfig()
        transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    cfg.crop, scale=tuple(cfg.random_area), ratio=tuple(cfg.random_aspect_ratio)
                ),
                transforms.RandomHorizontalFlip(cfg.flip_probability),
                transforms.ToTensor(),
                transforms.Normalize([m / 255.0 for m in cfg.mean], [s / 255.0 for s in cfg.std]),
            ]
        )
        dataset = datasets.ImageFolder(str(index.root), transform=transform)
        _check_same_samples(index, dataset)
        self.device = device
        self.samples = len(plan)
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=plan.indices.tolist(),  # the plan, in plan order
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device == "gpu",
            generator=generator,
        )

    def epoch(self) -> int:
        n = 0
        for images, labels in self.loader:
            if self.device == "gpu":
                images = images.cuda(non_blocking=True)
                labels = labels.cuda(non_blocking=True)
            n += int(images.shape[0])
        sync_device(self.device)
        return n

    def close(self) -> None:
        self.loader = None


def _check_same_samples(index: SampleIndex, dataset: Any) -> None:
    """ImageFolder must enumerate the same files in the same order, or the plans differ."""
    theirs = [os.path.relpath(p, index.root) for p, _ in dataset.samples]
    if len(theirs) != len(index) or any(a != b for a, b in zip(theirs, index.paths.tolist())):
        raise RuntimeError(
            f"torchvision ImageFolder and SampleIndex disagree on the samples of {index.root}; "
            "the loaders would not read the same plan"
        )

