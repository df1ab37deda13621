"""Tar shards against class folders: the same generated dataset through both batch sources.

::

    python -m orderdp_dali.bench.source_bench                      # ~3,000 ImageNet-like JPEGs, a few minutes
    python -m orderdp_dali.bench.source_bench --per-class 20 --repeats 2 --crop 64   # smoke run

Both sources run :class:`~orderdp_dali.iterator.DALIPlanIterator` over the same samples in
the same order (a fresh permutation per epoch, identical for both): the folder source
hands DALI file paths that ``fn.io.file.read`` reads in DALI's threads; the tar source
hands it each sample's bytes as views into memory-mapped shards
(:mod:`orderdp_dali.tar_shards`). Two figures, each a median over rounds of the paired
ratio tar / folder of images/s (one round times A then B, the next B then A, so both see
the same machine conditions), with the same ratio of images per CPU-second of the process
beside it (steadier on a shared machine):

* **decode + augment** (random-resized crop, flip, normalise; the training pipeline):
  goal >= 0.9.
* **feeding only**: the pipeline ends at each sample's byte count instead of decoding (the
  folder source still reads the files; the tar source copies the mapped bytes), over a plan
  ``--feed-tile`` times longer so that the rate, not the pipeline start, is measured.

The dataset is generated into ``--root`` on first use and its shards into ``--root/tar``
(rewritten when they do not match the folder).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from orderdp_dali.bench.machine import environment

__all__ = ["run_source_bench", "main"]

GOAL = 0.9


def _tiled_full_policy(num_samples: int, tile: int, seed: int) -> Any:
    """A policy whose epoch plan is ``tile`` fresh permutations of all samples, one after another."""
    from orderdp_dali.plan import EpochPlan
    from orderdp_dali.policies.base import Policy

    class TiledFull(Policy):
        name = "tiled-full"

        def select(self, epoch: int) -> EpochPlan:
            rng = self.rng(epoch)
            idx = np.concatenate([rng.permutation(self.num_samples) for _ in range(tile)]).astype(np.int64)
            return EpochPlan(epoch, idx, np.ones(len(idx), np.float32))

    return TiledFull(num_samples, seed=seed)


def _feed_only_iterator() -> type:
    """The plan iterator with each sample's byte count in place of decode + augment."""
    from orderdp_dali.iterator import DALIPlanIterator

    class FeedOnly(DALIPlanIterator):
        def _make_pipeline(self, feed: Any, *, train: bool, config: Any, **settings: Any) -> Any:
            from nvidia.dali import fn

            from orderdp_dali.pipelines.common import plan_pipeline

            encoded = getattr(feed.samples, "encoded", False)

            def read_only(samples: Any) -> Any:
                data = samples if encoded else fn.io.file.read(samples, dont_use_mmap=not config.use_mmap)
                return data.shape()

            return plan_pipeline(feed, read_only, **settings)

    return FeedOnly


def _ensure_shards(root: Path, folder_index: Any, shard_size: int) -> Any:
    """The tar index of ``root/tar/train``, written from the folder first when it does not match it."""
    from orderdp_dali.errors import DatasetError
    from orderdp_dali.tar_shards import TarIndex, folder_to_shards

    split = root / "tar" / "train"
    keys = [os.path.splitext(p)[0] for p in folder_index.paths.tolist()]
    try:
        index = TarIndex.scan(split)
        if [index.key(i) for i in range(len(index))] == keys and index.labels.tolist() == folder_index.labels.tolist():
            return index
    except (DatasetError, OSError):
        pass
    folder_to_shards(root, root / "tar", shard_size=shard_size, splits=["train"])
    return TarIndex.scan(split)


def _epoch(it: Any) -> int:
    n = 0
    for batch in it:
        n += int(batch["index"].shape[0])
    return n


def run_source_bench(
    root: str = "data/bench_imagenet_like",
    *,
    mode: str = "imagenet-like",
    classes: int = 10,
    per_class: int = 300,
    shard_size: int = 256,
    batch_size: int = 64,
    workers: Optional[int] = None,
    device: str = "cpu",
    crop: int = 224,
    warmup: int = 1,
    repeats: int = 5,
    feed_tile: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> Dict[str, Any]:
    """Time both sources interleaved; plain-data result (see the module docstring)."""
    from orderdp_dali.make_data import make_dataset
    from orderdp_dali.pipelines import ImagePipelineConfig
    from orderdp_dali.sample_index import SampleIndex

    if repeats < 1 or warmup < 0 or feed_tile < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, feed_tile >= 1 (got {repeats}, {warmup}, {feed_tile})")
    workers = workers or max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
    data = make_dataset(root, mode=mode, num_classes=classes, train_per_class=per_class,
                        val_per_class=20, seed=seed, progress=progress)
    folder = SampleIndex.scan(data / "train")
    tar = _ensure_shards(data, folder, shard_size)
    n = len(folder)
    from orderdp_dali.tar_shards import _index_shards

    t0 = time.perf_counter()
    _index_shards([str(tar.root / s) for s in tar.shards], workers=1)  # uncached, one process
    index_us = (time.perf_counter() - t0) / n * 1e6
    cfg = ImagePipelineConfig(crop=crop, val_resize=max(crop, ImagePipelineConfig().val_resize))
    from orderdp_dali.iterator import DALIPlanIterator

    feed_cls = _feed_only_iterator()
    common = dict(device=device, num_threads=workers, seed=seed, sync_scores=False, train=True,
                  prefetch_next_epoch=True, pipeline_config=cfg)
    groups = {
        "decode": {name: DALIPlanIterator(index, _tiled_full_policy(n, 1, seed), batch_size, **common)
                   for name, index in (("folder", folder), ("tar", tar))},
        "feed": {name: feed_cls(index, _tiled_full_policy(n, feed_tile, seed), batch_size, **common)
                 for name, index in (("folder", folder), ("tar", tar))},
    }
    result: Dict[str, Any] = {
        "root": str(data), "samples": n, "shards": len(tar.shards), "mean_bytes": float(tar.sizes.mean()),
        "batch_size": batch_size, "workers": workers, "device": device, "crop": crop,
        "warmup": warmup, "repeats": repeats, "feed_tile": feed_tile,
        "index_us_per_sample": index_us,
        "index_imagenet_s_one_process": index_us * 1.281167,
    }
    for group, loaders in groups.items():
        rates: Dict[str, List[float]] = {"folder": [], "tar": []}
        cpu_rates: Dict[str, List[float]] = {"folder": [], "tar": []}  # images per CPU-second of this process
        for rnd in range(warmup + repeats):
            order = ["folder", "tar"] if rnd % 2 == 0 else ["tar", "folder"]
            for name in order:
                if progress:
                    print(f"  {group} {name}: {'warm-up' if rnd < warmup else f'round {rnd - warmup + 1}'}",
                          file=sys.stderr)
                t0, c0 = time.perf_counter(), time.process_time()
                images = _epoch(loaders[name])
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if rnd >= warmup:
                    rates[name].append(images / dt)
                    cpu_rates[name].append(images / max(dc, 1e-9))
        for it in loaders.values():
            it.close()
        ratios = [t / f for t, f in zip(rates["tar"], rates["folder"])]
        result[group] = {
            "folder_images_per_s": statistics.median(rates["folder"]),
            "tar_images_per_s": statistics.median(rates["tar"]),
            "tar_over_folder": statistics.median(ratios),
            "per_round": ratios,
            "rates": rates,
            # steadier on a shared machine: other jobs stretch wall time, not the CPU spent per image
            "cpu_tar_over_folder": statistics.median(t / f for t, f in zip(cpu_rates["tar"], cpu_rates["folder"])),
        }
    result["goal"] = {"decode_tar_over_folder": GOAL, "met": result["decode"]["tar_over_folder"] >= GOAL}
    return result


def render(result: Dict[str, Any]) -> str:
    lines = [
        f"tar shards vs class folders: {result['samples']} samples ({result['mean_bytes'] / 1000:.0f} KB mean) in "
        f"{result['shards']} shards, batch {result['batch_size']}, {result['workers']} DALI threads, "
        f"{result['device']}, crop {result['crop']}, {result['repeats']} rounds",
        "| figure | folder images/s | tar images/s | tar / folder (median of paired ratios) | per CPU-second |",
        "| --- | --- | --- | --- | --- |",
    ]
    for group, title in (("decode", "decode + augment"), ("feed", "feeding only")):
        g = result[group]
        lines.append(f"| {title} | {g['folder_images_per_s']:.0f} | {g['tar_images_per_s']:.0f} | "
                     f"{g['tar_over_folder']:.3f} ({min(g['per_round']):.3f}-{max(g['per_round']):.3f}) | "
                     f"{g['cpu_tar_over_folder']:.3f} |")
    lines.append(f"indexing the shards with tarfile (uncached, one process): {result['index_us_per_sample']:.0f} us a "
                 f"sample, {result['index_us_per_sample'] * 1.281167:.0f} s for ImageNet's 1.28M")
    met = "met" if result["goal"]["met"] else "NOT met"
    lines.append(f"goal: decode + augment tar / folder >= {GOAL}: {met}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.source_bench", description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/bench_imagenet_like", help="generated dataset folder (made if absent)")
    p.add_argument("--mode", default="imagenet-like", choices=("small", "imagenet-like"))
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=300, help="train images per class")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DALI threads (default: usable CPUs, at most 4)")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--feed-tile", type=int, default=10)
    p.add_argument("--output", default=None, help="also write the result as JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    result = run_source_bench(
        args.root, mode=args.mode, classes=args.classes, per_class=args.per_class, shard_size=args.shard_size,
        batch_size=args.batch_size, workers=args.workers, device=args.device, crop=args.crop, warmup=args.warmup,
        repeats=args.repeats, feed_tile=args.feed_tile,
    )
    given = list(argv if argv is not None else sys.argv[1:])
    result["command"] = " ".join(["python -m orderdp_dali.bench.source_bench", *given])
    result["machine"] = environment()
    print(render(result))
    if args.output:
        from orderdp_dali.atomic import write_text_atomic

        write_text_atomic(args.output, json.dumps(result, indent=2) + "\n")
        print(f"wrote {Path(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
