"""The benchmark's PNG plots (matplotlib, Agg backend: no display needed).

Each function takes the plain per-epoch records of a run (see :mod:`orderdp_dali.bench.figures`)
and writes one PNG. With several seeds a policy's curve is the mean over seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "plot_cumulative_wall",
    "plot_accuracy_vs_wall",
    "plot_samples_per_epoch",
    "plot_inclusion_probability",
    "plot_efficiency_vs_epoch_size",
    "plot_frontier",
    "write_all",
    "plot_ranking",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _by_policy(runs: Sequence[Mapping[str, Any]]) -> Dict[str, List[Mapping[str, Any]]]:
    out: Dict[str, List[Mapping[str, Any]]] = {}
    for r in runs:
        out.setdefault(r["policy"], []).append(r)
    return out


def _mean_curve(runs: Sequence[Mapping[str, Any]], key: str, cumulative: bool = False) -> np.ndarray:
    """Mean over seeds of a per-epoch field (truncated to the shortest run)."""
    length = min(len(r["epochs"]) for r in runs)
    rows = []
    for r in runs:
        vals = np.array(
            [np.nan if e.get(key) is None else float(e[key]) for e in r["epochs"][:length]], dtype=np.float64
        )
        rows.append(np.cumsum(vals) if cumulative else vals)
    return np.nanmean(np.vstack(rows), axis=0) if rows else np.empty(0)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_cumulative_wall(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Cumulative training wall-clock after each epoch, one line per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, rs in _by_policy(runs).items():
        y = _mean_curve(rs, "epoch_time", cumulative=True)
        ax.plot(np.arange(1, len(y) + 1), y, marker="o", label=policy)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cumulative training wall-clock (s)")
    ax.set_title("Wall-clock per policy")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_accuracy_vs_wall(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Validation top-1 against cumulative training wall-clock, one line per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, rs in _by_policy(runs).items():
        x = _mean_curve(rs, "epoch_time", cumulative=True)
        y = _mean_curve(rs, "val_top1")
        if np.all(np.isnan(y)):
            continue
        ax.plot(x, y, marker="o", label=policy)
    ax.set_xlabel("cumulative training wall-clock (s)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("Accuracy vs wall-clock")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_samples_per_epoch(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Training samples planned in each epoch, one line per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, rs in _by_policy(runs).items():
        y = _mean_curve(rs, "samples")
        ax.plot(np.arange(1, len(y) + 1), y, marker="o", label=policy)
    ax.set_xlabel("epoch")
    ax.set_ylabel("samples in the epoch's plan")
    ax.set_ylim(bottom=0)
    ax.set_title("Samples per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_inclusion_probability(n: int, s: int, q: int, path: Path, title: Optional[str] = None) -> Path:
    """OrderDP's exact inclusion probability pi_j against loss rank j (1 = largest loss)."""
    from orderdp_dali.policies import inclusion_probabilities

    pi = np.asarray(inclusion_probabilities(n, s, q), dtype=np.float64)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ranks = np.arange(1, n + 1)
    ax.plot(ranks, pi, label=f"OrderDP (s={s}, q={q})")
    ax.axhline(q / n, color="grey", ls="--", label=f"uniform, same budget ({q / n:.2f})")
    ax.set_xlabel("loss rank j (1 = highest loss)")
    ax.set_ylabel("inclusion probability")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or f"OrderDP inclusion probability, n={n} (sum = {pi.sum():.1f} = q)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_efficiency_vs_epoch_size(
    fit: Mapping[str, Any], summary: Sequence[Mapping[str, Any]], path: Path
) -> Path:
    """The efficiency the cost fit projects (``b N / (a + b N)``) against samples per rank and epoch,
    with each policy's measured median (and interquartile range) at its full-data epoch size."""
    from orderdp_dali.bench.figures import IMAGENET_RANKS, IMAGENET_TRAIN, projected_efficiency

    a, b = fit["a_s"], fit["b_s_per_sample"]
    imagenet = IMAGENET_TRAIN / IMAGENET_RANKS
    lo, hi = max(1.0, fit["samples_range"][1] / 20), max(imagenet * 5, fit["samples_range"][1] * 10)
    n = np.logspace(np.log10(lo), np.log10(hi), 200)
    eff = np.array([np.nan if (e := projected_efficiency(a, b, x)) is None else e for x in n])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, eff, color="k", label=f"fit: a={a:.3f} s, b={1e3 * b:.3f} ms/sample")
    full = max(fit["samples_range"])
    for row in summary:
        e = (row.get("paired") or {}).get("efficiency")
        if e and e["median"] is not None:
            ax.errorbar([full], [e["median"]], yerr=[[e["median"] - e["q25"]], [e["q75"] - e["median"]]],
                        fmt="o", capsize=3, label=f"{row['policy']} (measured, median and IQR)")
    ax.axvline(imagenet, color="grey", ls="--", label=f"ImageNet / {IMAGENET_RANKS} ranks ({imagenet:,.0f})")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("samples per rank and epoch (full data)")
    ax.set_ylabel("efficiency (wall saving / sample saving)")
    ax.set_title("Efficiency against epoch size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_frontier(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Final validation top-1 against total training wall-clock, one point per entry (mean over
    seeds, error bars one standard deviation each way): up and to the left is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for policy, rs in _by_policy(runs).items():
        walls = [sum(float(e["epoch_time"]) for e in r["epochs"]) for r in rs]
        finals = [next((float(e["val_top1"]) for e in reversed(r["epochs"]) if e.get("val_top1") is not None), np.nan)
                  for r in rs]
        if np.all(np.isnan(finals)):
            continue
        ax.errorbar(np.mean(walls), np.nanmean(finals), xerr=np.std(walls), yerr=np.nanstd(finals),
                    marker="o", capsize=3, linestyle="none", label=policy)
    ax.set_xlabel("total training wall-clock (s)")
    ax.set_ylabel("final validation top-1 (%)")
    ax.set_title("Accuracy for the time spent (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def write_all(
    runs: Sequence[Mapping[str, Any]],
    out_dir: Path,
    orderdp_sizes: Optional[Sequence[int]] = None,
    fit: Optional[Mapping[str, Any]] = None,
    summary: Sequence[Mapping[str, Any]] = (),
) -> List[str]:
    """All plots of a run into ``out_dir``; returns the file names written.

    Args:
        runs: ``[{"policy", "seed", "epochs": [records]}]``.
        out_dir: the run folder.
        orderdp_sizes: ``(n, s, q)`` of the OrderDP policy, for the inclusion plot.
        fit, summary: :func:`~orderdp_dali.bench.figures.fit_epoch_cost` and
            :func:`~orderdp_dali.bench.figures.summarize`, for the efficiency plot (skipped without a fit).
    """
    out_dir = Path(out_dir)
    written = [
        plot_cumulative_wall(runs, out_dir / "wall_clock.png"),
        plot_accuracy_vs_wall(runs, out_dir / "accuracy_vs_wall.png"),
        plot_samples_per_epoch(runs, out_dir / "samples_per_epoch.png"),
        plot_frontier(runs, out_dir / "frontier.png"),
    ]
    if orderdp_sizes is not None:
        n, s, q = orderdp_sizes
        written.append(plot_inclusion_probability(n, s, q, out_dir / "orderdp_inclusion.png"))
    if fit is not None:
        written.append(plot_efficiency_vs_epoch_size(fit, summary, out_dir / "efficiency_vs_epoch_size.png"))
    if any("ranking_score_ratio" in e for r in runs for e in r["epochs"]):  # a policy ranks by loss
        written.append(plot_ranking(runs, out_dir / "ranking.png"))
    return [p.name for p in written]


def plot_ranking(runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Whether the ranking ranks, per loss-ranked entry against the epoch (mean over seeds): the kept
    samples' mean stored score over a uniform draw's (left; 1 = chance) and the Spearman correlation of
    stored score and next loss (right; 0 = stale scores). See :mod:`orderdp_dali.ranking`."""
    import warnings

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for policy, rs in _by_policy(runs).items():
        if not any("ranking_score_ratio" in e for r in rs for e in r["epochs"]):
            continue  # not ranked by loss
        with warnings.catch_warnings():  # epochs without figures (the first) are NaN for every seed
            warnings.simplefilter("ignore", RuntimeWarning)
            ratio = _mean_curve(rs, "ranking_score_ratio")
            rho = _mean_curve(rs, "ranking_spearman")
        x = np.arange(1, len(ratio) + 1)
        left.plot(x, ratio, marker="o", label=policy)
        right.plot(x, rho, marker="o", label=policy)
    left.axhline(1.0, color="grey", ls="--", label="uniform draw (exact expectation)")
    right.axhline(0.0, color="grey", ls="--")
    left.set_ylabel("kept / uniform mean stored score")
    left.set_title("Does the plan keep high-loss samples?")
    right.set_ylabel("Spearman: stored score vs loss when trained")
    right.set_ylim(-1.05, 1.05)
    right.set_title("Do stored scores predict the next loss?")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
