"""What progressive resizing saves in the input pipeline: epoch time of one plan at two crop sizes.

::

    python -m orderdp_dali.bench.resolution_speed                  # generates 1,604 JPEGs on first use
    python -m orderdp_dali.bench.resolution_speed --out bench/results/resolution_speed

Three loaders read the *same* plan (an OrderDP plan keeping 60%) through the real pipeline
(file read, decode with random-resized crop, resize, flip, normalise; CHW float32) of
:class:`~orderdp_dali.iterator.DALIPlanIterator`, on DALI's CPU backend unless ``--device gpu``:

* ``fed-<small>`` and ``fed-<large>``: the crop fed with every batch, as progressive resizing
  does (``resolution=``), at ``--small`` and ``--large`` pixels;
* ``fixed-<large>``: the pipeline config's fixed crop at ``--large`` (no size input): what a
  run without progressive resizing runs, to show that feeding the size costs nothing.

Each round runs one epoch of every loader, the order rotating, after an untimed warm-up
round (:func:`~orderdp_dali.bench.loader_timing.compare`); the figures are medians of the
per-round ratios, from wall time and from CPU seconds (steadier on a shared machine). The
model's share of the saving (about ``(large / small)^2`` fewer FLOPs for a ResNet) is not
measured here: only decode + augment.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from orderdp_dali.bench.figures import spread
from orderdp_dali.bench.loader_timing import compare
from orderdp_dali.bench.machine import environment, load_average, usable_cpus
from orderdp_dali.bench.outputs import train_folder, write_results
from orderdp_dali.bench.plan_loader import DaliPlanLoader, orderdp_plan
from orderdp_dali.plan import EpochPlan

__all__ = ["DEFAULT_DATA", "measure_resolutions", "render_markdown", "get_args_parser", "main"]

# imagenet-like JPEGs (about ImageNet's sizes and bytes), few enough that a run takes about a minute on 2 cores
DEFAULT_DATA = {"out_dir": "data/bench_resolution", "mode": "imagenet-like", "num_classes": 4,
                "train_per_class": 400, "val_per_class": 1, "seed": 0}


def _ratios(a: Mapping[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
    """Per-round speed-ups of ``a`` over ``b``: wall (``b``'s epoch time / ``a``'s) and CPU seconds
    (``None`` for a round too short for the CPU clock's ticks)."""
    wall = [tb / ta if ta > 0 else None for ta, tb in zip(a["seconds"], b["seconds"])]
    cpu = [tb / ta if ta > 0 else None for ta, tb in zip(a["cpu_seconds"], b["cpu_seconds"])]
    return {"wall": spread(wall), "cpu": spread(cpu), "wall_per_round": wall, "cpu_per_round": cpu}


def measure_resolutions(
    train_root: str,
    *,
    small: int = 128,
    large: int = 224,
    batch_size: int = 64,
    workers: Optional[int] = None,
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 5,
    seed: int = 0,
    progress: Any = None,
) -> Dict[str, Any]:
    """Epoch times of one plan at ``small`` and ``large`` crops (fed per batch) and at the fixed ``large`` crop.

    Returns:
        ``{"loaders": compare()'s per-loader figures, "speedup": fed-large time / fed-small time,
        "fed_vs_fixed": fixed-large time / fed-large time (about 1: feeding sizes is free), ...}``.
    """
    from orderdp_dali.data.folder import SampleIndex
    from orderdp_dali.pipelines import ImagePipelineConfig

    if not 0 < small < large:
        raise ValueError(f"need 0 < small < large, got small={small}, large={large}")
    index = SampleIndex.scan(train_root)
    plan: EpochPlan = orderdp_plan(len(index), seed=seed)
    workers = workers or usable_cpus()
    common = dict(batch_size=batch_size, workers=workers, device=device, seed=seed)
    names = {"small": f"fed-{small}", "large": f"fed-{large}", "fixed": f"fixed-{large}"}
    loaders = {
        names["small"]: DaliPlanLoader(index, plan, resolution=lambda epoch: small, **common),
        names["large"]: DaliPlanLoader(index, plan, resolution=lambda epoch: large, **common),
        names["fixed"]: DaliPlanLoader(index, plan, pipeline_config=ImagePipelineConfig(crop=large), **common),
    }
    try:
        timed = compare(loaders, warmup=warmup, repeats=repeats, progress=progress)
    finally:
        for loader in loaders.values():
            loader.close()
    return {
        "train_root": str(train_root),
        "device": device,
        "samples": len(index),
        "planned": len(plan),
        "batch_size": batch_size,
        "workers": workers,
        "warmup": warmup,
        "repeats": repeats,
        "small": small,
        "large": large,
        "loaders": timed,
        "speedup": _ratios(timed[names["small"]], timed[names["large"]]),
        "fed_vs_fixed": _ratios(timed[names["large"]], timed[names["fixed"]]),
    }


def _row(figure: str, stat: Mapping[str, Any]) -> str:
    cells = ["n/a" if stat[k] is None else f"{stat[k]:.2f}x" for k in ("median", "min", "max")]
    return f"| {figure} | {' | '.join(cells)} |"


def render_markdown(result: Mapping[str, Any]) -> str:
    """A markdown summary of one :func:`measure_resolutions` result (with its environment)."""
    env = result["environment"]
    small, large = result["small"], result["large"]
    s, f = result["speedup"], result["fed_vs_fixed"]
    lines: List[str] = [
        f"# Epoch time at {small} vs {large} px ({result['device'].upper()}, decode + augment)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- machine: {env['cpu_model']}, {env['cpu_usable']} usable CPUs, GPU: {env.get('gpu') or 'none'}; "
        f"1-minute load average before/after: {result.get('load_before')}/{result.get('load_after')}",
        f"- versions: python {env['python']}, torch {env['torch']}, DALI {env['dali']} (git {env.get('git_commit')})",
        f"- data: {result['train_root']} ({result['samples']} imagenet-like JPEGs); one OrderDP plan of "
        f"{result['planned']} samples, batch {result['batch_size']}, {result['workers']} DALI threads; "
        f"{result['warmup']} warm-up round, {result['repeats']} timed rounds, order rotating",
        "",
        "| figure | median | min | max |",
        "| --- | --- | --- | --- |",
        _row(f"epoch time {large} px / {small} px (wall)", s["wall"]),
        _row("the same from CPU seconds", s["cpu"]),
        _row(f"epoch time fixed {large} px / fed {large} px (wall)", f["wall"]),
        _row("the same from CPU seconds", f["cpu"]),
        "",
        "| loader | median images/s | median epoch s | CPU ms / image |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in result["loaders"].items():
        lines.append(f"| {name} | {r['median']:.1f} | {r['median_seconds']:.2f} | {r['cpu_ms_per_image']:.2f} |")
    lines += ["", "Only the input pipeline is timed; the model's own saving at the smaller size comes on top."]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.resolution_speed",
                                description=__doc__.split("\n")[0])
    p.add_argument("--root", help="train split folder (<root>/<class>/*.JPEG); default: "
                   f"{DEFAULT_DATA['out_dir']}/train, generated on first use")
    p.add_argument("--small", type=int, default=128, help="the small crop (default: %(default)s)")
    p.add_argument("--large", type=int, default=224, help="the large crop (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DALI threads (default: all usable CPUs)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="DALI decoding: cpu or gpu (mixed)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for resolution_speed_<device>.json and .md")
    p.add_argument("--note", action="append", default=[], help="a line for the markdown's notes (repeatable)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    say = lambda s: print(f"[resolution] {s}", file=sys.stderr, flush=True)  # noqa: E731
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        print("resolution_speed: error: --repeats and --batch-size must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if not 0 < args.small < args.large:
        print(f"resolution_speed: error: need 0 < --small < --large, got {args.small} and {args.large}",
              file=sys.stderr)
        return 2
    train = train_folder(args.root, DEFAULT_DATA, say)
    load_before = load_average()
    result = measure_resolutions(str(train), small=args.small, large=args.large, batch_size=args.batch_size,
                                 workers=args.workers, device=args.device, warmup=args.warmup,
                                 repeats=args.repeats, seed=args.seed, progress=say)
    result.update(
        command="python -m orderdp_dali.bench.resolution_speed " + " ".join(shlex.quote(a) for a in argv_list),
        environment=environment(), load_before=load_before, load_after=load_average(), notes=list(args.note),
    )
    text = render_markdown(result)
    print(text)
    if args.out:
        write_results(args.out, "resolution_speed", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
