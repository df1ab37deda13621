"""The loader comparison: our plan iterator against DALI's reader and torchvision, side by side.

::

    python -m orderdp_dali.bench.loader_compare                 # generates 3,000 JPEGs on first use
    python -m orderdp_dali.bench.loader_compare --root DIR/train --device gpu --json loader.json

Every loader reads the *same* planned samples (an OrderDP plan keeping 60% by default,
after one epoch of random scores) with the same batch size, augmentation (random-resized
crop, flip, normalise; CHW float32) and number of CPU workers:

* ``dali-plan``: :class:`~orderdp_dali.iterator.DALIPlanIterator` over the pruned plan
  (each planned batch's paths from a main-process ``fn.external_source``, read by
  ``fn.io.file.read``); ``dali-plan-full``: the same over every sample;
* ``dali-reader``: DALI's own ``fn.readers.file`` over the plan's files in plan order, same
  decode and augmentation (a static file list);
* ``torchvision``: ``ImageFolder`` + ``DataLoader`` with the plan as its sampler (the
  research release's loader);
* feeding only (the byte count of each read file instead of decoding, over 10x longer
  passes): ``dali-plan-feed``, ``dali-reader-feed`` and ``per-sample-feed`` (the path this
  library replaced: a per-sample ``external_source(parallel=True)`` callback in worker
  processes).

Measured (medians of per-round ratios; each round runs one epoch of every loader, the
order rotating, after untimed warm-up rounds; the decoding loaders first, then the
feeding-only ones in rounds of their own):

(a) ``(dali-plan epoch time / dali-plan-full epoch time) / kept fraction``: does a pruned
    epoch cost its share? Goal <= 1.05.
(b) ``dali-plan / dali-reader`` images/s: the price of dynamic plans. Goal >= 0.98.
(c) ``dali-plan / torchvision`` images/s. Goal >= 1.8.
(d) feeding only: ``dali-plan-feed / dali-reader-feed`` (goal >= 0.7) and
    ``dali-plan-feed / per-sample-feed`` (goal >= 2.5).

Every loader builds its pipeline when it is constructed, outside the timed epochs (our
iterator builds one pipeline for all its epochs, as DALI's reader does); the pipeline's
set-up (build and first scheduling; start to first batch) and, when nothing started an
epoch early, the start of a pass on the built pipeline are measured apart. The same
ratios from CPU seconds stand beside (steadier on a shared machine). ``orderdp-dali bench``
runs this comparison in ``mode: loader`` or ``both``.

This module runs the comparison and its command line; the loaders are in
:mod:`~orderdp_dali.bench.plan_loader` (ours) and :mod:`~orderdp_dali.bench.baseline_loaders`
(the others), the round-robin timing in :mod:`~orderdp_dali.bench.loader_timing`.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.bench.baseline_loaders import DaliReaderLoader, PerSampleWorkerLoader, TorchvisionLoader
from orderdp_dali.bench.config import LOADER_NAMES
from orderdp_dali.bench.figures import spread
from orderdp_dali.bench.loader_timing import compare, measure_pipeline_start, round_ratios
from orderdp_dali.bench.machine import environment, load_average, usable_cpus
from orderdp_dali.bench.outputs import train_folder, write_results
from orderdp_dali.bench.plan_loader import DaliPlanLoader, FixedPlan, orderdp_plan
from orderdp_dali.bench.report import LOADER_FIGURES, loader_lines
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.plan import EpochPlan

__all__ = [
    "LOADERS",
    "DEFAULT_DATA",
    "FixedPlan",
    "orderdp_plan",
    "DaliPlanLoader",
    "DaliReaderLoader",
    "PerSampleWorkerLoader",
    "TorchvisionLoader",
    "compare",
    "measure_pipeline_start",
    "run_loader_comparison",
    "render_markdown",
    "main",
]

log = logging.getLogger(__name__)
LOADERS = LOADER_NAMES
DECODING = ("dali-plan", "dali-plan-full", "dali-reader", "torchvision", "dali-plan-tar")
FEEDING = ("dali-plan-feed", "dali-reader-feed", "per-sample-feed", "dali-plan-tar-feed")
TAR = ("dali-plan-tar", "dali-plan-tar-feed")  # over the split's tar-shard copy (<root>/tar/<split>)
SHARD_SIZE = 256
FEED_TILE = 10  # feeding alone runs ~20x faster than decoding: longer passes, so the rate is measured, not the start
# The same request as configs/bench_loader_cpu.yaml, so both reuse one generated folder.
DEFAULT_DATA = {"out_dir": "data/bench_imagenet_like", "mode": "imagenet-like", "num_classes": 10,
                "train_per_class": 300, "val_per_class": 20, "seed": 0}


def _feeding(cls: type) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        return cls(*args, feed_only=True, **kwargs)

    return make


LOADER_CLASSES: Dict[str, Callable[..., Any]] = {
    "dali-plan": DaliPlanLoader,
    "dali-plan-full": DaliPlanLoader,
    "dali-reader": DaliReaderLoader,
    "torchvision": TorchvisionLoader,
    "dali-plan-feed": _feeding(DaliPlanLoader),
    "dali-reader-feed": _feeding(DaliReaderLoader),
    "per-sample-feed": PerSampleWorkerLoader,
    "dali-plan-tar": DaliPlanLoader,
    "dali-plan-tar-feed": _feeding(DaliPlanLoader),
}


def tar_copy(index: SampleIndex, shard_size: int = SHARD_SIZE) -> Any:
    """The :class:`~orderdp_dali.data.tar.TarIndex` of ``index``'s split copied into tar shards
    (``<root>/tar/<split>``), written from the folder first when absent or not the same samples."""
    from orderdp_dali.data.tar import TarIndex
    from orderdp_dali.errors import DatasetError
    from orderdp_dali.make_shards import folder_to_shards

    split_dir = Path(index.root)
    shards = split_dir.parent / "tar" / split_dir.name
    keys = [os.path.splitext(p)[0] for p in index.paths.tolist()]
    try:
        tar = TarIndex.scan(shards)
        if [tar.key(i) for i in range(len(tar))] == keys and tar.labels.tolist() == index.labels.tolist():
            return tar
    except (DatasetError, OSError):
        pass
    folder_to_shards(split_dir.parent, split_dir.parent / "tar", shard_size=shard_size, splits=[split_dir.name])
    return TarIndex.scan(shards)


def _tiled(plan: EpochPlan, times: int) -> EpochPlan:
    """``plan`` repeated ``times`` over (a longer epoch over the same files)."""
    return EpochPlan(plan.epoch, np.tile(plan.indices, times), np.tile(plan.weights, times))


# Ratios: figure key -> (numerator loader, denominator loader).
RATIOS = {
    "b_plan_vs_dali_reader": ("dali-plan", "dali-reader"),
    "c_dali_vs_torchvision": ("dali-plan", "torchvision"),
    "d_feed_plan_vs_dali_reader": ("dali-plan-feed", "dali-reader-feed"),
    "d_feed_plan_vs_per_sample": ("dali-plan-feed", "per-sample-feed"),
    "e_tar_vs_folder": ("dali-plan-tar", "dali-plan"),
    "e_feed_tar_vs_folder": ("dali-plan-tar-feed", "dali-plan-feed"),
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
    tile: int = 1,
    cold_starts: int = 3,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Compare ``loaders`` (any of :data:`LOADERS`) over one OrderDP plan of ``train_root``.

    ``workers`` defaults to every usable CPU; ``tile`` runs each plan that many times per
    epoch; ``cold_starts`` (0: none) times pipeline set-ups and pass starts apart. Returns plain data:
    per-loader statistics, ``figures`` (a)-(d) for the loaders present, the same from CPU
    seconds, per-round values, and ``ratios`` (``"dali-plan / dali-reader"`` ...).
    """
    from orderdp_dali.pipelines import ImagePipelineConfig

    unknown = [n for n in loaders if n not in LOADER_CLASSES]
    if unknown:
        raise ValueError(f"Unknown loader(s) {unknown}; choose from {list(LOADER_CLASSES)}")
    if tile < 1:
        raise ValueError(f"Invalid tile: {tile!r} (need an int >= 1)")
    if device == "auto":
        import torch

        device = "gpu" if torch.cuda.is_available() else "cpu"
    workers = workers or usable_cpus()
    index = SampleIndex.scan(train_root)
    tar = tar_copy(index) if any(name in TAR for name in loaders) else None
    n = len(index)
    pruned = _tiled(orderdp_plan(n, random_len_ratio, top_q_ratio, seed=seed), tile)
    full = _tiled(orderdp_plan(n, 1.0, 1.0, seed=seed), tile)  # every sample, random order
    plans = {"dali-plan-full": full, **{name: _tiled(pruned, FEED_TILE) for name in FEEDING}}
    cfg = ImagePipelineConfig(crop=crop, val_resize=max(crop, ImagePipelineConfig().val_resize))
    common = dict(batch_size=batch_size, workers=workers, device=device, seed=seed, pipeline_config=cfg)
    stats: Dict[str, Any] = {}
    build_s = 0.0
    for group in (DECODING, FEEDING):  # each interleaved within itself; per-sample feeding has its own processes
        names = [name for name in loaders if name in group]
        if not names:
            continue
        t0 = time.perf_counter()
        built = {name: LOADER_CLASSES[name](tar if name in TAR else index, plans.get(name, pruned), **common)
                 for name in names}
        build_s += time.perf_counter() - t0
        try:
            stats.update(compare(built, warmup=warmup, repeats=repeats, progress=progress))
        finally:
            for loader in built.values():
                loader.close()
            del built
            gc.collect()  # the group's pipelines, threads and worker processes end here
    kept = len(pruned) / len(full)
    per_round: Dict[str, List[float]] = {}
    cpu_round: Dict[str, List[float]] = {}
    if "dali-plan" in stats and "dali-plan-full" in stats:
        p, f = stats["dali-plan"], stats["dali-plan-full"]
        key = "a_pruned_time_ratio_over_kept"
        per_round[key] = [(tp / tf) / kept for tp, tf in zip(p["seconds"], f["seconds"])]
        cpu_round[key] = [(cp / cf) / kept for cp, cf in zip(p["cpu_seconds"], f["cpu_seconds"]) if cf > 0]
    for key, (a, b) in RATIOS.items():
        if a in stats and b in stats:
            per_round[key] = round_ratios(stats[a], stats[b])
            cpu_round[key] = round_ratios(stats[a], stats[b], cpu=True)
    figures = {k: spread(v)["median"] for k, v in per_round.items()}
    cpu_figures = {k: spread(v)["median"] for k, v in cpu_round.items()}
    start = None
    if cold_starts > 0 and "dali-plan" in loaders:
        start = measure_pipeline_start(index, pruned, repeats=cold_starts, **common)
    return {
        "train_root": str(index.root),
        "dataset_size": n,
        "samples": len(pruned),
        "kept_fraction": kept,
        "tile": tile,
        "orderdp": {"random_len_ratio": random_len_ratio, "top_q_ratio": top_q_ratio},
        "batch_size": batch_size,
        "workers": workers,
        "device": device,
        "crop": crop,
        "warmup": warmup,
        "repeats": repeats,
        "build_s": build_s,
        "loaders": stats,
        "figures": figures,
        "cpu_figures": cpu_figures,
        "per_round": per_round,
        "goals": {k: {"op": LOADER_FIGURES[k][1], "bound": LOADER_FIGURES[k][2]} for k in figures},
        # the names gpu_thresholds.py and earlier results use
        "ratios": {f"{RATIOS[k][0]} / {RATIOS[k][1]}": v for k, v in figures.items() if k in RATIOS},
        "pipeline_start": start,
    }


def render_markdown(result: Mapping[str, Any]) -> str:
    """A markdown summary of one :func:`run_loader_comparison` result (with its environment)."""
    env = result["environment"]
    lines = [
        f"# Loader comparison ({result['device'].upper()})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- machine: {env['cpu_model']}, {env['cpu_usable']} usable CPUs, GPU: {env.get('gpu') or 'none'}; "
        f"1-minute load average before/after: {result.get('load_before')}/{result.get('load_after')}",
        f"- versions: python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"DALI {env['dali']}, numpy {env['numpy']} (git {env.get('git_commit')})",
        f"- data: {result['train_root']} ({result['data']['files']} files, {result['data']['mean_kb']:.0f} KB mean)",
        "",
    ]
    lines += loader_lines(result)
    lines += ["", "The CPU-second column gives the same ratios from the CPU time each loader spent (this process "
              "with all its threads, plus its worker processes): other jobs on a shared machine stretch wall time "
              "but hardly change CPU time per image."]
    for name, s in result["loaders"].items():
        lines.append(f"Per-round images/s, {name}: {', '.join(f'{x:.1f}' for x in s['images_per_s'])}")
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _dataset_stats(root: Path) -> Dict[str, Any]:
    sizes = [e.stat().st_size for d in os.scandir(root) if d.is_dir() for e in os.scandir(d.path)]
    return {"files": len(sizes), "mean_kb": sum(sizes) / max(1, len(sizes)) / 1024}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.loader_compare",
                                description=__doc__.split("\n")[0])
    p.add_argument("--root", help="train split folder (<root>/<class>/*.JPEG); default: "
                   f"{DEFAULT_DATA['out_dir']}/train, generated on first use")
    p.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated subset of {','.join(LOADERS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="CPU workers for every loader (default: all usable CPUs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"], help="DALI decoding: cpu or gpu (mixed)")
    p.add_argument("--random-len-ratio", type=float, default=0.75)
    p.add_argument("--top-q-ratio", type=float, default=0.8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=1,
                   help="repeat each plan this many times per epoch: longer epochs, as a rank's ImageNet epoch is")
    p.add_argument("--cold-starts", type=int, default=3,
                   help="pipeline set-ups (and pass starts) timed apart (0: none)")
    p.add_argument("--out", default=None, help="folder for loader_compare_<device>.json and .md")
    p.add_argument("--json", default=None, help="write the result (JSON) here")
    p.add_argument("--note", action="append", default=[], help="a line for the markdown's notes (repeatable)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    say = lambda s: print(f"[loader] {s}", file=sys.stderr, flush=True)  # noqa: E731
    train = train_folder(args.root, DEFAULT_DATA, say)
    load_before = load_average()
    result = run_loader_comparison(
        str(train),
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
        tile=args.tile,
        cold_starts=args.cold_starts,
        progress=say,
    )
    result.update(
        command="python -m orderdp_dali.bench.loader_compare " + " ".join(shlex.quote(a) for a in argv_list),
        environment=environment(), load_before=load_before, load_after=load_average(),
        data=_dataset_stats(train), notes=list(args.note),
    )
    text = render_markdown(result)
    print(text)
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(result, indent=2) + "\n")
    if args.out:
        write_results(args.out, "loader_compare", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
