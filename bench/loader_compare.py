"""Loader-only throughput: our plan iterator against two references, over the same plan.

Three loaders read and augment the *same* planned samples (random-resized crop, flip,
normalise, CHW float32) with the same batch size and number of CPU workers:

* ``dali-plan``: :class:`~orderdp_dali.iterator.DALIPlanIterator` (each planned batch's
  paths from a main-process ``fn.external_source``, read by ``fn.io.file.read``; this library).
* ``dali-reader``: DALI's own ``fn.readers.file`` over the plan's files in plan order, with
  the same decode and augmentation: what a static file list costs, hence "the price of
  dynamic plans" is ``dali-plan / dali-reader``.
* ``per-sample-feed`` (feeding only, with ``feed_only`` variants of the two DALI loaders):
  the path this library replaced, a per-sample ``external_source(parallel=True)`` callback
  in spawned worker processes.
* ``torchvision``: the research release's loader: ``ImageFolder`` + ``DataLoader`` with
  ``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``, the plan
  as its sampler.

:func:`compare` times them side by side: warm-up epochs first (worker start-up, page
cache), then ``repeats`` rounds in which every loader runs one epoch, the order rotating
each round so slow drift of a shared machine hits all of them alike; the median of the
rounds is reported. Only steady-state epochs are timed (start-up is reported apart).

Run as a script for a quick comparison::

    python -m orderdp_dali.bench.loader_compare --root data/bench_imagenet_like/train --keep 0.6
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from orderdp_dali.plan import EpochPlan
from orderdp_dali.policies.base import Policy
from orderdp_dali.sample_index import SampleIndex

__all__ = [
    "FixedPlan",
    "orderdp_plan",
    "DaliPlanLoader",
    "DaliReaderLoader",
    "PerSampleWorkerLoader",
    "TorchvisionLoader",
    "compare",
    "run_loader_comparison",
    "main",
]

log = logging.getLogger(__name__)
LOADERS = ("dali-plan", "dali-reader", "torchvision")


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


def _sync(device: str) -> None:
    if device == "gpu":
        import torch

        torch.cuda.synchronize()


class DaliPlanLoader:
    """This library's iterator over a fixed plan; one :meth:`epoch` = one pass over the plan.

    ``feed_only`` swaps decoding and augmentation for the byte count of the file bytes, so
    only the feeding path is timed: main-process batch source, ``fn.io.file.read``,
    conversion to torch. As in training, the next epoch's pipeline starts decoding when an
    epoch ends (``prefetch_next_epoch``), outside the timed epoch: DALI's own reader
    (:class:`DaliReaderLoader`) runs ahead into its next epoch in the same way, so neither
    gets a head start the other lacks. The cold start is measured apart
    (``iterator_bench.measure_pipeline_start``).
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
    ) -> None:
        from orderdp_dali.iterator import DALIPlanIterator

        cls = _feed_only_iterator_class() if feed_only else DALIPlanIterator
        self.device = device
        self.samples = len(plan)
        self.iterator = cls(
            index,
            FixedPlan(len(index), plan),
            batch_size,
            device=device,
            num_threads=workers,
            seed=seed,
            sync_scores=False,
            prefetch_next_epoch=True,
            pipeline_config=pipeline_config,
        )

    def epoch(self) -> int:
        n = 0
        for batch in self.iterator:
            n += int(batch["index"].shape[0])
        _sync(self.device)
        return n

    def close(self) -> None:
        self.iterator.close()


def _bytes_only(encoded_files):
    """Feeding-only graphs end here: one cheap dense output per sample (its byte count) instead of decoding."""
    return encoded_files.shape()


def _feed_only_iterator_class() -> type:
    """A plan iterator subclass (defined on demand: it imports DALI and torch)."""
    from orderdp_dali.iterator import DALIPlanIterator

    class FeedOnlyPlanIterator(DALIPlanIterator):
        """The plan iterator with the byte count of the read bytes in place of decode + augment."""

        def _make_pipeline(self, feed: Any, *, train: bool, config: Any, **settings: Any):
            from nvidia.dali import fn

            from orderdp_dali.pipelines.common import plan_pipeline

            def read_only(paths):
                return _bytes_only(fn.io.file.read(paths, dont_use_mmap=not config.use_mmap))

            return plan_pipeline(feed, read_only, **settings)

    return FeedOnlyPlanIterator


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
            return _bytes_only(data), labels, indices, weights

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
    (or, with ``feed_only``, the same the byte count of the bytes as the feeding-only plan loader)."""

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
                return _bytes_only(jpegs), label
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
        _sync(self.device)
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
        _sync(self.device)
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


LOADER_CLASSES: Dict[str, Callable[..., Any]] = {
    "dali-plan": DaliPlanLoader,
    "dali-reader": DaliReaderLoader,
    "torchvision": TorchvisionLoader,
}


def _children_cpu() -> Dict[int, float]:
    """CPU seconds (user + system) of every live process whose parent is this one (Linux /proc).

    DALI's file-reading workers and torchvision's DataLoader workers are such children; an
    empty dict where /proc is unavailable.
    """
    me = os.getpid()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: Dict[int, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == me:
            out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_snapshot() -> Tuple[float, Dict[int, float]]:
    t = os.times()
    return t.user + t.system, _children_cpu()


def _cpu_between(a: Tuple[float, Dict[int, float]], b: Tuple[float, Dict[int, float]]) -> float:
    """CPU seconds used between two snapshots by this process (all threads) and its live children."""
    kids = sum(b[1][pid] - a[1][pid] for pid in b[1].keys() & a[1].keys())
    return (b[0] - a[0]) + kids


def compare(
    loaders: Mapping[str, Any],
    *,
    warmup: int = 1,
    repeats: int = 3,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Dict[str, Any]]:
    """Time one epoch of every loader per round, rotating the order each round.

    Besides wall time, each epoch's CPU time is measured (this process, all threads, plus
    its worker processes). On a shared machine other jobs stretch wall time but barely
    change the CPU seconds a loader spends per image, so ``cpu_ms_per_image`` is the
    steadier figure there; on an idle machine wall-clock throughput is what counts.

    Args:
        loaders: name -> object with ``epoch() -> images`` (and ``samples``).
        warmup: untimed rounds first (worker spawn, page cache, allocator warm-up).
        repeats: timed rounds; each loader's statistics are over these.
        progress: called with a one-line status before each epoch.

    Returns:
        name -> ``{"images_per_s": [...], "seconds": [...], "cpu_seconds": [...], "median",
        "min", "max", "median_seconds", "cpu_ms_per_image", "images"}`` (per round, in
        round order; ``median``/``min``/``max`` are of images/s).
    """
    if repeats < 1:
        raise ValueError(f"Invalid repeats: {repeats!r} (need >= 1)")
    if warmup < 0:
        raise ValueError(f"Invalid warmup: {warmup!r} (need >= 0)")
    names = list(loaders)
    times: Dict[str, List[float]] = {k: [] for k in names}
    cpus: Dict[str, List[float]] = {k: [] for k in names}
    images: Dict[str, int] = {}
    total = warmup + repeats
    for rnd in range(total):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            tag = "warm-up" if rnd < warmup else f"round {rnd - warmup + 1}/{repeats}"
            if progress:
                progress(f"{name}: {tag}")
            c0 = _cpu_snapshot()
            t0 = time.perf_counter()
            n = loaders[name].epoch()
            dt = time.perf_counter() - t0
            c1 = _cpu_snapshot()
            if n != loaders[name].samples:
                raise RuntimeError(f"loader {name} produced {n} images, its plan holds {loaders[name].samples}")
            images[name] = n
            if rnd >= warmup:
                times[name].append(dt)
                cpus[name].append(_cpu_between(c0, c1))
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        rates = [images[name] / t for t in times[name]]
        out[name] = {
            "images": images[name],
            "seconds": times[name],
            "cpu_seconds": cpus[name],
            "images_per_s": rates,
            "median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "median_seconds": statistics.median(times[name]),
            "cpu_ms_per_image": 1000.0 * statistics.median(cpus[name]) / max(1, images[name]),
        }
    return out


def paired_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Median over rounds of ``rate_a / rate_b`` (same round: same machine conditions)."""
    return statistics.median(x / y for x, y in zip(a["images_per_s"], b["images_per_s"]))


def cpu_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> Optional[float]:
    """Images per CPU-second of ``a`` over those of ``b`` (median of per-round ratios).

    None when no round measured CPU time for both (a clock tick is 10 ms: tiny epochs).
    """
    pairs = [
        (a["images"] / ca) / (b["images"] / cb)
        for ca, cb in zip(a["cpu_seconds"], b["cpu_seconds"])
        if ca > 0 and cb > 0
    ]
    return statistics.median(pairs) if pairs else None


def build_loaders(
    names: Sequence[str],
    index: SampleIndex,
    plan: EpochPlan,
    *,
    batch_size: int,
    workers: int,
    device: str,
    seed: int = 0,
    pipeline_config: Any = None,
) -> Dict[str, Any]:
    """The named loaders over ``plan`` (see :data:`LOADERS`)."""
    unknown = [n for n in names if n not in LOADER_CLASSES]
    if unknown:
        raise ValueError(f"Unknown loader(s) {unknown}; choose from {list(LOADER_CLASSES)}")
    return {
        n: LOADER_CLASSES[n](
            index,
            plan,
            batch_size=batch_size,
            workers=workers,
            device=device,
            seed=seed,
            pipeline_config=pipeline_config,
        )
        for n in names
    }


def run_loader_comparison(
    train_root: str,
    *,
    loaders: Sequence[str] = LOADERS,
    batch_size: int = 64,
    workers: Optional[int] = None,
    device: str = "auto",
    random_len_ratio: float = 0.75,
    top_q_ratio: float = 0.8,
    warmup: int = 1,
    repeats: int = 3,
    seed: int = 0,
    crop: int = 224,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Compare ``loaders`` over one OrderDP plan of ``train_root``; plain-data result.

    ``workers`` defaults to every usable CPU. The result holds per-loader statistics and
    the ratios ``dali-plan / torchvision`` and ``dali-plan / dali-reader`` (medians of
    per-round ratios).
    """
    import torch

    from orderdp_dali.pipelines import ImagePipelineConfig

    if device == "auto":
        device = "gpu" if torch.cuda.is_available() else "cpu"
    workers = workers or _usable_cpus()
    index = SampleIndex.scan(train_root)
    plan = orderdp_plan(len(index), random_len_ratio, top_q_ratio, seed=seed)
    cfg = ImagePipelineConfig(crop=crop, val_resize=max(crop, ImagePipelineConfig().val_resize))
    t0 = time.perf_counter()
    built = build_loaders(
        loaders, index, plan, batch_size=batch_size, workers=workers, device=device, seed=seed, pipeline_config=cfg
    )
    build_s = time.perf_counter() - t0
    try:
        stats = compare(built, warmup=warmup, repeats=repeats, progress=progress)
    finally:
        for loader in built.values():
            loader.close()
    ratios, cpu_ratios = {}, {}
    for ref in ("torchvision", "dali-reader"):
        if "dali-plan" in stats and ref in stats:
            ratios[f"dali-plan / {ref}"] = paired_ratio(stats["dali-plan"], stats[ref])
            cpu_ratios[f"dali-plan / {ref}"] = cpu_ratio(stats["dali-plan"], stats[ref])
    return {
        "train_root": str(index.root),
        "dataset_size": len(index),
        "samples": len(plan),
        "kept_fraction": len(plan) / len(index),
        "batch_size": batch_size,
        "workers": workers,
        "device": device,
        "crop": crop,
        "warmup": warmup,
        "repeats": repeats,
        "build_s": build_s,
        "loaders": stats,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
    }


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.loader_compare", description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="train split folder (<root>/<class>/*.JPEG)")
    p.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated subset of {','.join(LOADERS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="CPU workers for every loader (default: all usable CPUs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--random-len-ratio", type=float, default=0.75)
    p.add_argument("--top-q-ratio", type=float, default=0.8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    result = run_loader_comparison(
        args.root,
        loaders=[s for s in args.loaders.split(",") if s],
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        random_len_ratio=args.random_len_ratio,
        top_q_ratio=args.top_q_ratio,
        warmup=args.warmup,
        repeats=args.repeats,
        seed=args.seed,
        crop=args.crop,
        progress=lambda s: print(f"[loader] {s}", file=sys.stderr, flush=True),
    )
    for name, s in result["loaders"].items():
        print(
            f"{name:12s} {s['median']:8.1f} img/s (min {s['min']:.1f}, max {s['max']:.1f}); "
            f"{s['cpu_ms_per_image']:.2f} CPU-ms/image"
        )
    for k, v in result["ratios"].items():
        c = result["cpu_ratios"][k]
        print(f"{k}: {v:.3f} (images/s), {'n/a' if c is None else f'{c:.3f}'} (images per CPU-second)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
