"""Benchmarks of the plan iterator itself (no model), all measured side by side in one run.

::

    python -m orderdp_dali.bench.iterator_bench            # CPU: a few minutes on 2 cores

Over a few thousand generated ImageNet-like JPEGs (``make_dataset(mode="imagenet-like")``,
~110 KB, ~400x350 px; generated into ``data/`` on first use), with the ImageNet training
augmentation (random-resized crop 224, flip, normalise) and the same number of CPU workers
for every loader, it answers:

(a) **Does a pruned epoch cost its share?** One epoch of the full plan and one of an
    OrderDP plan keeping 60% (r=0.75, t=0.8), through :class:`DALIPlanIterator`:
    ``(time_pruned / time_full) / kept_fraction``. 1.0 = time proportional to samples.
    Goal: <= 1.05.
(b) **The price of dynamic plans**: our iterator against DALI's own ``fn.readers.file``
    over the same files in the same order with identical decode and augmentation,
    images/s ratio. Goal: >= 0.98.
(c) **Against the research release's loader**: torchvision ``ImageFolder`` + ``DataLoader``
    (PIL decode, same augmentation, same plan as the sampler) with the same number of
    workers, images/s ratio. Goal: >= 1.8.
(d) **Feeding only** (the byte count of each read file instead of decoding): our iterator
    against ``fn.readers.file`` (goal >= 0.7) and against the per-sample worker-process
    feeding that it replaced (goal >= 2.5).

Also reported: each epoch's pipeline start (build and first scheduling, and start to first
batch): every training epoch runs a fresh pipeline seeded from (seed, rank, epoch).

Every loader runs one epoch per round (the decoding loaders first, then, in rounds of their
own, the feeding-only ones); the order rotates each round; warm-up rounds are untimed;
ratios are medians of per-round ratios (the two epochs of a ratio ran minutes apart at
most, under the same machine conditions). Results go to
``bench/results/iterator_bench_<device>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ["run_iterator_bench", "render_markdown", "main", "GOALS", "DEFAULT_DATA"]

# The same request as configs/bench_gpu_r50.yaml, so both reuse one generated folder.
DEFAULT_DATA = {
    "root": "data/bench_imagenet_like",
    "mode": "imagenet-like",
    "num_classes": 10,
    "train_per_class": 300,
    "val_per_class": 20,
    "seed": 0,
}
FEED_TILE = 10
GOALS = {
    "a_pruned_time_ratio_over_kept": ("<=", 1.05),
    "b_plan_vs_dali_reader": (">=", 0.98),
    "c_dali_vs_torchvision": (">=", 1.8),
    "d_feed_plan_vs_dali_reader": (">=", 0.7),
    "d_feed_plan_vs_per_sample": (">=", 2.5),
}


def _meets(value: float, goal: Sequence[Any]) -> bool:
    op, bound = goal
    return value <= bound if op == "<=" else value >= bound


def run_iterator_bench(
    train_root: str,
    *,
    batch_size: int = 64,
    workers: Optional[int] = None,
    device: str = "cpu",
    random_len_ratio: float = 0.75,
    top_q_ratio: float = 0.8,
    warmup: int = 1,
    repeats: int = 3,
    crop: int = 224,
    seed: int = 0,
    tile: int = 1,
    progress=None,
) -> Dict[str, Any]:
    """Run (a), (b) and (c) over ``train_root``; plain-data result (see the module docstring)."""
    from orderdp_dali.bench.loader_compare import (
        DaliPlanLoader,
        DaliReaderLoader,
        PerSampleWorkerLoader,
        TorchvisionLoader,
        _usable_cpus,
        compare,
        cpu_ratio,
        orderdp_plan,
        paired_ratio,
    )
    from orderdp_dali.pipelines import ImagePipelineConfig
    from orderdp_dali.sample_index import SampleIndex

    workers = workers or _usable_cpus()
    index = SampleIndex.scan(train_root)
    n = len(index)
    if tile < 1:
        raise ValueError(f"Invalid tile: {tile!r} (need an int >= 1)")
    full = _tiled(orderdp_plan(n, 1.0, 1.0, seed=seed), tile)  # every sample, random order
    pruned = _tiled(orderdp_plan(n, random_len_ratio, top_q_ratio, seed=seed), tile)
    kept = len(pruned) / len(full)
    # Feeding alone runs ~20x faster than decoding: longer passes, so that the rate and not
    # the pipeline start is what the feeding-only figures measure.
    feed_plan = _tiled(pruned, FEED_TILE)
    cfg = ImagePipelineConfig(crop=crop, val_resize=max(crop, ImagePipelineConfig().val_resize))
    common = dict(batch_size=batch_size, workers=workers, device=device, seed=seed, pipeline_config=cfg)
    # Two groups, each interleaved within itself and run in turn: the decoding loaders, then
    # the feeding-only ones (whose per-sample baseline has worker processes of its own).
    groups = (
        lambda: {
            "dali-plan full": DaliPlanLoader(index, full, **common),
            "dali-plan pruned": DaliPlanLoader(index, pruned, **common),
            "dali-reader pruned": DaliReaderLoader(index, pruned, **common),
            "torchvision pruned": TorchvisionLoader(index, pruned, **common),
        },
        lambda: {
            "dali-plan-feed pruned": DaliPlanLoader(index, feed_plan, feed_only=True, **common),
            "dali-reader-feed pruned": DaliReaderLoader(index, feed_plan, feed_only=True, **common),
            "per-sample-feed pruned": PerSampleWorkerLoader(index, feed_plan, **common),
        },
    )
    stats: Dict[str, Any] = {}
    build_s = 0.0
    for make_group in groups:
        t0 = time.perf_counter()
        loaders = make_group()
        build_s += time.perf_counter() - t0
        try:
            stats.update(compare(loaders, warmup=warmup, repeats=repeats, progress=progress))
        finally:
            for loader in loaders.values():
                loader.close()
            del loaders
            gc.collect()  # the group's pipelines, threads and worker processes end here
    per_round_a = [
        (tp / tf) / kept for tp, tf in zip(stats["dali-plan pruned"]["seconds"], stats["dali-plan full"]["seconds"])
    ]
    figures = {
        "a_pruned_time_ratio_over_kept": statistics.median(per_round_a),
        "b_plan_vs_dali_reader": paired_ratio(stats["dali-plan pruned"], stats["dali-reader pruned"]),
        "c_dali_vs_torchvision": paired_ratio(stats["dali-plan pruned"], stats["torchvision pruned"]),
        "d_feed_plan_vs_dali_reader": paired_ratio(stats["dali-plan-feed pruned"], stats["dali-reader-feed pruned"]),
        "d_feed_plan_vs_per_sample": paired_ratio(stats["dali-plan-feed pruned"], stats["per-sample-feed pruned"]),
    }
    # The same three figures from CPU seconds instead of wall time (steadier on a shared machine).
    cpu_a = [
        (cp / cf) / kept
        for cp, cf in zip(stats["dali-plan pruned"]["cpu_seconds"], stats["dali-plan full"]["cpu_seconds"])
        if cf > 0
    ]
    cpu_figures = {
        "a_pruned_time_ratio_over_kept": statistics.median(cpu_a) if cpu_a else None,
        "b_plan_vs_dali_reader": cpu_ratio(stats["dali-plan pruned"], stats["dali-reader pruned"]),
        "c_dali_vs_torchvision": cpu_ratio(stats["dali-plan pruned"], stats["torchvision pruned"]),
        "d_feed_plan_vs_dali_reader": cpu_ratio(stats["dali-plan-feed pruned"], stats["dali-reader-feed pruned"]),
        "d_feed_plan_vs_per_sample": cpu_ratio(stats["dali-plan-feed pruned"], stats["per-sample-feed pruned"]),
    }
    pipeline_start = measure_pipeline_start(index, pruned, repeats=max(3, repeats), **common)
    return {
        "train_root": str(index.root),
        "dataset_size": n,
        "pruned_samples": len(pruned),
        "tile": tile,
        "feed_samples": len(feed_plan),
        "kept_fraction": kept,
        "orderdp": {"random_len_ratio": random_len_ratio, "top_q_ratio": top_q_ratio},
        "batch_size": batch_size,
        "workers": workers,
        "dali_threads": workers,
        "per_sample_workers": workers,
        "torchvision_workers": workers,
        "device": device,
        "crop": crop,
        "warmup": warmup,
        "repeats": repeats,
        "build_s": build_s,
        "loaders": stats,
        "per_round": {"a_pruned_time_ratio_over_kept": per_round_a},
        "pipeline_start": pipeline_start,
        "figures": figures,
        "cpu_figures": cpu_figures,
        "goals": {k: {"op": GOALS[k][0], "bound": GOALS[k][1], "met": _meets(v, GOALS[k])} for k, v in figures.items()},
    }


def measure_pipeline_start(index: Any, plan: Any, *, repeats: int, batch_size: int, workers: int, device: str,
                           seed: int, pipeline_config: Any) -> Dict[str, Any]:
    """The cost of an epoch's fresh pipeline when nothing started it early: medians over
    ``repeats`` cold starts of ``plan`` (build and first scheduling; start to first batch)."""
    from orderdp_dali.bench.loader_compare import FixedPlan
    from orderdp_dali.iterator import DALIPlanIterator

    it = DALIPlanIterator(index, FixedPlan(len(index), plan), batch_size, device=device, num_threads=workers,
                          seed=seed, sync_scores=False, prefetch_next_epoch=False, pipeline_config=pipeline_config)
    builds, firsts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batches = iter(it)
        next(batches)
        firsts.append(time.perf_counter() - t0)
        batches.close()  # abandon the pass: the next iter() starts a fresh pipeline
        builds.append(it.last_pass["start_s"])
    it.close()
    return {
        "build_and_schedule_s": statistics.median(builds),
        "start_to_first_batch_s": statistics.median(firsts),
        "epochs": repeats,
    }


def _tiled(plan: Any, times: int) -> Any:
    """``plan`` repeated ``times`` over (a longer epoch over the same files)."""
    from orderdp_dali.plan import EpochPlan

    return EpochPlan(plan.epoch, np.tile(plan.indices, times), np.tile(plan.weights, times))


def _dataset_stats(root: Path) -> Dict[str, Any]:
    sizes = [e.stat().st_size for d in os.scandir(root) if d.is_dir() for e in os.scandir(d.path)]
    return {"files": len(sizes), "mean_kb": sum(sizes) / max(1, len(sizes)) / 1024}


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render_markdown(result: Mapping[str, Any]) -> str:
    """A markdown summary of one :func:`run_iterator_bench` result (plus its environment)."""
    env = result["environment"]
    f = result["figures"]
    c = result.get("cpu_figures") or {}
    g = result["goals"]

    def verdict(key: str) -> str:
        return "met" if g[key]["met"] else "**not met**"

    lines = [
        f"# Iterator benchmark ({result['device'].upper()})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- machine: {env['cpu_model']}, {env['cpu_usable']} usable CPUs, GPU: {env.get('gpu') or 'none'}; "
        f"1-minute load average before/after: {result.get('load_before')}/{result.get('load_after')}",
        f"- versions: python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"DALI {env['dali']}, numpy {env['numpy']} (git {env.get('git_commit')})",
        f"- data: {result['dataset_size']} generated imagenet-like JPEGs ({result['data']['mean_kb']:.0f} KB mean) "
        f"in {result['train_root']}",
        f"- every loader: batch {result['batch_size']}, random-resized crop {result['crop']} + flip + normalise, "
        f"float32 CHW; {result['workers']} CPU workers (DALI: {result['dali_threads']} threads; the "
        f"per-sample feeding baseline: {result['per_sample_workers']} worker processes; torchvision: "
        f"{result['torchvision_workers']} DataLoader workers); device {result['device']}",
        f"- pruned plan: OrderDP r={result['orderdp']['random_len_ratio']}, t={result['orderdp']['top_q_ratio']}: "
        f"{result['pruned_samples'] // result['tile']} of {result['dataset_size']} samples "
        f"({100 * result['kept_fraction']:.1f}%); each epoch runs its plan {result['tile']} time(s); "
        f"feeding-only epochs run the pruned plan {result['feed_samples'] // result['pruned_samples']} times "
        f"({result['feed_samples']} samples)",
        f"- {result['warmup']} untimed warm-up round(s), then {result['repeats']} rounds; each round runs one epoch "
        "of every loader, the order rotating; medians over rounds; the decoding loaders first, then the "
        "feeding-only ones in rounds of their own",
        "",
        "| figure | measured (wall-clock) | goal | | same from CPU seconds |",
        "|---|---|---|---|---|",
        f"| (a) pruned epoch time / full epoch time / kept fraction | {f['a_pruned_time_ratio_over_kept']:.3f} "
        f"| <= 1.05 | {verdict('a_pruned_time_ratio_over_kept')} | {_fmt(c.get('a_pruned_time_ratio_over_kept'))} |",
        f"| (b) our iterator / DALI fn.readers.file (images/s) | {f['b_plan_vs_dali_reader']:.3f} | >= 0.98 "
        f"| {verdict('b_plan_vs_dali_reader')} | {_fmt(c.get('b_plan_vs_dali_reader'))} |",
        f"| (c) DALI (our iterator) / torchvision DataLoader (images/s) | {f['c_dali_vs_torchvision']:.3f} "
        f"| >= 1.8 | {verdict('c_dali_vs_torchvision')} | {_fmt(c.get('c_dali_vs_torchvision'))} |",
        f"| (d) feeding only: our iterator / fn.readers.file (samples/s) | {f['d_feed_plan_vs_dali_reader']:.3f} "
        f"| >= 0.7 | {verdict('d_feed_plan_vs_dali_reader')} | {_fmt(c.get('d_feed_plan_vs_dali_reader'))} |",
        f"| (d) feeding only: our iterator / per-sample worker processes | {f['d_feed_plan_vs_per_sample']:.3f} "
        f"| >= 2.5 | {verdict('d_feed_plan_vs_per_sample')} | {_fmt(c.get('d_feed_plan_vs_per_sample'))} |",
        "",
        f"Pipeline start per epoch (our iterator, median of {result['pipeline_start']['epochs']} cold starts, "
        "nothing started early): "
        f"build + first scheduling {1000 * result['pipeline_start']['build_and_schedule_s']:.1f} ms, "
        f"start to first batch {1000 * result['pipeline_start']['start_to_first_batch_s']:.1f} ms.",
        "",
        "Wall-clock figures are medians of per-round ratios. The CPU-second column gives the same ratios "
        "from the CPU time each loader spent (this process with all its threads, plus its worker "
        "processes): images per CPU-second instead of images per second. Other jobs on a shared machine "
        "stretch wall time but hardly change CPU time per image; on an idle machine the two agree when "
        "the loaders keep every core busy.",
        "",
        "| loader | plan | images/s median | min | max | epoch s (median) | CPU ms per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in result["loaders"].items():
        loader, plan = name.rsplit(" ", 1)
        lines.append(
            f"| {loader} | {plan} ({s['images']}) | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} "
            f"| {s['median_seconds']:.2f} | {s['cpu_ms_per_image']:.2f} |"
        )
    lines += [
        "",
        f"Per-round (a): {', '.join(f'{x:.3f}' for x in result['per_round']['a_pruned_time_ratio_over_kept'])}",
    ]
    for name, s in result["loaders"].items():
        lines.append(f"Per-round images/s, {name}: {', '.join(f'{x:.1f}' for x in s['images_per_s'])}")
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orderdp_dali.bench.iterator_bench",
        description="Iterator benchmarks: pruned-epoch cost, vs DALI fn.readers.file, vs torchvision DataLoader.",
    )
    p.add_argument("--data", default=DEFAULT_DATA["root"], help="dataset folder (generated if absent)")
    p.add_argument("--classes", type=int, default=DEFAULT_DATA["num_classes"])
    p.add_argument("--train-per-class", type=int, default=DEFAULT_DATA["train_per_class"])
    p.add_argument("--val-per-class", type=int, default=DEFAULT_DATA["val_per_class"])
    p.add_argument("--no-generate", action="store_true", help="use --data as it is (any ImageNet-layout folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="CPU workers for every loader (default: all usable CPUs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="DALI decoding: cpu, or gpu (mixed)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=1,
                   help="repeat each plan this many times per epoch: longer epochs, as a rank's ImageNet epoch is")
    p.add_argument("--out", default="bench/results", help="folder for iterator_bench_<device>.json/.md")
    p.add_argument("--note", action="append", default=[], help="a line for the markdown's notes (repeatable)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from orderdp_dali.bench.report import environment

    args = get_args_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python -m orderdp_dali.bench.iterator_bench " + " ".join(shlex.quote(a) for a in argv_list)
    root = Path(args.data)
    if not args.no_generate:
        from orderdp_dali.make_data import make_dataset

        t = time.perf_counter()
        print(f"[iterator-bench] data: {root} (generated on first use)", flush=True)
        root = make_dataset(
            root,
            mode="imagenet-like",
            num_classes=args.classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
        )
        print(f"[iterator-bench] data ready ({time.perf_counter() - t:.0f} s)", flush=True)
    train = root / "train"
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = run_iterator_bench(
        str(train),
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        crop=args.crop,
        seed=args.seed,
        tile=args.tile,
        progress=lambda s: print(f"[iterator-bench] {s}", flush=True),
    )
    result["load_before"] = None if load_before is None else round(load_before, 2)
    result["load_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    result["command"] = command
    result["environment"] = environment()
    result["data"] = _dataset_stats(train)
    result["notes"] = list(args.note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"iterator_bench_{args.device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = render_markdown(result)
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {stem}.json, {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
