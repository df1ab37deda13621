"""Figures and the markdown report of a benchmark run: pure functions over plain data.

A run is the list of per-epoch records (dicts) of one (policy, seed) pair, as the training
loop logs them. This module turns them into one row per policy, fits the epoch cost and
renders ``report.md``; it imports neither torch nor DALI, so it is cheap to test.

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

import json
import math
import statistics
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "RESULTS_VERSION",
    "MIN_SAMPLE_SAVING",
    "IMAGENET_TRAIN",
    "IMAGENET_RANKS",
    "spread",
    "mean_std",
    "run_totals",
    "paired_epochs",
    "summarize",
    "planned_epochs",
    "run_time_to_accuracy",
    "time_to_accuracy",
    "format_time_to_accuracy",
    "fit_epoch_cost",
    "projected_efficiency",
    "format_table",
    "loader_lines",
    "render_report",
    "render_study",
    "ranking_summary",
    "ranking_lines",
]

RESULTS_VERSION = 2
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


# ----------------------------------------------------------------------------- time to accuracy


def run_time_to_accuracy(epochs: Sequence[Mapping[str, Any]], target: Optional[float],
                         budgets: Mapping[str, float]) -> Dict[str, Any]:
    """One run's time to ``target`` top-1 and its top-1 within each wall-clock budget.

    Wall-clock is training time only (the epochs' ``epoch_time``, validation excluded),
    counted to the end of the epoch whose validation first reaches ``target`` (None: never).
    The top-1 within a budget is that of the last validated epoch that ended inside it
    (None: none did); a run that ends sooner keeps its final top-1.
    """
    wall, reached = 0.0, None
    within: Dict[str, Optional[float]] = {k: None for k in budgets}
    for e in epochs:
        wall += float(e["epoch_time"])
        top1 = e.get("val_top1")
        if top1 is None:
            continue
        if reached is None and target is not None and top1 >= target:
            reached = wall
        for k, budget in budgets.items():
            if wall <= budget:
                within[k] = float(top1)
    return {"time_to_target_s": reached, "top1_within": within, "wall_s": wall}


def time_to_accuracy(runs: Sequence[Mapping[str, Any]], baseline: str = BASELINE,
                     target_top1: Optional[float] = None,
                     fractions: Sequence[float] = (0.4, 0.6)) -> Optional[Dict[str, Any]]:
    """Per entry, mean and spread over seeds: training wall-clock to first reach the target
    top-1, top-1 within ``fractions`` of the baseline's wall-clock, final top-1.

    The target is ``target_top1`` or, by default, the baseline's final top-1 (mean over
    seeds) minus 1 point. Budgets are fractions of the baseline's total training wall-clock
    (mean over seeds). None when there is neither a target nor a baseline to take it from.
    """
    base = [run_totals(r["epochs"]) for r in runs if r["policy"] == baseline]
    base_final = mean_std(t["final_top1"] for t in base)["mean"]
    base_wall = mean_std(t["wall_s"] for t in base)["mean"]
    target = target_top1 if target_top1 is not None else (None if base_final is None else base_final - 1.0)
    if target is None:
        return None
    budgets = {f"{round(100 * f)}%": f * base_wall for f in fractions} if base_wall else {}
    entries = []
    for name, rs in group_runs(runs).items():
        per_run = [run_time_to_accuracy(r["epochs"], target, budgets) for r in rs]
        entries.append({
            "policy": name,
            "seeds": [r["seed"] for r in rs],
            "epochs": planned_epochs(rs[0]),
            "reached": sum(t["time_to_target_s"] is not None for t in per_run),
            "time_to_target_s": mean_std(t["time_to_target_s"] for t in per_run),  # over the seeds that reached it
            "top1_within": {k: mean_std(t["top1_within"][k] for t in per_run) for k in budgets},
            "final_top1": mean_std(run_totals(r["epochs"])["final_top1"] for r in rs),
            "wall_s": mean_std(t["wall_s"] for t in per_run),
        })
    return {
        "target_top1": target,
        "target": "target_top1" if target_top1 is not None else f"{baseline} final top-1 - 1",
        "baseline_wall_s": base_wall,
        "budgets_s": budgets,
        "entries": entries,
    }


def format_time_to_accuracy(tta: Optional[Mapping[str, Any]]) -> List[str]:
    """The time-to-accuracy table (markdown lines)."""
    if not tta:
        return ["Time to accuracy: no target (set target_top1, or include a 'full' entry with validation)."]
    budgets = list(tta["budgets_s"])
    head = (f"| entry | epochs | wall-clock (s) | time to {tta['target_top1']:.1f}% top-1 (s) | reached "
            + "".join(f"| top-1 at {k} of full's wall-clock " for k in budgets) + "| final top-1 (%) |")
    lines = [head, "|" + "---|" * (6 + len(budgets))]
    for e in tta["entries"]:
        reached = f"{e['reached']}/{len(e['seeds'])}"
        ttt = _ms(e["time_to_target_s"]) if e["reached"] else "not reached"
        within = "".join(f"| {_ms(e['top1_within'][k], 2)} " for k in budgets)
        lines.append(f"| {e['policy']} | {e['epochs']} | {_ms(e['wall_s'])} | {ttt} | {reached} {within}"
                     f"| {_ms(e['final_top1'], 2)} |")
    lines += ["", f"Target: {tta['target_top1']:.2f}% top-1 ({tta['target']}). Wall-clock is training time "
              "(validation excluded), summed to the end of the epoch whose validation first reached the target, "
              "mean ± std over the seeds that reached it; top-1 at a budget is that of the last epoch ended "
              "within it (a run that ends sooner keeps its final top-1)"
              + (f"; full data's wall-clock: {tta['baseline_wall_s']:.1f} s." if tta.get("baseline_wall_s") else ".")]
    return lines


# ----------------------------------------------------------------------------- rendering


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f}%"


def _num(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ms(stat: Mapping[str, Any], digits: int = 1) -> str:
    """``mean ± std`` (std only with more than one value)."""
    if stat["mean"] is None:
        return "n/a"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _iqr(stat: Optional[Mapping[str, Any]], pct: bool = False) -> str:
    if not stat or stat["median"] is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}")
    return f"{f(stat['q25'])} .. {f(stat['q75'])}"


def _med(stat: Optional[Mapping[str, Any]], pct: bool = False) -> str:
    if not stat or stat["median"] is None:
        return "n/a"
    return _pct(stat["median"]) if pct else f"{stat['median']:.2f}"


TABLE_HEAD = (
    "| policy | seeds | samples used | wall-clock (s) | CPU (s) | sample saving | wall saving | efficiency "
    "| efficiency IQR | min .. max | epochs | CPU efficiency | noisy | best top-1 (%) | final top-1 (%) |"
)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The report's markdown table (one row per policy)."""
    lines = [TABLE_HEAD, "|" + "---|" * 15]
    for r in rows:
        p = r["paired"] or {}
        eff = p.get("efficiency")
        minmax = "n/a" if not eff or eff["median"] is None else f"{eff['min']:.2f} .. {eff['max']:.2f}"
        epochs = "n/a" if not p else f"{p['epochs_counted']}/{p['epochs_paired']}"
        noisy = "n/a" if r["noisy"] is None else ("**yes**" if r["noisy"] else "no")
        lines.append(
            f"| {r['policy']} | {len(r['seeds'])} | {r['samples']['mean']:.0f} | {_ms(r['wall_s'])} "
            f"| {_ms(r['cpu_s'])} | {_med(p.get('sample_saving'), True)} | {_med(p.get('wall_saving'), True)} "
            f"| {_med(eff)} | {_iqr(eff)} | {minmax} | {epochs} | {_med(p.get('cpu_efficiency'))} | {noisy} "
            f"| {_ms(r['best_top1'], 2)} | {_ms(r['final_top1'], 2)} |"
        )
    return "\n".join(lines)


def format_fit(fit: Optional[Mapping[str, Any]]) -> List[str]:
    if fit is None:
        return ["Not enough distinct epoch sizes to fit (needs a pruning policy beside full data)."]
    lines = [
        f"epoch time = **{fit['a_s']:.3f} s** + **{1e3 * fit['b_s_per_sample']:.3f} ms** x samples per rank "
        f"(R^2 = {_num(fit['r2'], 3)}, {fit['points']} epochs of {fit['samples_range'][0]:.0f} to "
        f"{fit['samples_range'][1]:.0f} samples)."
    ]
    if fit.get("startup_s") is not None:
        lines.append(f"A run's first epoch took {fit['startup_s']:.2f} s more than the fit (median): its start-up.")
    eff = fit["imagenet_efficiency"]
    lines.append(
        f"Projected efficiency of a pruned ImageNet epoch ({IMAGENET_TRAIN:,} samples over {IMAGENET_RANKS} ranks "
        f"= {fit['imagenet_samples_per_rank']:,.0f} per rank): **{_num(eff, 3)}** (b N / (a + b N), for any "
        "kept fraction; same machine and recipe per sample)."
    )
    return lines


def busy_note(results: Mapping[str, Any]) -> Optional[str]:
    """A warning when other work loaded the machine during the runs (load average > usable CPUs)."""
    cpus = results.get("environment", {}).get("cpu_usable") or 1
    loads = [x for x in results.get("load_averages", []) if x is not None]
    if not loads or max(loads) <= cpus:
        return None
    return (
        f"The machine was busy during the runs (1-minute load average up to {max(loads):.1f} on {cpus} usable "
        "CPUs). The policies took turns epoch by epoch, so each paired figure compares epochs that ran under "
        "nearly the same load; the spread shows how much the load still moved them."
    )


def format_seed_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Every (policy, seed) run: its own samples, wall-clock, CPU and accuracy."""
    lines = [
        "| policy | seed | samples | wall-clock (s) | data wait (s) | CPU (s) | validation (s) "
        "| best top-1 (%) | final top-1 (%) |",
        "|" + "---|" * 9,
    ]
    for r in sorted(runs, key=lambda r: (r["policy"], r["seed"])):
        t = run_totals(r["epochs"])
        val = sum(float(e.get("val_time") or 0.0) for e in r["epochs"])
        lines.append(
            f"| {r['policy']} | {r['seed']} | {t['samples']} | {t['wall_s']:.1f} | {t['data_wait_s']:.1f} "
            f"| {_num(t['cpu_s'])} | {val:.1f} | {_num(t['best_top1'], 2)} | {_num(t['final_top1'], 2)} |"
        )
    return "\n".join(lines)


def _env_lines(env: Mapping[str, Any]) -> List[str]:
    return [
        f"- machine: {env.get('cpu_model')} ({env.get('cpu_usable')} usable CPUs, {env.get('memory_gb')} GB), "
        f"GPU: {env.get('gpu') or 'none'}; 1-minute load average at the start: {env.get('load_average')}",
        f"- versions: python {env.get('python')}, torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
        f"DALI {env.get('dali')}, numpy {env.get('numpy')}, orderdp-dali {env.get('orderdp_dali')} "
        f"(git {env.get('git_commit')})",
    ]


# Goals of the loader comparison's figures: key -> (description, op, bound).
LOADER_FIGURES = {
    "a_pruned_time_ratio_over_kept": ("(a) pruned epoch time / full epoch time / kept fraction", "<=", 1.05),
    "b_plan_vs_dali_reader": ("(b) our iterator / DALI fn.readers.file (images/s)", ">=", 0.98),
    "c_dali_vs_torchvision": ("(c) DALI (our iterator) / torchvision DataLoader (images/s)", ">=", 1.8),
    "d_feed_plan_vs_dali_reader": ("(d) feeding only: our iterator / fn.readers.file (samples/s)", ">=", 0.7),
    "d_feed_plan_vs_per_sample": ("(d) feeding only: our iterator / per-sample worker processes", ">=", 2.5),
    "e_tar_vs_folder": ("(e) tar shards / class folders, our iterator (images/s)", ">=", 0.9),
    "e_feed_tar_vs_folder": ("(e) feeding only: tar shards / class folders (samples/s)", None, None),
}


def loader_lines(result: Mapping[str, Any]) -> List[str]:
    """Markdown of one loader comparison (:func:`orderdp_dali.bench.loader_compare.run_loader_comparison`)."""
    lines = [
        f"{result['samples']} planned samples of {result['dataset_size']} ({100 * result['kept_fraction']:.1f}% kept, "
        f"OrderDP r={result['orderdp']['random_len_ratio']}, t={result['orderdp']['top_q_ratio']}; each epoch runs "
        f"its plan {result['tile']} time(s)), batch {result['batch_size']}, crop {result['crop']}, "
        f"{result['workers']} CPU workers for every loader, DALI device {result['device']}; "
        f"{result['warmup']} untimed warm-up round(s), then {result['repeats']} rounds of one epoch per loader, "
        "the order rotating; the decoding loaders, then the feeding-only ones in rounds of their own.",
        "",
    ]
    figures = result.get("figures") or {}
    if figures:
        lines += ["| figure | measured (median of per-round ratios) | rounds min .. max | goal | | from CPU seconds |",
                  "|---|---|---|---|---|---|"]
        for key, value in figures.items():
            what, op, bound = LOADER_FIGURES[key]
            if op is None:  # reported beside the others, no goal
                goal, verdict = "-", "reported"
            else:
                met = value <= bound if op == "<=" else value >= bound
                goal, verdict = f"{op} {bound:g}", "met" if met else "**not met**"
            rounds = (result.get("per_round") or {}).get(key) or []
            rng = f"{min(rounds):.3f} .. {max(rounds):.3f}" if rounds else "n/a"
            cpu = (result.get("cpu_figures") or {}).get(key)
            lines.append(f"| {what} | {value:.3f} | {rng} | {goal} | {verdict} | {_num(cpu, 3)} |")
        lines.append("")
    lines += ["| loader | samples per epoch | images/s (median) | min | max | epoch s (median) | CPU ms per image |",
              "|---|---|---|---|---|---|---|"]
    for name, s in result["loaders"].items():
        lines.append(f"| {name} | {s['images']} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} "
                     f"| {s['median_seconds']:.2f} | {_num(s.get('cpu_ms_per_image'), 2)} |")
    start = result.get("pipeline_start")
    if start:
        lines += ["", f"Pipeline set-up, once per run (our iterator, median of {start['epochs']}): build + first "
                  f"scheduling {1000 * start['build_and_schedule_s']:.1f} ms, start to first batch "
                  f"{1000 * start['start_to_first_batch_s']:.1f} ms; outside the timed epochs."]
        if start.get("pass_start_s") is not None:
            lines += [f"Pass start per epoch on the built pipeline, when nothing started it early: reset + first "
                      f"scheduling {1000 * start['pass_start_s']:.1f} ms, start to first batch "
                      f"{1000 * start['pass_start_to_first_batch_s']:.1f} ms."]
    return lines


def render_report(results: Mapping[str, Any]) -> str:
    """``report.md`` for a results.json dictionary."""
    cfg = results["config"]
    lines = [f"# Benchmark: {results['name']}", "", f"Command: `{results['command']}`", ""]
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
            "The policies took turns epoch by epoch in one process (epoch e of every policy before epoch e+1 of "
            "any, the order rotating), each with its own model, optimizer and iterator. Savings, efficiency "
            "(wall saving / sample saving; 1.0: time shrinks exactly with the samples skipped) and CPU efficiency "
            "are medians of per-epoch ratios against the full-data epoch of the same seed and round, the first "
            "epoch left out; IQR = interquartile range; epochs = epochs counted / paired (an epoch that skips "
            f"under {100 * MIN_SAMPLE_SAVING:.0f}% of the samples is not counted: nothing to save). **noisy**: the "
            "IQR of the per-epoch wall savings is wider than their median. Samples, wall-clock (sum of the "
            "epochs' training time: data wait + compute, validation excluded) and CPU seconds are per run, mean "
            "± std over seeds. Accuracy: validation top-1, best and final epoch.",
            "",
            "## Time to accuracy",
            "",
        ]
        lines += format_time_to_accuracy(results.get("time_to_accuracy"))
        lines += ["", "## Fixed and per-sample cost", ""]
        lines += format_fit(results.get("fit"))
        if results.get("runs"):
            lines += ["", "### Every run", "", format_seed_table(results["runs"])]
        note = busy_note(results)
        if note:
            lines += ["", f"**Note:** {note}"]
        if results.get("warmup"):
            lines += ["", f"An untimed 1-epoch warm-up run ({results['warmup']['seconds']:.1f} s) preceded the "
                      "timed runs."]
    lines += ranking_lines(results.get("ranking"))
    if results.get("loader"):
        lines += ["", "## Loader comparison (no model)", ""] + loader_lines(results["loader"])
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    if results.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(lines) + "\n"


def render_study(results: Mapping[str, Any]) -> str:
    """``report.md`` of a study (a bench with ``tasks``): each task's tables and its full report."""
    lines = [f"# Study: {results['name']}", "", f"Command: `{results['command']}`", "",
             f"Total {results.get('total_s', 0):.0f} s. Each task ran as its own bench; its full report (every run, "
             "the fit, the plots) is in its folder.", ""]
    for task, sub in results["tasks"].items():
        lines += [f"## {task} ([full report]({task}/report.md))", ""]
        ds = sub.get("dataset", {})
        lines += [f"Data: {ds.get('train_size')} train / {ds.get('val_size')} val images; "
                  f"{sub['config']['training'].get('train', {}).get('epochs')} epochs; seeds {sub['config']['seeds']}; "
                  f"{sub.get('total_s', 0):.0f} s.", ""]
        if sub.get("summary"):
            lines += [format_table(sub["summary"]), ""]
            lines += format_time_to_accuracy(sub.get("time_to_accuracy")) + [""]
        lines += ranking_lines(sub.get("ranking"), heading="###")
        if "frontier.png" in (sub.get("plots") or []):
            lines += [f"![{task} frontier]({task}/frontier.png)", ""]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- whether the ranking ranks

RANKING_RATIO = "ranking_score_ratio"
RANKING_SPEARMAN = "ranking_spearman"


def _carries_ranking(runs: Sequence[Mapping[str, Any]]) -> bool:
    return any(RANKING_RATIO in e for r in runs for e in r["epochs"])


def ranking_summary(runs: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """results.json's ``ranking``: per loss-ranked entry, its ranking figures (:mod:`orderdp_dali.ranking`).

    Keyed by the runs' ``policy`` (the entry's name: one policy may run as several entries).
    Only entries whose records carry the fields (their policy ranks by loss) appear. Per entry:
    ``score_ratio`` (kept samples' mean stored score over a uniform draw's exact expectation)
    and ``spearman`` (stored score against the loss when next trained), each :func:`mean_std`
    over every (seed, epoch) that has the figure (epoch 0 has none: no stored scores yet);
    ``kept_unseen`` and ``uniform_unseen``, the never-scored samples kept per epoch and the
    count a uniform draw expects, likewise; ``records``: the (seed, epoch) records looked at; and
    ``epochs``: the four figures per epoch, over seeds.
    """
    def figures(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        return {
            "score_ratio": mean_std(e.get(RANKING_RATIO) for e in records),
            "spearman": mean_std(e.get(RANKING_SPEARMAN) for e in records),
            "kept_unseen": mean_std(e.get("ranking_kept_unseen") for e in records),
            "uniform_unseen": mean_std(e.get("ranking_uniform_unseen") for e in records),
        }

    out: Dict[str, Dict[str, Any]] = {}
    for policy, rs in group_runs(runs).items():
        if not _carries_ranking(rs):
            continue
        by_epoch: Dict[int, List[Mapping[str, Any]]] = {}
        for r in rs:
            for e in r["epochs"]:
                by_epoch.setdefault(int(e["epoch"]), []).append(e)
        out[policy] = {
            "seeds": [r["seed"] for r in rs],
            "records": sum(len(r["epochs"]) for r in rs),
            **figures([e for r in rs for e in r["epochs"]]),
            "epochs": [{"epoch": k, **figures(by_epoch[k])} for k in sorted(by_epoch)],
        }
    return out


def ranking_lines(ranking: Optional[Mapping[str, Mapping[str, Any]]], heading: str = "##") -> List[str]:
    """The report's section on whether the ranking ranks, under a ``heading``-level title (empty
    without loss-ranked entries)."""
    if not ranking:
        return []

    def span(stat: Mapping[str, Any]) -> str:
        return "n/a" if stat["mean"] is None else f"{stat['min']:.2f} .. {stat['max']:.2f}"

    lines = [
        "",
        f"{heading} Whether the ranking ranks",
        "",
        "| entry | kept / uniform score ratio | min .. max | Spearman, stored score vs next loss | min .. max "
        "| epochs with figures | unseen kept per epoch (uniform draw) |",
        "|" + "---|" * 7,
    ]
    for policy, s in ranking.items():
        lines.append(
            f"| {policy} | {_ms(s['score_ratio'], 2)} | {span(s['score_ratio'])} | {_ms(s['spearman'], 2)} "
            f"| {span(s['spearman'])} | {s['score_ratio']['n']} of {s['records']} "
            f"| {_num(s['kept_unseen']['mean'])} ({_num(s['uniform_unseen']['mean'])}) |"
        )
    lines += [
        "",
        "Per epoch of each entry whose policy ranks by loss (mean ± std over seeds and epochs; `ranking.png` per "
        "epoch). **Score ratio**: the mean stored score (most recent loss) of the samples the plan kept, over the "
        "mean a uniform draw of the same size from the same table has in expectation (exact, no random draw); 1.0 "
        "is chance. **Spearman**: rank correlation between a kept sample's stored score when the plan was chosen "
        "and its loss when trained in that epoch; near 0 the stored scores are stale and ranking by them ranks "
        "noise. Never-scored samples (they hold the initial score, not a loss) are left out of both; the last "
        "column counts those kept, with a uniform draw's expected count in brackets. An epoch without a scored "
        "kept sample (the first) has no figures.",
        "",
    ]
    return lines
