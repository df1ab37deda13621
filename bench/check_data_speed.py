"""How fast ``orderdp-dali check-data`` goes: files/s of the header check and of ``--deep``.

Generates (or reuses) an ``imagenet-like`` folder (ImageNet-sized, ~110 KB JPEGs) and times
:func:`orderdp_dali.check_data.check_dataset` on it, with one worker and with ``--workers``::

    python -m orderdp_dali.bench.check_data_speed
    python -m orderdp_dali.bench.check_data_speed --root data/check_speed --images 2000 --json runs/check_speed.json

Method: one untimed header pass first (it also warms the page cache, so these are
warm-cache numbers: on cold network storage the header check is I/O-latency bound, which
is why it uses threads), then the median of ``--repeats`` timed passes per setting.
At ImageNet scale, files/s converts directly: 1,281,167 / rate = seconds for the train split.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from orderdp_dali.check_data import check_dataset
from orderdp_dali.make_data import make_dataset, read_manifest

__all__ = ["measure", "get_args_parser", "main"]

IMAGENET_TRAIN = 1_281_167


def measure(root: Path, deep: bool, workers: int, repeats: int) -> Dict[str, Any]:
    """Median files/s of ``repeats`` check passes (the dataset must be clean)."""
    rates: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        report = check_dataset(root, deep=deep, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        if not report.ok:
            raise RuntimeError(f"benchmark dataset {root} is not clean: {report.bad_files[:3]}")
        rates.append(report.num_files / seconds)
    rate = statistics.median(rates)
    return {
        "mode": "deep" if deep else "header",
        "workers": workers,
        "files": report.num_files,
        "files_per_s": rate,
        "min_files_per_s": min(rates),
        "max_files_per_s": max(rates),
        "imagenet_train_minutes": IMAGENET_TRAIN / rate / 60,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m orderdp_dali.bench.check_data_speed", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--root", default="data/check_data_speed", help="dataset folder, generated if missing (default: %(default)s)"
    )
    p.add_argument(
        "--images", type=int, default=1500, help="images in the dataset, train and val together (default: %(default)s)"
    )
    p.add_argument("--classes", type=int, default=10, help="classes (default: %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel workers to compare with 1 (default: all CPUs)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed passes per setting; the median is reported (default: %(default)s)"
    )
    p.add_argument("--force", action="store_true", help="regenerate the dataset even if a matching one exists")
    p.add_argument("--json", metavar="FILE", help="also write the results and their configuration as JSON")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    for name in ("images", "classes", "workers", "repeats"):
        if getattr(args, name) < 1:
            print(f"check_data_speed: error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    per_class = max(1, args.images // args.classes)
    val_per_class = max(1, per_class // 6)
    root = make_dataset(
        args.root, mode="imagenet-like", num_classes=args.classes, train_per_class=per_class - val_per_class,
        val_per_class=val_per_class, workers=args.workers, force=args.force, progress=True,
    )
    stats = (read_manifest(root) or {}).get("stats", {})
    check_dataset(root, workers=args.workers, progress=False)  # warm-up: page cache, imports

    settings = sorted({1, args.workers})
    results = [measure(root, deep, w, args.repeats) for deep in (False, True) for w in settings]

    print(f"check-data speed on {root}")
    print(f"  {stats.get('files')} imagenet-like JPEGs, mean {stats.get('mean_bytes', 0) / 1000:.1f} KB, "
          f"{stats.get('mean_width', 0):.0f} x {stats.get('mean_height', 0):.0f} px; "
          f"{os.cpu_count()} CPUs; warm page cache; median of {args.repeats}")
    print(f"  {'mode':<8} {'workers':>7} {'files/s':>10} {'ImageNet train (min)':>21}")
    for r in results:
        print(f"  {r['mode']:<8} {r['workers']:>7} {r['files_per_s']:>10.0f} {r['imagenet_train_minutes']:>21.1f}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: getattr(args, k) for k in ("root", "images", "classes", "workers", "repeats")}
        payload = {
            "config": config,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "dataset": stats,
            "results": results,
        }
        out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
