"""Time to accuracy: how soon each entry reaches a target top-1, and its top-1 within wall-clock budgets.

Pure functions over the per-epoch records of runs (see :mod:`orderdp_dali.bench.figures`);
wall-clock is training time only, validation excluded.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from orderdp_dali.bench.figures import BASELINE, group_runs, mean_std, planned_epochs, run_totals

__all__ = ["run_time_to_accuracy", "time_to_accuracy"]


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
