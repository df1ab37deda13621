"""The GPU check's pass marks: its measured figures against fixed thresholds, met or not met.

::

    python -m orderdp_dali.bench.gpu_thresholds --loader OUT/loader.json --bench OUT/bench_results.json

* the plan iterator against DALI's own ``fn.readers.file``, both decoding with ``mixed``:
  images/s ratio >= 0.95 (``loader.json`` of ``loader_compare``);
* training preprocessing (random-resized crop 224, batch 256) through the plan iterator:
  >= 8,000 images/s on one H200 (same file);
* ResNet-50 with AMP, OrderDP keeping 60%: its epoch time over full data's <= 0.65, from
  the medians of the epochs after the first (``results.json`` of ``orderdp-dali bench``).

A figure whose input is missing counts as not met. Exit status 0 only when all are met.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

__all__ = ["THRESHOLDS", "evaluate", "main"]

# key -> (description, op, bound)
THRESHOLDS = {
    "iterator_vs_reader": ("mixed-decode iterator / mixed-decode fn.readers.file, images/s", ">=", 0.95),
    "preprocessing_images_per_s": (
        "training preprocessing (random-resized crop 224, batch 256), images/s", ">=", 8000.0
    ),
    "orderdp_over_full_epoch": ("ResNet-50 AMP: OrderDP (60% kept) epoch time / full epoch time", "<=", 0.65),
}


def _median_steady_epoch(bench: Mapping[str, Any], policy: str) -> Optional[float]:
    times = [e["epoch_time"] for run in bench.get("runs", []) if run.get("policy") == policy for e in run["epochs"][1:]]
    return statistics.median(times) if times else None


def measured(loader: Optional[Mapping[str, Any]], bench: Optional[Mapping[str, Any]]) -> Dict[str, Optional[float]]:
    """The three figures from the loader comparison's and the bench's results (None where absent)."""
    figures: Dict[str, Optional[float]] = dict.fromkeys(THRESHOLDS)
    if loader:
        figures["iterator_vs_reader"] = loader.get("ratios", {}).get("dali-plan / dali-reader")
        plan = loader.get("loaders", {}).get("dali-plan")
        figures["preprocessing_images_per_s"] = None if plan is None else plan["median"]
    if bench:
        full, pruned = _median_steady_epoch(bench, "full"), _median_steady_epoch(bench, "orderdp")
        if full and pruned is not None:
            figures["orderdp_over_full_epoch"] = pruned / full
    return figures


def evaluate(figures: Mapping[str, Optional[float]]) -> List[Dict[str, Any]]:
    """One row per threshold: description, value, op, bound, met."""
    rows = []
    for key, (what, op, bound) in THRESHOLDS.items():
        value = figures.get(key)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        rows.append({"key": key, "what": what, "value": value, "op": op, "bound": bound, "met": met})
    return rows


def render(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| threshold | measured | goal | |", "|---|---|---|---|"]
    for r in rows:
        value = "missing" if r["value"] is None else f"{r['value']:.3f}" if r["value"] < 100 else f"{r['value']:.0f}"
        lines.append(f"| {r['what']} | {value} | {r['op']} {r['bound']:g} | {'met' if r['met'] else 'NOT MET'} |")
    return "\n".join(lines) + "\n"


def _read(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if not path or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        print(f"gpu_thresholds: cannot read {path}: {e}", file=sys.stderr)
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orderdp_dali.bench.gpu_thresholds", description=__doc__.split("\n")[0])
    p.add_argument("--loader", help="loader_compare's JSON (mixed decoding, batch 256)")
    p.add_argument("--bench", help="results.json of the ResNet-50 bench")
    p.add_argument("--out", help="also write the table here")
    args = p.parse_args(argv)
    rows = evaluate(measured(_read(args.loader), _read(args.bench)))
    text = render(rows)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
