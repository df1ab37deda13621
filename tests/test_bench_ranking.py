"""The bench's ranking section: results.json's summary, the report's lines and the plot, on hand-made runs."""
from __future__ import annotations

import warnings

import pytest

from orderdp_dali.bench import plots, report


def _epoch(epoch, ratio=None, rho=None, kept_unseen=None, uniform_unseen=None):
    e = {"epoch": epoch, "samples": 60, "epoch_time": 1.0, "cpu_time": 0.5, "data_time": 0.1, "val_top1": 50.0,
         "train_loss": 1.0}
    if kept_unseen is not None:  # a policy that ranks by loss: the fields are there, maybe None
        e.update(ranking_score_ratio=ratio, ranking_spearman=rho, ranking_kept_unseen=kept_unseen,
                 ranking_uniform_unseen=uniform_unseen, ranking_spearman_pairs=0)
    return e


def _runs():
    plain = [_epoch(k) for k in range(3)]
    return [
        {"policy": "full", "seed": 0, "epochs": plain},
        {"policy": "orderdp", "seed": 0,
         "epochs": [_epoch(0, None, None, 6, 6.0), _epoch(1, 1.5, 0.2, 2, 3.0), _epoch(2, 1.3, 0.4, 0, 1.0)]},
        {"policy": "uniform", "seed": 0, "epochs": plain},
        {"policy": "orderdp", "seed": 1,  # epoch 2: a constant side, no correlation
         "epochs": [_epoch(0, None, None, 6, 6.0), _epoch(1, 1.7, 0.0, 4, 3.0), _epoch(2, 1.1, None, 1, 1.0)]},
    ]


def test_ranking_summary_hand_computed():
    summary = report.ranking_summary(_runs())
    assert list(summary) == ["orderdp"]  # full and uniform do not rank by loss: no fields, no entry
    o = summary["orderdp"]
    assert o["seeds"] == [0, 1] and o["records"] == 6
    # ratios 1.5, 1.3, 1.7, 1.1: mean 1.4, sample std sqrt(0.2 / 3)
    assert o["score_ratio"]["mean"] == pytest.approx(1.4) and o["score_ratio"]["n"] == 4
    assert o["score_ratio"]["std"] == pytest.approx((0.2 / 3) ** 0.5)
    assert (o["score_ratio"]["min"], o["score_ratio"]["max"]) == pytest.approx((1.1, 1.7))
    assert o["spearman"]["mean"] == pytest.approx(0.2) and o["spearman"]["n"] == 3  # 0.2, 0.4, 0.0
    assert o["kept_unseen"]["mean"] == pytest.approx(19 / 6)
    assert o["uniform_unseen"]["mean"] == pytest.approx(20 / 6)
    per_epoch = {e["epoch"]: e for e in o["epochs"]}
    assert sorted(per_epoch) == [0, 1, 2]
    assert per_epoch[0]["score_ratio"]["mean"] is None and per_epoch[0]["kept_unseen"]["mean"] == 6
    assert per_epoch[1]["score_ratio"]["mean"] == pytest.approx(1.6)
    assert per_epoch[1]["spearman"]["mean"] == pytest.approx(0.1)
    assert per_epoch[2]["spearman"]["mean"] == pytest.approx(0.4) and per_epoch[2]["spearman"]["n"] == 1
    assert report.ranking_summary([r for r in _runs() if r["policy"] != "orderdp"]) == {}


def test_ranking_lines_and_report_section():
    summary = report.ranking_summary(_runs())
    lines = report.ranking_lines(summary)
    md = "\n".join(lines)
    assert "## Whether the ranking ranks" in md
    rows = [ln for ln in lines if ln.startswith("| orderdp ")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip().strip("|").split("|")]
    assert cells == ["orderdp", f"1.40 ± {(0.2 / 3) ** 0.5:.2f}", "1.10 .. 1.70", "0.20 ± 0.20", "0.00 .. 0.40",
                     "4 of 6", "3.2 (3.3)"]
    assert report.ranking_lines({}) == [] and report.ranking_lines(None) == []
    results = {"name": "t", "command": "c", "config": {"policies": {}}, "environment": {}, "ranking": summary}
    assert "## Whether the ranking ranks" in report.render_report(results)
    assert "ranking ranks" not in report.render_report({**results, "ranking": {}})
    study = {"name": "s", "command": "c", "tasks": {"digits": {"config": {"training": {}, "seeds": [0, 1]},
                                                              "ranking": summary}}}
    assert "### Whether the ranking ranks" in report.render_study(study)  # under its task's heading


def test_ranking_plot_only_when_runs_carry_the_fields(tmp_path):
    runs = _runs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # epoch 0 has no figure in any seed: no empty-mean warning
        files = plots.write_all(runs, tmp_path)
    assert "ranking.png" in files and (tmp_path / "ranking.png").stat().st_size > 1000
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "ranking.png" not in plots.write_all([r for r in runs if r["policy"] != "orderdp"], plain)
    assert not (plain / "ranking.png").exists()
