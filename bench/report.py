"""The markdown report of a benchmark run (``report.md``) and its tables: pure functions over plain data.

The figures come from :mod:`~orderdp_dali.bench.figures` (savings, efficiency, the epoch-cost
fit; their definitions are there), :mod:`~orderdp_dali.bench.time_to_accuracy` and
:mod:`~orderdp_dali.bench.ranking_figures`; this module renders them, and re-exports their
names. It imports neither torch nor DALI, so it is cheap to test.
"""
from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Sequence

from orderdp_dali.bench.figures import (
    IMAGENET_RANKS,
    IMAGENET_TRAIN,
    MIN_SAMPLE_SAVING,
    fit_epoch_cost,
    mean_std,
    paired_epochs,
    planned_epochs,
    projected_efficiency,
    run_totals,
    spread,
    summarize,
)
from orderdp_dali.bench.ranking_figures import ranking_summary
from orderdp_dali.bench.time_to_accuracy import run_time_to_accuracy, time_to_accuracy

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
