"""The benchmark harness on CPU: run folder contents, the report's arithmetic, loaders, GPU script."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orderdp_dali.bench import report
from orderdp_dali.bench.run import load_bench_config
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
            "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "eval_every": 1},
        },
        "policies": {
            "full": {},
            # 2 epochs: with the reference's 0.875 epoch 1 would already anneal (epoch + 1 > 1.75)
            "infobatch": {"prune_ratio": 0.5, "anneal_delta": 1.0},
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


@pytest.mark.slow  # a whole bench run (seconds); the pure parts below stay in the fast tier
def test_harness_writes_run_folder_with_consistent_report(tmp_path, tiny_dataset, capsys):
    from orderdp_dali.bench.run import main

    cfg = _tiny_config(
        tmp_path,
        tiny_dataset,
        mode="both",
        loader={"batch_size": 8, "workers": 1, "crop": 32, "warmup": 1, "repeats": 1},
    )
    out = tmp_path / "run"
    assert main(["--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "| orderdp |" in printed and "epoch 2/2" in printed

    results = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_vs_wall.png", "orderdp_inclusion.png", "samples_per_epoch.png", "wall_clock.png"]
    assert all((out / p).stat().st_size > 1000 for p in pngs)

    env = results["environment"]
    for key in ("python", "torch", "torchvision", "dali", "numpy", "cpu_model", "cpu_count", "gpu"):
        assert key in env
    assert results["config"]["policies"].keys() == set(POLICIES)

    # One run per policy, each with per-epoch wall time, data wait, samples, images/s, loss, accuracy.
    assert [r["policy"] for r in results["runs"]] == POLICIES
    for r in results["runs"]:
        assert len(r["epochs"]) == 2
        for e in r["epochs"]:
            for key in ("epoch_time", "data_time", "samples", "images_per_s", "train_loss", "val_top1"):
                assert e[key] is not None, key
            assert e["epoch_time"] > 0

    # The table: a row per policy, figures recomputed here from the per-epoch records.
    rows = {r[0]: r for r in _table_rows(md, "| policy | seeds |")}
    assert set(rows) == set(POLICIES)
    totals = {
        r["policy"]: (sum(e["samples"] for e in r["epochs"]), sum(e["epoch_time"] for e in r["epochs"]))
        for r in results["runs"]
    }
    full_samples, full_wall = totals["full"]
    summary = {s["policy"]: s for s in results["summary"]}
    for policy, (samples, wall) in totals.items():
        wall_saving = 1 - wall / full_wall
        sample_saving = 1 - samples / full_samples
        s = summary[policy]
        assert s["samples"]["mean"] == samples
        assert math.isclose(s["wall_s"]["mean"], wall, rel_tol=1e-9)
        assert math.isclose(s["wall_saving"], wall_saving, rel_tol=1e-9, abs_tol=1e-12)
        row = rows[policy]
        assert int(row[2]) == samples
        assert float(row[3]) == pytest.approx(wall, abs=0.051)
        if policy == "full":
            assert s["efficiency"] is None and row[6] == "n/a"
        else:
            assert sample_saving > 0  # 48 samples: every pruning policy skips some
            assert math.isclose(s["efficiency"], wall_saving / sample_saving, rel_tol=1e-9)
            assert float(row[6]) == pytest.approx(wall_saving / sample_saving, abs=0.0051)
            assert float(row[4].rstrip("%")) == pytest.approx(100 * wall_saving, abs=0.051)
            assert float(row[5].rstrip("%")) == pytest.approx(100 * sample_saving, abs=0.051)
        best = max(e["val_top1"] for e in results["runs"][POLICIES.index(policy)]["epochs"])
        assert float(row[7]) == pytest.approx(best, abs=0.006)

    # The loader-only comparison ran on the same data, every loader over the same plan.
    loader = results["loader"]
    assert set(loader["loaders"]) == {"dali-plan", "dali-reader", "torchvision"}
    for stats in loader["loaders"].values():
        assert stats["images"] == loader["samples"] and stats["median"] > 0
    assert set(loader["ratios"]) == {"dali-plan / torchvision", "dali-plan / dali-reader"}
    assert "## Loader only" in md


@pytest.mark.slow
def test_iterator_bench_cli_writes_json_and_markdown(tmp_path, tiny_dataset):
    from orderdp_dali.bench.iterator_bench import main

    out = tmp_path / "results"
    args = ["--data", str(tiny_dataset), "--no-generate", "--batch-size", "8", "--workers", "1"]
    args += ["--crop", "32", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "iterator_bench_cpu.json").read_text())
    assert result["dataset_size"] == 48 and result["pruned_samples"] == int(int(48 * 0.75) * 0.8)
    assert set(result["figures"]) == {"a_pruned_time_ratio_over_kept", "b_plan_vs_dali_reader", "c_dali_vs_torchvision",
                                      "d_feed_plan_vs_dali_reader", "d_feed_plan_vs_per_sample"}
    stats = result["loaders"]
    feeding = {name for name in stats if "-feed " in name}
    assert {s["images"] for name, s in stats.items() if name.endswith("pruned") and name not in feeding} == {28}
    assert {stats[name]["images"] for name in feeding} == {result["feed_samples"]} == {280}
    feed = stats["dali-plan-feed pruned"]["images_per_s"][0] / stats["per-sample-feed pruned"]["images_per_s"][0]
    assert result["figures"]["d_feed_plan_vs_per_sample"] == pytest.approx(feed)
    start = result["pipeline_start"]
    assert start["epochs"] == 3 and 0 < start["build_and_schedule_s"] <= start["start_to_first_batch_s"]
    a = (stats["dali-plan pruned"]["seconds"][0] / stats["dali-plan full"]["seconds"][0]) / result["kept_fraction"]
    assert result["figures"]["a_pruned_time_ratio_over_kept"] == pytest.approx(a)
    md = (out / "iterator_bench_cpu.md").read_text()
    assert "python -m orderdp_dali.bench.iterator_bench" in md and "(b) our iterator" in md
    assert "(d) feeding only: our iterator / per-sample worker processes" in md and "Pipeline start per epoch" in md


# ----------------------------------------------------------------------------- pure parts


def _run(policy, seed, samples, walls, top1):
    epochs = [
        {"samples": s, "epoch_time": w, "data_time": 0.1, "val_top1": a, "train_loss": 1.0}
        for s, w, a in zip(samples, walls, top1)
    ]
    return {"policy": policy, "seed": seed, "epochs": epochs, "totals": report.run_totals(epochs)}


def test_summary_savings_efficiency_and_seed_spread():
    runs = [
        _run("full", 0, [100, 100], [10.0, 10.0], [50.0, 60.0]),
        _run("full", 1, [100, 100], [12.0, 8.0], [55.0, 65.0]),
        _run("orderdp", 0, [60, 60], [7.0, 6.0], [52.0, 58.0]),
        _run("orderdp", 1, [60, 60], [6.0, 7.0], [54.0, 62.0]),
    ]
    rows = {r["policy"]: r for r in report.summarize(runs)}
    assert rows["full"]["efficiency"] is None
    o = rows["orderdp"]
    assert o["samples"]["mean"] == 120 and o["wall_s"]["mean"] == 13.0
    assert o["sample_saving"] == pytest.approx(0.4)
    assert o["wall_saving"] == pytest.approx(1 - 13 / 20)
    assert o["efficiency"] == pytest.approx((1 - 13 / 20) / 0.4)
    assert o["best_top1"]["mean"] == pytest.approx(60.0) and o["best_top1"]["std"] == pytest.approx(2 ** 0.5 * 2)
    table = report.format_table(report.summarize(runs))
    eff = f"{o['efficiency']:.2f}"
    assert f"| orderdp | 2 | 120 | 13.0 ± 0.0 | 35.0% | 40.0% | {eff} | 60.00 ± 2.83 | 60.00 ± 2.83 |" in table


def test_bench_config_overrides_route_to_recipe_and_policies(tmp_path):
    path = _tiny_config(tmp_path, tmp_path)
    b = load_bench_config(str(path), ["train.epochs=3", "seeds=[1,2]", "policies=[orderdp,full]", "data.crop=34"])
    assert b["training"]["train"]["epochs"] == 3 and b["training"]["data"]["crop"] == 34
    assert b["seeds"] == [1, 2]
    assert list(b["policies"]) == ["orderdp", "full"]
    assert b["policies"]["orderdp"] == {"random_len_ratio": 0.75, "top_q_ratio": 0.8}
    b = load_bench_config(str(path), ["policies.orderdp.top_q_ratio=0.5"])
    assert b["policies"]["orderdp"]["top_q_ratio"] == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "bogus: unknown bench key"),
        ("policy.name=orderdp", "policies.<name>"),
        ("seeds=[0,0]", "seeds:"),
        ("mode=fast", "mode: invalid value"),
        ("policies.orderdp.top_q_ratio=2", "top_q_ratio"),
        ("train.epochs=0", "train.epochs"),
        ("loader.threads=2", "loader.threads: unknown key"),
    ],
)
def test_bench_config_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_bench_config(str(_tiny_config(tmp_path, tmp_path)), [override])


def test_shipped_bench_configs_validate():
    for name in ("bench_cpu_demo.yaml", "bench_digits.yaml", "bench_gpu_r50.yaml"):
        b = load_bench_config(str(REPO / "configs" / name))
        assert "full" in b["policies"] and "orderdp" in b["policies"]
    digits = load_bench_config(str(REPO / "configs" / "bench_digits.yaml"))
    assert len(digits["seeds"]) >= 3 and list(digits["policies"]) == POLICIES


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
    from orderdp_dali.bench.run import recipe_config

    b = load_bench_config(str(REPO / "configs" / "bench_gpu_r50.yaml"))
    assert list(b["policies"]) == ["full", "orderdp"]
    for policy, params in b["policies"].items():
        cfg = recipe_config(b, policy, params, seed=0, output_dir="unused", dataset_root=b["dataset"]["root"])
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
