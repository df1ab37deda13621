"""Whether the ranking ranks: the ranking figures of loss-ranked entries, summed up over seeds and epochs.

Pure functions over the per-epoch records of runs (the fields :mod:`orderdp_dali.ranking`
adds); :func:`orderdp_dali.bench.report.ranking_lines` renders them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

from orderdp_dali.bench.figures import group_runs, mean_std

__all__ = ["RANKING_RATIO", "RANKING_SPEARMAN", "ranking_summary"]

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
