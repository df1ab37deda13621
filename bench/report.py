"""Summaries and the markdown report of a benchmark run: pure functions over plain data.

A run is a list of per-epoch records (dicts) for every (policy, seed) pair. This module
turns them into one summary row per policy and renders ``report.md``; it imports neither
torch nor DALI, so it is cheap to test.

Definitions used in the table (all measured, never assumed):

* **samples used**: training samples drawn over the whole run (sum of the epochs' plans),
  mean over seeds.
* **wall-clock**: the sum of the epochs' training wall time (data loading + compute of
  every step; evaluation excluded: it is the same work for every policy), mean over seeds.
* **wall saving** = ``1 - wall / wall_full``; **sample saving** = ``1 - samples / samples_full``.
* **efficiency** = wall saving / sample saving: 1.0 means the time saved is exactly
  proportional to the samples skipped; below 1 some cost does not shrink with the plan
  (start-up, fixed per-epoch work, scoring). Undefined for the full-data baseline.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "RESULTS_VERSION",
    "environment",
    "group_runs",
    "summarize",
    "format_table",
    "render_report",
    "mean_std",
]

RESULTS_VERSION = 1
BASELINE = "full"


# ----------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module, fromlist=["__version__"])
    except Exception:  # a missing or broken optional package is reported as None
        return None
    return str(getattr(mod, "__version__", None))


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> Dict[str, Any]:
    """Versions, CPU and GPU of this machine, as plain JSON-able data."""
    gpu = None
    cuda = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
            cuda = torch.version.cuda
    except Exception:  # torch missing or CUDA broken: report "no GPU" rather than fail
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "dali": _version("nvidia.dali"),
        "orderdp_dali": _version("orderdp_dali"),
        "git_commit": _git_commit(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": affinity,
        "gpu": gpu,
        "cuda": cuda,
        "argv": list(sys.argv),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------- summaries


def mean_std(values: Iterable[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation (0 for one value), median, min, max and count; None values skipped."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def run_totals(epochs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Totals of one (policy, seed) run from the training loop's per-epoch records.

    Reads ``samples``, ``epoch_time`` (training time of the epoch, s), ``data_time`` (of it,
    time spent waiting for batches), ``val_top1`` / ``val_top5`` (%) and ``train_loss``.
    """
    top1 = [e.get("val_top1") for e in epochs if e.get("val_top1") is not None]
    wall = sum(float(e["epoch_time"]) for e in epochs)
    samples = sum(int(e["samples"]) for e in epochs)
    return {
        "epochs": len(epochs),
        "samples": samples,
        "wall_s": wall,
        "data_wait_s": sum(float(e.get("data_time") or 0.0) for e in epochs),
        "images_per_s": samples / wall if wall > 0 else None,
        "best_top1": max(top1) if top1 else None,
        "final_top1": top1[-1] if top1 else None,
        "final_top5": epochs[-1].get("val_top5") if epochs else None,
        "final_train_loss": epochs[-1].get("train_loss") if epochs else None,
    }


def group_runs(runs: Sequence[Mapping[str, Any]]) -> Dict[str, List[Mapping[str, Any]]]:
    """Runs by policy, policies in first-seen order."""
    out: Dict[str, List[Mapping[str, Any]]] = {}
    for r in runs:
        out.setdefault(r["policy"], []).append(r)
    return out


def _saving(value: Optional[float], baseline: Optional[float]) -> Optional[float]:
    if value is None or not baseline:
        return None
    return 1.0 - value / baseline


def summarize(runs: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> List[Dict[str, Any]]:
    """One row per policy: means (and spread) over seeds, savings and efficiency vs ``baseline``.

    Each run is ``{"policy", "seed", "totals": run_totals(...)}``. Savings compare the
    policy's seed-mean samples and wall-clock with the baseline's seed means. Efficiency is
    None where the sample saving is zero (the baseline) or either figure is missing.
    """
    groups = group_runs(runs)
    rows: List[Dict[str, Any]] = []
    for policy, rs in groups.items():
        t = [r["totals"] for r in rs]
        rows.append(
            {
                "policy": policy,
                "seeds": [r["seed"] for r in rs],
                "samples": mean_std(x["samples"] for x in t),
                "wall_s": mean_std(x["wall_s"] for x in t),
                "data_wait_s": mean_std(x["data_wait_s"] for x in t),
                "cpu_s": mean_std(x.get("cpu_s") for x in t),
                "best_top1": mean_std(x["best_top1"] for x in t),
                "final_top1": mean_std(x["final_top1"] for x in t),
                "final_train_loss": mean_std(x["final_train_loss"] for x in t),
            }
        )
    base = next((r for r in rows if r["policy"] == baseline), None)
    for r in rows:
        if base is None:
            r["wall_saving"] = r["sample_saving"] = r["efficiency"] = None
            continue
        r["wall_saving"] = _saving(r["wall_s"]["mean"], base["wall_s"]["mean"])
        r["sample_saving"] = _saving(r["samples"]["mean"], base["samples"]["mean"])
        ws, ss = r["wall_saving"], r["sample_saving"]
        r["efficiency"] = ws / ss if ws is not None and ss and abs(ss) > 1e-12 else None
    return rows


# ----------------------------------------------------------------------------- rendering


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f}%"


def _num(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def busy_note(results: Mapping[str, Any]) -> Optional[str]:
    """A warning when other work loaded the machine during the runs (load average > usable CPUs)."""
    cpus = results.get("environment", {}).get("cpu_usable") or 1
    loads = [x for r in results.get("runs", []) for x in (r.get("load_before"), r.get("load_after")) if x is not None]
    if not loads or max(loads) <= cpus:
        return None
    return (
        f"The machine was busy during the runs (1-minute load average up to {max(loads):.1f} on {cpus} usable CPUs): "
        "other processes competed for the CPUs, so wall-clock figures carry that noise. The whole-run CPU time "
        "in the table of runs is less affected."
    )


def _acc(stat: Mapping[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    if stat["n"] > 1:
        return f"{stat['mean']:.2f} ± {stat['std']:.2f}"
    return f"{stat['mean']:.2f}"


def _secs(stat: Mapping[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    if stat["n"] > 1:
        return f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    return f"{stat['mean']:.1f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's markdown table (one row per policy)."""
    head = (
        "| policy | seeds | samples used | wall-clock (s) | wall saving vs full | sample saving vs full "
        "| efficiency | best top-1 (%) | final top-1 (%) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        eff = "n/a" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
        lines.append(
            f"| {r['policy']} | {len(r['seeds'])} | {r['samples']['mean']:.0f} | {_secs(r['wall_s'])} "
            f"| {_pct(r['wall_saving'])} | {_pct(r['sample_saving'])} | {eff} "
            f"| {_acc(r['best_top1'])} | {_acc(r['final_top1'])} |"
        )
    return "\n".join(lines)


def _env_lines(env: Mapping[str, Any]) -> List[str]:
    return [
        f"- machine: {env.get('cpu_model')} ({env.get('cpu_usable')} usable CPUs), GPU: {env.get('gpu') or 'none'}",
        f"- versions: python {env.get('python')}, torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
        f"DALI {env.get('dali')}, numpy {env.get('numpy')}, orderdp-dali {env.get('orderdp_dali')} "
        f"(git {env.get('git_commit')})",
    ]


def _loader_section(loader: Mapping[str, Any]) -> List[str]:
    lines = ["", "## Loader only (no model)", ""]
    lines.append(
        f"{loader['samples']} planned samples of {loader['dataset_size']}, batch {loader['batch_size']}, "
        f"{loader['workers']} CPU workers, DALI device {loader['device']}; "
        f"{loader['repeats']} interleaved repetitions after {loader['warmup']} warm-up, median."
    )
    lines += [
        "",
        "| loader | images/s (median) | min | max | CPU ms per image |",
        "|---|---|---|---|---|",
    ]
    for name, s in loader["loaders"].items():
        cpu = s.get("cpu_ms_per_image")
        lines.append(
            f"| {name} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} "
            f"| {'n/a' if cpu is None else f'{cpu:.2f}'} |"
        )
    if loader.get("ratios"):
        lines += ["", "| ratio | images/s (median of per-round ratios) | images per CPU-second |", "|---|---|---|"]
        for k, v in loader["ratios"].items():
            c = (loader.get("cpu_ratios") or {}).get(k)
            lines.append(f"| {k} | {v:.3f} | {'n/a' if c is None else f'{c:.3f}'} |")
    return lines


def format_steady_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Savings with the first epoch left out (it holds the one-off start-up: model, allocator, caches)."""
    lines = [
        "| policy | samples (epochs 2..E) | wall-clock (s) | wall saving | sample saving | efficiency "
        "| data wait (s) |",
        "|" + "---|" * 7,
    ]
    for r in rows:
        eff = "n/a" if r["efficiency"] is None else f"{r['efficiency']:.2f}"
        lines.append(
            f"| {r['policy']} | {r['samples']['mean']:.0f} | {_secs(r['wall_s'])} | {_pct(r['wall_saving'])} "
            f"| {_pct(r['sample_saving'])} | {eff} | {_secs(r['data_wait_s'])} |"
        )
    return "\n".join(lines)


def format_seed_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Every (policy, seed) run: its own samples, wall-clock and accuracy."""
    lines = [
        "| policy | seed | run order | samples | wall-clock (s) | data wait (s) | whole run: wall (s) "
        "| whole run: CPU (s) | load avg before/after | best top-1 (%) | final top-1 (%) |"
    ]
    lines.append("|" + "---|" * 11)
    for r in sorted(runs, key=lambda r: (r["policy"], r["seed"])):
        t = r["totals"]
        b = "n/a" if t["best_top1"] is None else f"{t['best_top1']:.2f}"
        f = "n/a" if t["final_top1"] is None else f"{t['final_top1']:.2f}"
        load = "/".join("n/a" if x is None else f"{x:.1f}" for x in (r.get("load_before"), r.get("load_after")))
        lines.append(
            f"| {r['policy']} | {r['seed']} | {r.get('order', 0) + 1} | {t['samples']} | {t['wall_s']:.1f} "
            f"| {t['data_wait_s']:.1f} | {_num(r.get('run_wall_s'))} | {_num(r.get('cpu_s'))} | {load} | {b} | {f} |"
        )
    return "\n".join(lines)


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md`` for a results.json dictionary."""
    cfg = results["config"]
    lines = [f"# Benchmark: {results['name']}", ""]
    lines.append(f"Command: `{results['command']}`")
    lines.append("")
    lines += _env_lines(results["environment"])
    ds = results.get("dataset", {})
    lines.append(
        f"- data: {ds.get('train_root')} ({ds.get('train_size')} train / {ds.get('val_size')} val images"
        + (f"; generated: {json.dumps(ds['generated'], sort_keys=True)}" if ds.get("generated") else "")
        + ")"
    )
    rows = results.get("summary") or []
    if rows:
        lines += [
            f"- recipe: {json.dumps(results.get('train_settings', {}), sort_keys=True)}",
            "- policies: "
            + "; ".join(f"{p} {json.dumps(v, sort_keys=True)}" for p, v in cfg["policies"].items())
            + f"; seeds: {cfg.get('seeds')}",
            "",
            "## Policies",
            "",
            format_table(rows),
            "",
            "Wall-clock = sum of the epochs' training time as the training loop measures it (every step's "
            "data wait + compute; validation excluded, the first epoch includes the one-off start-up), "
            "mean over seeds (± sample std). Samples used = samples trained over all epochs. "
            "Savings are against the full-data mean; efficiency = wall saving / sample saving "
            "(1.0: time shrinks exactly with the samples skipped). Accuracy = validation top-1 (%), "
            "mean ± std over seeds; best = best epoch, final = last epoch.",
        ]
        steady = results.get("steady_summary") or []
        if steady:
            lines += [
                "",
                "### Without the first epoch (steady state)",
                "",
                format_steady_table(steady),
            ]
        if results.get("runs"):
            lines += [
                "",
                "### Every run",
                "",
                format_seed_table(results["runs"]),
                "",
                "Whole run = the full `run_training` call (set-up, DALI start-up, training and validation); "
                "CPU = CPU seconds of this process, DALI's threads included.",
            ]
        note = busy_note(results)
        if note:
            lines += ["", f"**Note:** {note}"]
        if results.get("warmup"):
            lines += [
                "",
                f"An untimed 1-epoch warm-up run ({results['warmup']['seconds']:.1f} s) preceded the timed runs; "
                "policies ran one after another in one process, the order rotating with the seed.",
            ]
    if results.get("loader"):
        lines += _loader_section(results["loader"])
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if results.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(lines) + "\n"
