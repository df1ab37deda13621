"""The benchmark harness on CPU: interleaved runs, the report's arithmetic, the cost fit, the
bench config, the loader comparison and the GPU script."""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from orderdp_dali.bench import report
from orderdp_dali.bench.config import load_bench_config
from orderdp_dali.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
POLICIES = ["full", "infobatch", "orderdp", "uniform"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from orderdp_dali.make_data import make_dataset

    return make_dataset(
        tmp_path_factory.mktemp("bench") / "data",
        mode="small", num_classes=3, train_per_class=16, val_per_class=4, workers=1,
    )


def _tiny_config(tmp_path: Path, root: Path, **extra) -> Path:
    cfg = {
        "name": "tiny",
        "dataset": {"root": str(root)},
        "training": {
            "data": {"crop": 32, "val_resize": 36, "num_threads": 1},
            "model": {"name": "tiny"},
            "optim": {"name": "sgd", "lr": 0.05},
            "schedule": {"name": "constant"},
            "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "eval_every": 1},
        },
        "policies": {
            "full": {},
            # 3 epochs, anneal_delta 0.7: epochs 0-1 prune (epoch + 1 <= 2.1), epoch 2 anneals (all samples)
            "infobatch": {"prune_ratio": 0.5, "anneal_delta": 0.7},
            "orderdp": {"random_len_ratio": 0.75, "top_q_ratio": 0.8},
            "uniform": {"random_len_ratio": 0.75, "top_q_ratio": 0.8},
        },
        "seeds": [0],
        "warmup": False,
        **extra,
    }
    path = tmp_path / "bench_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _table_rows(md: str, header_start: str):
    """Rows (lists of cells) of the first markdown table whose header starts with ``header_start``."""
    lines = md.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # whole bench runs (seconds); the pure parts below stay in the fast tier
def test_harness_interleaves_policies_and_reports_paired_figures(tmp_path, tiny_dataset, capsys, monkeypatch):
    from orderdp_dali.bench.run import turn_order
    from orderdp_dali.cli.bench import main
    from orderdp_dali.train import TrainingRun

    calls = []
    original = TrainingRun.run_epoch

    def logged(self, epoch):
        if self.out.name != "warmup":  # the untimed warm-up run goes through run_training
            calls.append((self.cfg.policy.name, self.cfg.train.seed, epoch))
        return original(self, epoch)

    monkeypatch.setattr(TrainingRun, "run_epoch", logged)
    cfg = _tiny_config(tmp_path, tiny_dataset, mode="both", warmup=True, seeds=[0, 1],
                       loader={"loaders": ["dali-plan", "dali-reader", "torchvision"], "batch_size": 8,
                               "workers": 1, "crop": 32, "warmup": 0, "repeats": 1, "cold_starts": 0})
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "| orderdp |" in printed and "epoch 3/3" in printed
    assert "warm-up: epoch 1/1" in printed  # run_training's epoch callback drives the progress lines

    # Epoch e of every policy runs before epoch e+1 of any, the order rotating with epoch and seed.
    expected = [(p, seed, e) for k, seed in enumerate([0, 1]) for e in range(3) for p in turn_order(POLICIES, e + k)]
    assert calls == expected
    assert turn_order(POLICIES, 1) == ["infobatch", "orderdp", "uniform", "full"]

    results = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_vs_wall.png", "efficiency_vs_epoch_size.png", "frontier.png", "orderdp_inclusion.png",
                    "ranking.png", "samples_per_epoch.png", "wall_clock.png"]
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    env = results["environment"]
    for key in ("python", "torch", "torchvision", "dali", "numpy", "cpu_model", "cpu_usable", "gpu", "load_average"):
        assert key in env
    assert len(results["load_averages"]) == 2 * 3  # one per round

    runs = {(r["policy"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {(p, s) for p in POLICIES for s in (0, 1)}
    for r in runs.values():
        assert [e["epoch"] for e in r["epochs"]] == [0, 1, 2]
        for e in r["epochs"]:
            for key in ("epoch_time", "cpu_time", "data_time", "samples", "train_loss", "val_top1", "turn"):
                assert e[key] is not None, key
    assert [e["samples"] for e in runs[("infobatch", 0)]["epochs"]][2] == 48  # the annealing epoch: every sample

    # The paired figures, recomputed here from the per-epoch records (epoch 0 left out).
    rows = {r[0]: r for r in _table_rows(md, "| policy | seeds |")}
    assert set(rows) == set(POLICIES) and rows["full"][7] == "n/a"
    summary = {s["policy"]: s for s in results["summary"]}
    for policy in ("infobatch", "orderdp", "uniform"):
        effs, walls = [], []
        for seed in (0, 1):
            for e, f in zip(runs[(policy, seed)]["epochs"][1:], runs[("full", seed)]["epochs"][1:]):
                ss = 1 - e["samples"] / f["samples"]
                if ss >= report.MIN_SAMPLE_SAVING:
                    walls.append(1 - e["epoch_time"] / f["epoch_time"])
                    effs.append(walls[-1] / ss)
        paired = summary[policy]["paired"]
        assert paired["epochs_paired"] == 4 and paired["epochs_counted"] == len(effs)
        assert paired["efficiency"]["median"] == pytest.approx(statistics.median(effs))
        assert float(rows[policy][7]) == pytest.approx(statistics.median(effs), abs=0.0051)
        q25, q75 = np.percentile(walls, [25, 75])
        assert summary[policy]["noisy"] == bool(q75 - q25 > abs(statistics.median(walls)))
        assert rows[policy][12] == ("**yes**" if summary[policy]["noisy"] else "no")
        total = sum(e["samples"] for s in (0, 1) for e in runs[(policy, s)]["epochs"]) / 2
        assert float(rows[policy][2]) == pytest.approx(total, abs=0.5)
    assert summary["infobatch"]["paired"]["epochs_counted"] == 2  # its annealing epochs skip nothing: not counted
    assert summary["orderdp"]["paired"]["epochs_counted"] == 4

    fit = results["fit"]
    assert fit["points"] == 4 * 2 * 2 and fit["samples_range"] == [28.0, 48.0]
    assert "## Fixed and per-sample cost" in md and "Projected efficiency of a pruned ImageNet epoch" in md

    loader = results["loader"]
    assert set(loader["loaders"]) == {"dali-plan", "dali-reader", "torchvision"}
    assert set(loader["ratios"]) == {"dali-plan / torchvision", "dali-plan / dali-reader"}
    assert "## Loader comparison" in md


@pytest.mark.slow
@pytest.mark.slow
def test_named_entries_train_their_own_epochs_and_get_time_to_accuracy(tmp_path, tiny_dataset, capsys):
    """Two entries of one policy (full for 3 and for 2 epochs, its schedule ending at its own
    last epoch) beside OrderDP: the short entry is compared on totals, not paired epoch by epoch."""
    from orderdp_dali.cli.bench import main
    from orderdp_dali.lr_schedule import lr_at, progress

    training = {"data": {"crop": 32, "val_resize": 36, "num_threads": 1}, "model": {"name": "tiny"},
                "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "cosine"},
                "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "eval_every": 1}}
    cfg = _tiny_config(tmp_path, tiny_dataset, training=training, policies={
        "full": {}, "full_short": {"policy": "full", "epochs": 2},
        "orderdp_30": {"policy": "orderdp", "random_len_ratio": 0.8, "top_q_ratio": 0.375}})
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| full_short | 2 |" in printed  # the time-to-accuracy table, printed too
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    runs = {r["policy"]: r for r in results["runs"]}
    assert {p: (r["method"], len(r["epochs"])) for p, r in runs.items()} == {
        "full": ("full", 3), "full_short": ("full", 2), "orderdp_30": ("orderdp", 3)}
    assert [e["samples"] for e in runs["orderdp_30"]["epochs"]] == [14] * 3  # q = floor(0.375 floor(0.8 * 48))
    last = runs["full_short"]["epochs"][-1]  # the step's lr of its last step: the end of a 2-epoch cosine
    end = progress(1, last["steps"] - 1, last["steps"])
    assert last["lr"] == pytest.approx(lr_at(_schedule("cosine"), 0.05, 2, end))
    assert last["lr"] < 0.1 * 0.05
    summary = {row["policy"]: row for row in results["summary"]}
    assert summary["full_short"]["paired"] is None and summary["orderdp_30"]["paired"]["epochs_paired"] == 2
    tta = results["time_to_accuracy"]
    assert [e["policy"] for e in tta["entries"]] == ["full", "full_short", "orderdp_30"]
    full_final = runs["full"]["epochs"][-1]["val_top1"]
    assert tta["target_top1"] == pytest.approx(full_final - 1.0)
    assert tta["baseline_wall_s"] == pytest.approx(sum(e["epoch_time"] for e in runs["full"]["epochs"]))
    assert "## Time to accuracy" in (out / "report.md").read_text()
    assert (out / "frontier.png").stat().st_size > 1000


def _schedule(name):
    from orderdp_dali.config import load_config

    return load_config(None, ["data.root=/x", f"schedule.name={name}"]).schedule


def _epochs(times, top1):
    return [{"epoch": k, "epoch_time": t, "val_top1": a, "samples": 10} for k, (t, a) in enumerate(zip(times, top1))]


def test_study_tasks_merge_into_the_base_config_and_errors_name_the_task():
    from orderdp_dali.bench.config import task_bench

    base = ["dataset.root=/base", "policies={full: {}, full_short: {policy: full, epochs: 2}}", "train.epochs=4",
            "tasks={a: {training: {train: {epochs: 6}}, policies: {full_short: {epochs: 3}}}, "
            "b: {dataset: {root: /b}, seeds: [0, 1]}}"]
    bench = load_bench_config(None, base)
    a, b = task_bench(bench, "a"), task_bench(bench, "b")
    assert (a.name, a.dataset.root, a.training["train"]["epochs"], a.policies["full_short"]) == (
        "bench-a", "/base", 6, {"policy": "full", "epochs": 3})
    assert (b.dataset.root, b.training["train"]["epochs"], b.seeds, b.policies["full_short"]["epochs"]) == (
        "/b", 4, (0, 1), 2)
    with pytest.raises(ConfigError, match=r"tasks\.c: .*policies\.x: policy\.name: unknown policy 'nope'"):
        load_bench_config(None, [*base[:3], "tasks={c: {policies: {x: {policy: nope}}}}"])
    with pytest.raises(ConfigError, match=r"tasks\.c: need a mapping"):
        load_bench_config(None, [*base[:3], "tasks={c: 3}"])


@pytest.mark.slow
def test_a_study_runs_each_task_as_its_own_bench(tmp_path, tiny_dataset, capsys):
    from orderdp_dali.cli.bench import main

    cfg = _tiny_config(tmp_path, tiny_dataset, policies={"full": {}, "rs2": {"keep_ratio": 0.5}},
                       tasks={"first": {"training": {"train": {"epochs": 2}}},
                              "second": {"training": {"train": {"epochs": 1}}, "seeds": [1]}})
    out = tmp_path / "study"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## first" in printed and "## second" in printed and "| rs2 |" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True and list(results["tasks"]) == ["first", "second"]
    first, second = results["tasks"]["first"], results["tasks"]["second"]
    assert {len(r["epochs"]) for r in first["runs"]} == {2} and {r["seed"] for r in second["runs"]} == {1}
    assert (out / "first" / "report.md").is_file() and (out / "second" / "frontier.png").is_file()
    md = (out / "report.md").read_text()
    assert "## first ([full report](first/report.md))" in md and "time to" in md


def test_time_to_accuracy_of_a_hand_made_series():
    runs = [
        {"policy": "full", "seed": 0, "epochs": _epochs([10] * 4, [50, 70, 80, 90])},
        {"policy": "full", "seed": 1, "epochs": _epochs([10] * 4, [50, 72, 84, 88])},
        {"policy": "orderdp", "seed": 0, "epochs": _epochs([6] * 4, [45, 65, 78, 89])},
        {"policy": "orderdp", "seed": 1, "epochs": _epochs([6] * 4, [45, 60, 70, 80])},
        {"policy": "full_short", "seed": 0, "epochs": _epochs([10] * 2, [60, 87])},
    ]
    tta = report.time_to_accuracy(runs)
    # target: full's final top-1 (90 and 88: 89) minus 1; budgets: 40% and 60% of full's 40 s
    assert tta["target_top1"] == 88 and tta["budgets_s"] == {"40%": 16, "60%": 24}
    e = {x["policy"]: x for x in tta["entries"]}
    assert e["full"]["reached"] == 2 and e["full"]["time_to_target_s"]["mean"] == 40
    assert e["full"]["top1_within"]["40%"]["mean"] == 50 and e["full"]["top1_within"]["60%"]["mean"] == 71
    assert e["orderdp"]["reached"] == 1 and e["orderdp"]["time_to_target_s"]["mean"] == 24  # 4 x 6 s
    assert e["orderdp"]["top1_within"]["40%"]["mean"] == 62.5  # 65 and 60 after 12 s
    assert e["orderdp"]["top1_within"]["60%"]["mean"] == 84.5  # 89 and 80 after 24 s
    assert e["orderdp"]["final_top1"]["mean"] == 84.5 and e["orderdp"]["wall_s"]["mean"] == 24
    assert e["full_short"]["reached"] == 0 and e["full_short"]["top1_within"]["60%"]["mean"] == 87
    lines = report.format_time_to_accuracy(tta)
    assert any(ln.startswith("| full_short |") and "not reached | 0/1" in ln for ln in lines)
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")  # header, rule and rows agree
    # an explicit target
    e = {x["policy"]: x for x in report.time_to_accuracy(runs, target_top1=75)["entries"]}
    assert e["full"]["time_to_target_s"]["mean"] == 30 and e["orderdp"]["time_to_target_s"]["mean"] == 21  # 18, 24
    assert report.time_to_accuracy([r for r in runs if r["policy"] != "full"]) is None  # no baseline, no target


def test_entries_with_their_own_epochs_are_not_paired():
    def run(policy, seed, epochs, samples):
        return {"policy": policy, "seed": seed, "config": {"train": {"epochs": epochs}},
                "epochs": [{"epoch": k, "epoch_time": 1.0, "samples": samples} for k in range(epochs)]}

    pairs = report.paired_epochs([run("full", 0, 3, 10), run("full_short", 0, 2, 10), run("orderdp", 0, 3, 6)])
    assert set(pairs) == {"orderdp"}


@pytest.mark.parametrize("override, message", [
    ("policies={full: {}, short: {policy: full, epochs: 0}}", r"policies\.short\.epochs: need an int >= 1"),
    ("policies={full: {}, x: {policy: nope}}", r"policies\.x: policy\.name: unknown policy 'nope'"),
    ("target_top1=120", "target_top1"),
])
def test_bench_entry_errors_name_the_entry(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_bench_config(None, ["dataset.root=/x", override])


def test_loader_comparison_cli_measures_a_to_e(tmp_path, tiny_dataset, monkeypatch):
    from orderdp_dali.bench.loader_compare import main

    monkeypatch.setenv("ORDERDP_DALI_CACHE", str(tmp_path / "cache"))

    out = tmp_path / "results"
    args = ["--root", str(tiny_dataset / "train"), "--batch-size", "8", "--workers", "1", "--device", "cpu"]
    args += ["--crop", "32", "--warmup", "0", "--repeats", "1", "--out", str(out), "--json", str(tmp_path / "l.json")]
    assert main(args) == 0
    result = json.loads((out / "loader_compare_cpu.json").read_text())
    assert json.loads((tmp_path / "l.json").read_text())["figures"] == result["figures"]
    assert result["dataset_size"] == 48 and result["samples"] == int(int(48 * 0.75) * 0.8) == 28
    assert set(result["figures"]) == set(report.LOADER_FIGURES)
    stats = result["loaders"]
    assert stats["dali-plan"]["images"] == stats["dali-reader"]["images"] == stats["torchvision"]["images"] == 28
    assert stats["dali-plan-full"]["images"] == 48
    assert {stats[n]["images"] for n in ("dali-plan-feed", "dali-reader-feed", "per-sample-feed")} == {280}
    # (e): the same plan over the split's tar-shard copy, written on first use beside the split
    assert stats["dali-plan-tar"]["images"] == 28 and stats["dali-plan-tar-feed"]["images"] == 280
    assert sorted(p.name for p in (tiny_dataset / "tar" / "train").glob("*.tar")) == ["data-train-0000.tar"]
    tar = stats["dali-plan-tar"]["images_per_s"][0] / stats["dali-plan"]["images_per_s"][0]
    assert result["figures"]["e_tar_vs_folder"] == pytest.approx(tar)
    feed = stats["dali-plan-feed"]["images_per_s"][0] / stats["per-sample-feed"]["images_per_s"][0]
    assert result["figures"]["d_feed_plan_vs_per_sample"] == pytest.approx(feed)
    a = (stats["dali-plan"]["seconds"][0] / stats["dali-plan-full"]["seconds"][0]) / result["kept_fraction"]
    assert result["figures"]["a_pruned_time_ratio_over_kept"] == pytest.approx(a)
    assert result["ratios"]["dali-plan / dali-reader"] == result["figures"]["b_plan_vs_dali_reader"]
    start = result["pipeline_start"]
    assert start["epochs"] == 3 and 0 < start["build_and_schedule_s"] <= start["start_to_first_batch_s"]
    assert 0 < start["pass_start_s"] <= start["pass_start_to_first_batch_s"]
    md = (out / "loader_compare_cpu.md").read_text()
    assert "python -m orderdp_dali.bench.loader_compare" in md and "(b) our iterator" in md
    assert "(d) feeding only: our iterator / per-sample worker processes" in md
    assert "Pipeline set-up, once per run" in md
    assert "Pass start per epoch on the built pipeline" in md
    assert "(e) feeding only: tar shards / class folders (samples/s)" in md and "| - | reported |" in md


def test_loader_comparison_without_root_generates_its_default_dataset(tmp_path, monkeypatch):
    from orderdp_dali.bench import loader_compare

    small = {"out_dir": str(tmp_path / "gen"), "mode": "small", "num_classes": 2, "train_per_class": 6,
             "val_per_class": 1, "seed": 0}
    monkeypatch.setattr(loader_compare, "DEFAULT_DATA", small)
    args = ["--loaders", "dali-plan,dali-plan-full", "--batch-size", "4", "--workers", "1", "--device", "cpu",
            "--crop", "32", "--warmup", "0", "--repeats", "1", "--cold-starts", "0", "--json", str(tmp_path / "l.json")]
    assert loader_compare.main(args) == 0
    assert json.loads((tmp_path / "l.json").read_text())["dataset_size"] == 12
    assert (tmp_path / "gen" / "train").is_dir()


# ----------------------------------------------------------------------------- pure parts


def _run(policy, seed, samples, walls, cpus=None, top1=None):
    cpus = cpus or [w / 2 for w in walls]
    top1 = top1 or [50.0] * len(walls)
    epochs = [
        {"epoch": i, "samples": s, "epoch_time": w, "cpu_time": c, "data_time": 0.1, "val_top1": a, "train_loss": 1.0}
        for i, (s, w, c, a) in enumerate(zip(samples, walls, cpus, top1))
    ]
    return {"policy": policy, "seed": seed, "epochs": epochs}


def test_paired_efficiency_medians_spread_and_flag():
    runs = [
        _run("full", 0, [100, 100, 100, 100], [30.0, 10.0, 12.0, 10.0], top1=[50.0, 60.0, 70.0, 65.0]),
        _run("full", 1, [100, 100, 100, 100], [30.0, 8.0, 10.0, 10.0]),
        # 60% of the samples; epoch 0 (start-up) is left out however slow
        _run("orderdp", 0, [60, 60, 60, 60], [99.0, 6.0, 7.2, 6.0]),
        _run("orderdp", 1, [60, 60, 60, 60], [99.0, 5.6, 6.0, 7.0]),
        # InfoBatch-like: epoch 3 anneals (every sample): paired, not counted
        _run("infobatch", 0, [50, 50, 50, 100], [30.0, 5.0, 6.0, 11.0]),
        _run("infobatch", 1, [50, 50, 50, 100], [30.0, 4.0, 5.0, 9.0]),
        # noise larger than the effect: wall savings of +50%, -50%, ...
        _run("uniform", 0, [60, 60, 60, 60], [30.0, 5.0, 18.0, 5.0]),
        _run("uniform", 1, [60, 60, 60, 60], [30.0, 12.0, 5.0, 15.0]),
    ]
    rows = {r["policy"]: r for r in report.summarize(runs)}
    assert rows["full"]["paired"] is None and rows["full"]["noisy"] is None
    o = rows["orderdp"]["paired"]
    walls = [1 - 6 / 10, 1 - 7.2 / 12, 1 - 6 / 10, 1 - 5.6 / 8, 1 - 6 / 10, 1 - 7 / 10]
    assert o["epochs_paired"] == o["epochs_counted"] == 6
    assert o["sample_saving"]["median"] == pytest.approx(0.4)
    assert o["efficiency"]["median"] == pytest.approx(statistics.median(w / 0.4 for w in walls))
    assert o["efficiency"]["min"] == pytest.approx(min(walls) / 0.4) and o["efficiency"]["n"] == 6
    q25, q75 = np.percentile([w / 0.4 for w in walls], [25, 75])
    assert (o["efficiency"]["q25"], o["efficiency"]["q75"]) == pytest.approx((q25, q75))
    assert o["cpu_efficiency"]["median"] == pytest.approx(o["efficiency"]["median"])  # cpu = wall / 2 here
    assert rows["orderdp"]["noisy"] is False
    ib = rows["infobatch"]["paired"]
    assert ib["epochs_paired"] == 6 and ib["epochs_counted"] == 4  # the annealing epochs skip nothing
    assert ib["efficiency"]["median"] == pytest.approx(statistics.median([1.0, 1.0, 1.0, 1.0]))
    assert rows["uniform"]["noisy"] is True
    # Totals stay per run, mean over seeds; the table carries both.
    assert rows["orderdp"]["wall_s"]["mean"] == pytest.approx((99 + 6 + 7.2 + 6 + 99 + 5.6 + 6 + 7) / 2)
    table = report.format_table(list(rows.values()))
    cells = {r[0]: r for r in _table_rows(table, "| policy | seeds |")}
    assert cells["orderdp"][5] == "40.0%" and cells["orderdp"][10] == "6/6" and cells["uniform"][12] == "**yes**"
    assert cells["infobatch"][10] == "4/6" and cells["full"][7] == "n/a"
    assert float(cells["orderdp"][7]) == pytest.approx(o["efficiency"]["median"], abs=0.005)


def test_fit_recovers_fixed_and_per_sample_cost_and_projects_imagenet():
    a, b = 0.4, 0.002  # 0.4 s per epoch + 2 ms per sample
    runs = []
    for policy, n in (("full", 1000), ("orderdp", 600), ("infobatch", 500)):
        for seed in (0, 1):
            walls = [a + b * n + 3.0, a + b * n, a + b * n]  # epoch 0 pays 3 s of start-up
            runs.append(_run(policy, seed, [n, n, n], walls))
    fit = report.fit_epoch_cost(runs)
    assert fit["a_s"] == pytest.approx(a) and fit["b_s_per_sample"] == pytest.approx(b)
    assert fit["r2"] == pytest.approx(1.0) and fit["points"] == 12  # epoch 0 left out
    assert fit["startup_s"] == pytest.approx(3.0)
    n_rank = 1_281_167 / 8
    assert fit["imagenet_efficiency"] == pytest.approx(b * n_rank / (a + b * n_rank))
    # The projection is the efficiency a pruned epoch has under that cost model, for any kept fraction.
    for keep in (0.3, 0.6):
        full, pruned = a + b * n_rank, a + b * keep * n_rank
        assert (1 - pruned / full) / (1 - keep) == pytest.approx(report.projected_efficiency(a, b, n_rank))
    assert report.fit_epoch_cost([_run("full", 0, [100, 100, 100], [1.0, 1.0, 1.1])]) is None  # one epoch size
    md = "\n".join(report.format_fit(fit))
    assert "0.400 s" in md and "2.000 ms" in md and f"{fit['imagenet_efficiency']:.3f}" in md


def test_efficiency_plot_is_written(tmp_path):
    from orderdp_dali.bench import plots

    runs = [_run("full", 0, [100, 100, 100], [3.0, 1.2, 1.2]), _run("orderdp", 0, [60, 60, 60], [3.0, 0.9, 0.8])]
    files = plots.write_all(runs, tmp_path, fit=report.fit_epoch_cost(runs), summary=report.summarize(runs))
    assert "efficiency_vs_epoch_size.png" in files
    assert (tmp_path / "efficiency_vs_epoch_size.png").stat().st_size > 1000


def test_usage_counts_wall_and_cpu_seconds():
    from orderdp_dali.bench.machine import Usage

    with Usage() as u:
        sum(i * i for i in range(2_000_000))
    assert u.wall_s > 0 and 0 < u.cpu_s


def test_bench_config_overrides_route_to_recipe_and_policies(tmp_path):
    path = _tiny_config(tmp_path, tmp_path)
    b = load_bench_config(str(path), ["train.epochs=4", "seeds=[1,2]", "policies=[orderdp,full]", "data.crop=34"])
    assert b.training["train"]["epochs"] == 4 and b.training["data"]["crop"] == 34
    assert b.seeds == (1, 2)
    assert list(b.policies) == ["orderdp", "full"]
    assert b.policies["orderdp"] == {"random_len_ratio": 0.75, "top_q_ratio": 0.8}
    b = load_bench_config(str(path), ["policies.orderdp.top_q_ratio=0.5", "seeds=3", "loader.repeats=5"])
    assert b.policies["orderdp"]["top_q_ratio"] == 0.5 and b.seeds == (3,) and b.loader.repeats == 5
    assert json.loads(json.dumps(b.to_dict()))["seeds"] == [3]


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "bogus: unknown bench key"),
        ("policy.name=orderdp", "policies.<name>"),
        ("seeds=[0,0]", "seeds:"),
        ("seeds=[a]", "seeds[0]: expected an integer"),
        ("mode=fast", "mode: invalid value"),
        ("warmup=3", "warmup: expected true or false"),
        ("policies.orderdp.top_q_ratio=2", "top_q_ratio"),
        ("train.epochs=0", "train.epochs"),
        ("loader.threads=2", "loader.threads: unknown key"),
        ("loader.repeats=0", "loader.repeats: 0 out of range"),
        ("loader.loaders=[dali-plan,nope]", "loader.loaders: unknown loader 'nope'"),
        ("dataset.rot=x", "dataset.rot: unknown key; did you mean dataset.root?"),
        ("data.train_split=tr", "training.data.train_split: set it as dataset.train_split"),
        ("seeds=[4294967296]", "seeds: need a non-empty list of distinct integers in 0 .. 4294967295"),
        ("loader.seed=4294967296", "loader.seed: 4294967296 out of range"),
        ("policies.orderdp.random_len_ratio=true",
         "policies.orderdp: policy.params.random_len_ratio: expected a number"),
    ],
)
def test_bench_config_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_bench_config(str(_tiny_config(tmp_path, tmp_path)), [override])


def test_bench_seed_beyond_32_bits_is_one_line_not_a_traceback(tmp_path, capsys):
    from orderdp_dali.cli.bench import main

    assert main(["--config", str(_tiny_config(tmp_path, tmp_path)), "seeds=[4294967296]",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("orderdp-dali bench: error: seeds: ") and "4294967296" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, where", [
    ("name: a\nseeds: [0]\nname: b\n", "at line 4, column 1: duplicate key 'name' (first at line 2)"),
    ("name: a\npolicies:\n  full: {}\n  orderdp: {top_q_ratio: 0.5}\n  orderdp: {top_q_ratio: 0.9}\n",
     "at line 6, column 3: duplicate key 'policies.orderdp' (first at line 5)"),
])
def test_bench_config_yaml_is_strict(tmp_path, text, where):
    path = tmp_path / "twice.yaml"
    path.write_text(f"dataset: {{root: {tmp_path}}}\n" + text, encoding="utf-8")  # line 1
    with pytest.raises(ConfigError) as err:
        load_bench_config(str(path))
    assert str(err.value).startswith(f"invalid YAML in {path} {where}: the later value would silently replace")


def test_bench_config_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(f"dataset: {{root: {tmp_path}}}\nname: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^bench config {re.escape(str(path))} is not UTF-8 text: byte 0xe9 at "
                                          r"line 2; save the file as UTF-8$"):
        load_bench_config(str(path))


def test_shipped_bench_configs_validate():
    from orderdp_dali.bench.config import entry, task_bench

    for path in sorted((REPO / "configs").glob("bench_*.yaml")):
        b = load_bench_config(str(path))
        for bench in [task_bench(b, t) for t in b.tasks] or [b]:
            methods = {entry(bench, name).policy for name in bench.policies}
            assert bench.mode == "loader" or ("full" in bench.policies and "orderdp" in methods), path.name
    study = load_bench_config(str(REPO / "configs" / "bench_study.yaml"))
    for task in study.tasks:
        bench = task_bench(study, task)
        methods = [entry(bench, name).policy for name in bench.policies]
        assert {"full", "infobatch", "orderdp", "uniform", "rs2"} <= set(methods) and len(bench.seeds) >= 3
        assert methods.count("full") == 2 and entry(bench, "full_short").epochs < bench.training["train"]["epochs"]
    digits = load_bench_config(str(REPO / "configs" / "bench_digits.yaml"))
    assert len(digits.seeds) >= 3 and list(digits.policies) == POLICIES


# ----------------------------------------------------------------------------- GPU script


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "gpu_out"
    script = REPO / "bench" / "gpu_check.sh"
    proc = subprocess.run(
        ["bash", str(script), "--dry-run", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "pytest -m gpu" in text
    assert "orderdp_dali.bench.loader_compare" in text and "--device gpu" in text
    assert "-m orderdp_dali.cli bench --config configs/bench_gpu_r50.yaml" in text
    assert "--batch-size 256" in text and "orderdp_dali.bench.gpu_thresholds" in text
    assert "dry run: nothing executed" in text
    assert not out.exists()

    cpu = subprocess.run(
        ["bash", str(script), "--cpu", "--dry-run", "--skip-tests"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert cpu.returncode == 0 and "--device cpu" in cpu.stdout and "pytest" not in cpu.stdout

    bad = subprocess.run(["bash", str(script), "--bogus"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option '--bogus'" in bad.stderr


def test_gpu_check_runs_the_python_of_PYTHON_else_the_one_on_path(tmp_path):
    """Every python step of gpu_check.sh uses $PYTHON when set, ``python3`` otherwise."""
    script = REPO / "bench" / "gpu_check.sh"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "OUT")}

    def dry_run(**extra):
        proc = subprocess.run(
            ["bash", str(script), "--dry-run", "--out", str(tmp_path / "out")],
            cwd=REPO, capture_output=True, text=True, timeout=60, env={**env, **extra},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    steps = ("-m pytest -m gpu", "-m orderdp_dali.make_data", "-m orderdp_dali.bench.loader_compare")
    custom = "/opt/some env/bin/python3.11"
    default, overridden = dry_run(), dry_run(PYTHON=custom)
    for step in steps:
        assert f"python3 {step}" in default and f"{custom} {step}" in overridden, step
    assert custom not in default


def test_gpu_bench_runs_get_the_gpu_recipe():
    """Each policy of the GPU bench builds its training config with ResNet-50, AMP and the GPU."""
    from orderdp_dali.bench.config import recipe_config

    b = load_bench_config(str(REPO / "configs" / "bench_gpu_r50.yaml"))
    assert list(b.policies) == ["full", "orderdp"]
    for policy, params in b.policies.items():
        cfg = recipe_config(b, policy, seed=0, output_dir="unused", dataset_root=b.dataset_root)
        assert cfg.policy.name == policy and dict(cfg.policy.params) == params
        assert cfg.model.name == "resnet50" and cfg.model.channels_last
        assert cfg.train.amp in ("bf16", "fp16") and cfg.train.device == "auto"
        assert cfg.data.crop == 224 and cfg.schedule.name == "onecycle"


def _bench_results(full_times, orderdp_times):
    def run(policy, times):
        return {"policy": policy, "epochs": [{"epoch_time": t} for t in times]}

    return {"runs": [run("full", full_times), run("orderdp", orderdp_times)]}


def test_gpu_thresholds_met_not_met_and_missing(tmp_path):
    from orderdp_dali.bench import gpu_thresholds as gt

    loader = {"ratios": {"dali-plan / dali-reader": 0.97}, "loaders": {"dali-plan": {"median": 9100.0}}}
    # first epochs (start-up) are left out: medians of 2..E are 6.0 / 10.0
    bench = _bench_results([30.0, 10.0, 10.0, 11.0], [25.0, 6.0, 6.0, 5.0])
    rows = {r["key"]: r for r in gt.evaluate(gt.measured(loader, bench))}
    assert rows["orderdp_over_full_epoch"]["value"] == pytest.approx(0.6)
    assert all(r["met"] for r in rows.values())

    slow = {"ratios": {"dali-plan / dali-reader": 0.9}, "loaders": {"dali-plan": {"median": 7999.0}}}
    rows = {r["key"]: r for r in gt.evaluate(gt.measured(slow, _bench_results([1, 10, 10], [1, 7, 7])))}
    assert not any(r["met"] for r in rows.values())

    (tmp_path / "loader.json").write_text(json.dumps(loader))
    table = tmp_path / "thresholds.md"
    assert gt.main(["--loader", str(tmp_path / "loader.json"), "--bench", str(tmp_path / "absent.json"),
                    "--out", str(table)]) == 1  # the bench figure is missing: not met
    text = table.read_text()
    assert "| missing | <= 0.65 | NOT MET |" in text and "| 0.970 | >= 0.95 | met |" in text and "9100" in text
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    assert gt.main(["--loader", str(tmp_path / "loader.json"), "--bench", str(tmp_path / "bench.json")]) == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_cpu_mode_runs_every_step_into_at_most_8_files(tmp_path):
    out = tmp_path / "gpu out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).is_file() for f in files), files
    assert {"env.txt", "status.txt", "log.txt", "pytest.txt", "loader.json", "bench_report.md",
            "bench_results.json"} <= set(files)
    status = (out / "status.txt").read_text()
    for name in ("tests", "data", "loader", "bench"):
        assert f"[gpu-check] {name}: exit 0" in status, status
    assert "torch" in (out / "env.txt").read_text()
    assert json.loads((out / "loader.json").read_text())["loaders"]["dali-plan"]["median"] > 0
