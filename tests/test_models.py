"""Models by name (torchvision, timm, ours) and ``train.compile``: names checked before a run
writes anything, compiled runs whose checkpoints resume uncompiled and back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from train_helpers import overrides

from orderdp_dali import cli
from orderdp_dali.checkpoint import LAST, load_checkpoint
from orderdp_dali.config import load_config
from orderdp_dali.errors import ConfigError
from orderdp_dali.models import build_model, check_timm_name, compile_model, fixed_input_size
from orderdp_dali.train import Runtime, build_model_for, main, run_training
from orderdp_dali.training import loop as loop_mod

REPO = Path(__file__).resolve().parents[1]
CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_process_group=False)


def read_metrics(out: Path) -> List[Dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------- timm
def test_timm_model_by_name_is_timms_randomly_initialised_with_num_classes():
    import timm

    torch.manual_seed(0)
    model = build_model("timm/resnet18d", 7).eval()
    assert type(model).__module__.startswith("timm.")
    assert model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 7)
    torch.manual_seed(0)
    same = timm.create_model("resnet18d", pretrained=False, num_classes=7)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    assert load_config(None, ["data.root=x", "model.name=timm/resnet18d"]).model.name == "timm/resnet18d"


@pytest.mark.parametrize("name, expect", [
    ("timm/resnet5O", "model.name: unknown timm model 'resnet5O' (did you mean timm/resnet50"),
    ("timm/", "model.name: 'timm/' names no timm model"),
    ("timm/resnet50d.ra2_in1k", "names pretrained weights (tag 'ra2_in1k')"),
    ("resnet5O", "model.name: unknown model 'resnet5O' (a torchvision classification model, timm/<a timm model>"),
])
def test_unknown_or_tagged_timm_name_is_a_one_line_config_error(name, expect):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.root=x", f"model.name={name}"])
    message = str(e.value)
    assert expect in message and "\n" not in message
    if name.startswith("timm/"):
        assert "timm.list_models('resnet*')" in message or "write timm/resnet50d" in message


def test_check_timm_name_accepts_every_listed_architecture_sampled():
    import timm

    names = timm.list_models()
    for i in np.random.default_rng(0).choice(len(names), 20, replace=False):
        check_timm_name("timm/" + names[i])  # no error
    with pytest.raises(ValueError, match="not a timm model name"):
        check_timm_name("resnet50")


def test_bad_model_name_fails_before_the_output_dir_is_written(data, cache, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--output-dir", str(out), *overrides(data, cache, "model.name=timm/no_such_net")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("orderdp-dali train: error: model.name: unknown timm model 'no_such_net'")
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_fixed_input_size_model_refused_on_other_sized_data(data, cache, tmp_path):
    assert fixed_input_size(build_model("tiny", 3)) is None
    assert fixed_input_size(build_model("timm/resnet18", 3)) is None
    assert fixed_input_size(build_model("timm/vit_tiny_patch16_224", 3)) == (224, 224)
    cfg = load_config(None, overrides(data, cache, "model.name=timm/vit_tiny_patch16_224"))
    with pytest.raises(ConfigError, match=r"model.name: timm/vit_tiny_patch16_224 takes only 224x224 inputs and "
                                          r"the data are 32x32; set data.crop=224"):
        run_training(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_timm_model_trains_end_to_end(data, cache, tmp_path):
    cfg = load_config(None, overrides(data, cache, "model.name=timm/resnet10t", "train.epochs=1", "policy.name=full"))
    (record,) = run_training(cfg, output_dir=tmp_path)
    assert np.isfinite(record["train_loss"]) and record["val_samples"] == 12
    keys = set(load_checkpoint(tmp_path / LAST)["model"])
    assert keys == set(build_model("timm/resnet10t", 3).state_dict())


# ---------------------------------------------------------------- compile
def test_compile_settings_validated():
    cfg = load_config(None, ["data.root=x"])
    assert cfg.train.compile is False and cfg.train.compile_mode == "default"
    with pytest.raises(ConfigError, match="train.compile_mode: invalid value 'fast'; choose one of default, "
                                          "reduce-overhead, max-autotune"):
        load_config(None, ["data.root=x", "train.compile=true", "train.compile_mode=fast"])
    with pytest.raises(ValueError, match="Invalid compile mode: 'fast'"):
        compile_model(build_model("tiny", 3), "fast", torch.device("cpu"))


def test_compile_without_a_cpp_compiler_is_a_config_error_before_writing(data, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++")
    cfg = load_config(None, overrides(data, cache, "train.compile=true"))
    with pytest.raises(ConfigError, match="train.compile: torch.compile on the CPU needs a C\\+\\+ compiler and "
                                          "'no-such-c\\+\\+' is not on the PATH"):
        run_training(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compiled_model_runs_through_dynamo_and_keeps_plain_state_dict_keys(data, cache):
    cfg = load_config(None, overrides(data, cache, "train.compile=true"))
    model, bare = build_model_for(cfg, 3, CPU)
    assert model is bare
    eager = build_model("tiny", 3)
    eager.load_state_dict(bare.state_dict())  # strict: the same keys, no "_orig_mod." prefix
    assert list(bare.state_dict()) == list(eager.state_dict())
    traced = []
    bare.register_forward_pre_hook(lambda module, args: traced.append(torch.compiler.is_compiling()))
    x = torch.randn(4, 3, 32, 32)
    out = bare(x)
    assert traced == [True]  # the forward ran under dynamo (the hook was traced into the graph)
    out.sum().backward()
    eager_out = eager(x)
    eager_out.sum().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(bare.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)


def stop_before(monkeypatch, epoch: int) -> None:
    """Make run_training stop (as if killed) when it reaches ``epoch``, after the previous checkpoint."""
    original = loop_mod.train_one_epoch

    def wrapper(model, optimizer, scaler, it, e, cfg, rt, **extras):
        if e == epoch:
            raise RuntimeError("simulated stop")
        return original(model, optimizer, scaler, it, e, cfg, rt, **extras)

    monkeypatch.setattr(loop_mod, "train_one_epoch", wrapper)


@pytest.mark.slow
def test_compiled_checkpoint_resumes_uncompiled_and_back(data, cache, tmp_path, monkeypatch):
    """uncompiled epoch 0 -> compiled epoch 1 -> uncompiled epoch 2, against 3 uncompiled epochs."""
    base = overrides(data, cache, "train.epochs=3", "policy.name=orderdp",
                     "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5}")
    ref = run_training(load_config(None, base), output_dir=tmp_path / "ref")
    out = tmp_path / "chain"
    stop_before(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="simulated stop"):
        run_training(load_config(None, base), output_dir=out)
    monkeypatch.undo()
    stop_before(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated stop"):
        run_training(load_config(None, [*base, "train.compile=true"]), output_dir=out, resume="auto")
    monkeypatch.undo()
    state = load_checkpoint(out / LAST)
    assert state["epoch"] == 2 and state["config"]["train"]["compile"] is True
    assert list(state["model"]) == list(build_model("tiny", 3).state_dict())  # no "_orig_mod." prefix
    run_training(load_config(None, base), output_dir=out, resume="auto")
    chain = read_metrics(out)
    assert [r["epoch"] for r in chain] == [0, 1, 2]
    # The same plans, and losses equal up to the compiled kernels' rounding: the weights crossed over.
    for mine, theirs in zip(chain, ref):
        assert mine["plan_sha1"] == theirs["plan_sha1"]
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3)


@pytest.mark.slow
def test_compiled_ddp_training_with_torchrun(data, cache, tmp_path):
    """2 gloo ranks, each compiling its model before DDP wraps it (~1 CPU-minute cold)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "orderdp_dali.train", f"--output-dir={out}",
           *overrides(data, cache, "train.epochs=2", "train.batch_size=4", "train.compile=true", "policy.name=full")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)
    assert all(np.isfinite(r["train_loss"]) and r["val_samples"] == 12 for r in records)
    assert list(load_checkpoint(out / LAST)["model"]) == list(build_model("tiny", 3).state_dict())


# ------------------------------------------------- the CPU demo config, end to end
@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert cli.main(["make-data", str(root), "--mode", "small", "--classes", "4", "--train-per-class", "24",
                     "--val-per-class", "4", "--force"]) == 0
    return root


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    ["model.name=timm/resnet18"],
    # drop_last: no second (dynamic-shape) compilation for a short last batch; cold, ~2-5 min on 2 busy cores
    ["train.compile=true", "data.drop_last=true"],
], ids=["timm", "compile"])
def test_cpu_demo_config_trains(extra, demo_data, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--config", str(REPO / "configs" / "cpu_demo.yaml"), f"data.root={demo_data}",
            f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.progress=false", *extra,
            "--output-dir", str(out)]
    assert cli.main(argv) == 0
    (record,) = read_metrics(out)
    assert record["samples"] > 0 and np.isfinite(record["train_loss"]) and record["val_samples"] == 16
    saved = load_checkpoint(out / LAST)
    assert saved["config"]["model"]["name"] == ("timm/resnet18" if "timm" in extra[0] else "resnet18")
    assert not any(k.startswith("_orig_mod") for k in saved["model"])


@pytest.mark.slow
def test_compile_benchmark_times_eager_and_compiled_steps_in_pairs(tmp_path, capsys):
    from orderdp_dali.bench import train_overhead

    argv = ["--compile-compare", "--compile-models", "tiny", "--batch-size", "4", "--image-size", "16",
            "--steps", "3", "--warmup", "0", "--json", str(tmp_path / "r.json")]
    assert train_overhead.main(argv) == 0
    r = json.loads((tmp_path / "r.json").read_text())["compile"]["tiny"]
    assert len(r["eager_steps_s"]) == len(r["compiled_steps_s"]) == 3
    assert r["speedup"] == pytest.approx(r["eager_step_s"] / r["compiled_step_s"])
    assert r["compile_s"] > 0
    assert "eager/compiled" in capsys.readouterr().out


@pytest.mark.parametrize("dataset", ["folder", "tar"])
def test_fixed_input_size_is_checked_against_the_crop_of_jpeg_datasets(dataset):
    """Tar shards are cropped to data.crop like class folders (they were once taken for 32x32 arrays)."""
    from orderdp_dali.training.builders import build_model_for
    from orderdp_dali.training.runtime import Runtime

    rt = Runtime(0, 1, 0, torch.device("cpu"), False)
    vit = ["model.name=timm/vit_tiny_patch16_224", f"data.dataset={dataset}", "data.root=unused"]
    model, bare = build_model_for(load_config(None, [*vit, "data.crop=224"]), 3, rt)
    assert model is bare
    with pytest.raises(ConfigError, match=r"the data are 32x32; set data.crop=224"):
        build_model_for(load_config(None, [*vit, "data.crop=32"]), 3, rt)
