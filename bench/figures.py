"""The figures of a benchmark run: pure functions over plain data, no torch or DALI.

A run is the list of per-epoch records (dicts) of one (policy, seed) pair, as the training
loop logs them. This module turns them into one row per policy and fits the epoch cost;
:mod:`orderdp_dali.bench.report` renders them.

Definitions (all measured, never assumed), for a policy P against full data F, for every
seed s and epoch e that both ran side by side (the policies take turns epoch by epoch):

* per-epoch **sample saving** ``1 - N_P(s,e) / N_F(s,e)`` and **wall saving**
  ``1 - W_P(s,e) / W_F(s,e)``, where N is the epoch's samples and W its training wall time
  (data wait + compute; validation excluded: the same work for every policy);
* per-epoch **efficiency** = wall saving / sample saving (1.0: time shrinks exactly with
  the samples skipped), defined only where the sample saving is at least
  :data:`MIN_SAMPLE_SAVING` (an epoch that skips nothing, like InfoBatch's annealing
  epochs, has nothing to be efficient about: its wall saving is noise divided by ~0);
  **CPU efficiency** likewise from the epoch's CPU seconds;
* a policy's figure is the **median** of its per-epoch figures over seeds and epochs, with
  the **spread** (interquartile range, and min-max) beside it; the first epoch of every run
  is left out when there are more (it carries the run's start-up: pipelines, allocator);
* a comparison is **flagged** when the interquartile range of its per-epoch wall savings
  is wider than their median: the noise is larger than the effect;
* the **fit** ``epoch time = a + b x samples`` (least squares over every policy's epochs
  after the first) splits a fixed cost per epoch ``a`` (the next plan's selection and the
  pass's start on the run's one pipeline, first-batch latency, partial last batch) from a
  cost per sample ``b``. With it, a pruned epoch keeping a
  fraction k of N samples saves ``b N (1 - k)`` of ``a + b N``: the efficiency the fit
  projects at epoch size N is ``b N / (a + b N)`` for any k (ImageNet:
  1,281,167 samples over 8 ranks).

Totals (samples used, wall-clock = sum of the epochs' training time, CPU seconds) are
means over seeds.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "BASELINE",
    "IMAGENET_RANKS",
    "IMAGENET_TRAIN",
    "MIN_SAMPLE_SAVING",
    "fit_epoch_cost",
    "group_runs",
    "mean_std",
    "paired_epochs",
    "planned_epochs",
    "projected_efficiency",
    "run_totals",
    "spread",
    "summarize",
]

BASELINE = "full"
MIN_SAMPLE_SAVING = 0.05
IMAGENET_TRAIN = 1_281_167
IMAGENET_RANKS = 8


# ----------------------------------------------------------------------------- statistics


def _clean(values: Iterable[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def spread(values: Iterable[Optional[float]]) -> Dict[str, Any]:
    """Median, quartiles (linear interpolation), min, max and count; None values skipped."""
    xs = _clean(values)
    if not xs:
        return {"median": None, "q25": None, "q75": None, "min": None, "max": None, "n": 0}
    q25, q50, q75 = np.percentile(np.asarray(xs), [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "min": min(xs), "max": max(xs), "n": len(xs)}


def mean_std(values: Iterable[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation (0 for one value), median, min, max and count; None values skipped."""
    xs = _clean(values)
    if not xs:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    m = sum(xs) / len(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ----------------------------------------------------------------------------- per run, per policy


def run_totals(epochs: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Totals of one (policy, seed) run from the training loop's per-epoch records."""
    top1 = [e.get("val_top1") for e in epochs if e.get("val_top1") is not None]
    wall = sum(float(e["epoch_time"]) for e in epochs)
    samples = sum(int(e["samples"]) for e in epochs)
    cpu = [e.get("cpu_time") for e in epochs]
    return {
        "epochs": len(epochs),
        "samples": samples,
        "wall_s": wall,
        "cpu_s": None if any(c is None for c in cpu) else sum(float(c) for c in cpu),
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


def _first_timed_epoch(runs: Sequence[Mapping[str, Any]]) -> int:
    """1 when every run has more than one epoch (epoch 0 carries start-up), else 0."""
    return 1 if runs and min(len(r["epochs"]) for r in runs) > 1 else 0


def _ratio_saving(x: Optional[float], base: Optional[float]) -> Optional[float]:
    return None if x is None or not base else 1.0 - float(x) / float(base)


def planned_epochs(run: Mapping[str, Any]) -> int:
    """The epochs a run was configured for (its records may stop short of them)."""
    configured = ((run.get("config") or {}).get("train") or {}).get("epochs")
    return int(configured) if configured is not None else len(run["epochs"])


def paired_epochs(
    runs: Sequence[Mapping[str, Any]], baseline: str = BASELINE
) -> Dict[str, List[Dict[str, Any]]]:
    """Entry -> one dict per (seed, epoch) it shares with the baseline (first epoch left out
    when runs have more): savings, efficiency (None where the sample saving is below
    :data:`MIN_SAMPLE_SAVING`) and CPU efficiency. Entries configured for another number of
    epochs than the baseline are not paired (their schedules differ)."""
    skip = _first_timed_epoch(runs)
    base = {r["seed"]: {e["epoch"]: e for e in r["epochs"]} for r in runs if r["policy"] == baseline}
    base_epochs = {r["seed"]: planned_epochs(r) for r in runs if r["policy"] == baseline}
    out: Dict[str, List[Dict[str, Any]]] = {}
    for r in runs:
        if r["policy"] == baseline or r["seed"] not in base or planned_epochs(r) != base_epochs[r["seed"]]:
            continue  # another epoch count (another schedule): compared on totals, not epoch by epoch
        pairs = out.setdefault(r["policy"], [])
        for e in r["epochs"]:
            f = base[r["seed"]].get(e["epoch"])
            if f is None or e["epoch"] < skip:
                continue
            ss = _ratio_saving(e["samples"], f["samples"])
            ws = _ratio_saving(e["epoch_time"], f["epoch_time"])
            cs = _ratio_saving(e.get("cpu_time"), f.get("cpu_time"))
            counts = ss is not None and ss >= MIN_SAMPLE_SAVING
            pairs.append({
                "seed": r["seed"],
                "epoch": e["epoch"],
                "sample_saving": ss,
                "wall_saving": ws,
                "cpu_saving": cs,
                "efficiency": ws / ss if counts and ws is not None else None,
                "cpu_efficiency": cs / ss if counts and cs is not None else None,
            })
    return out


def summarize(runs: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> List[Dict[str, Any]]:
    """One row per policy: totals over seeds (mean, std) and the paired per-epoch figures.

    Each run is ``{"policy", "seed", "epochs": [records]}``. The baseline's row has no
    paired figures (None).
    """
    pairs = paired_epochs(runs, baseline)
    rows: List[Dict[str, Any]] = []
    for policy, rs in group_runs(runs).items():
        t = [run_totals(r["epochs"]) for r in rs]
        row: Dict[str, Any] = {
            "policy": policy,
            "seeds": [r["seed"] for r in rs],
            "samples": mean_std(x["samples"] for x in t),
            "wall_s": mean_std(x["wall_s"] for x in t),
            "cpu_s": mean_std(x["cpu_s"] for x in t),
            "data_wait_s": mean_std(x["data_wait_s"] for x in t),
            "best_top1": mean_std(x["best_top1"] for x in t),
            "final_top1": mean_std(x["final_top1"] for x in t),
            "final_train_loss": mean_std(x["final_train_loss"] for x in t),
            "paired": None,
            "noisy": None,
        }
        ps = pairs.get(policy)
        if ps:
            counted = [p for p in ps if p["efficiency"] is not None]
            paired = {
                "sample_saving": spread(p["sample_saving"] for p in ps),
                "wall_saving": spread(p["wall_saving"] for p in counted),
                "efficiency": spread(p["efficiency"] for p in counted),
                "cpu_efficiency": spread(p["cpu_efficiency"] for p in counted),
                "epochs_paired": len(ps),
                "epochs_counted": len(counted),
            }
            ws = paired["wall_saving"]
            row["paired"] = paired
            row["noisy"] = None if ws["n"] == 0 else (ws["q75"] - ws["q25"]) > abs(ws["median"])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- fixed and per-sample cost


def _per_rank_samples(e: Mapping[str, Any]) -> float:
    return float(e["samples"]) / max(1, int(e.get("world_size") or 1))


def fit_epoch_cost(runs: Sequence[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """Least-squares ``epoch_time = a + b * samples_per_rank`` over every run's epochs after the
    first (all epochs when runs have one). None when fewer than 3 points or one epoch size.

    Also ``startup_s``: the median over runs of the first epoch's excess over the fit (what a
    run's start pays once, when runs have more than one epoch).
    """
    skip = _first_timed_epoch(runs)
    pts = [(_per_rank_samples(e), float(e["epoch_time"])) for r in runs for e in r["epochs"] if e["epoch"] >= skip]
    if len(pts) < 3 or len({x for x, _ in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else None
    startup = None
    if skip:
        firsts = [float(e["epoch_time"]) - (a + b * _per_rank_samples(e))
                  for r in runs for e in r["epochs"] if e["epoch"] == 0]
        startup = statistics.median(firsts) if firsts else None
    return {
        "a_s": float(a),
        "b_s_per_sample": float(b),
        "r2": r2,
        "points": len(pts),
        "samples_range": [float(x.min()), float(x.max())],
        "startup_s": startup,
        "imagenet_samples_per_rank": IMAGENET_TRAIN / IMAGENET_RANKS,
        "imagenet_efficiency": projected_efficiency(float(a), float(b), IMAGENET_TRAIN / IMAGENET_RANKS),
    }


def projected_efficiency(a: float, b: float, samples: float) -> Optional[float]:
    """Efficiency of any pruned epoch at epoch size ``samples`` if time = a + b x samples:
    ``b N / (a + b N)`` (None where that time is not positive)."""
    total = a + b * samples
    return None if total <= 0 else b * samples / total
