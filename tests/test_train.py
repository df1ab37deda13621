"""End-to-end CPU training: every policy trains, validates, logs and checkpoints; resume is exact.

Runs go through DALI's CPU backend with one thread on tiny 32 px images.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from train_helpers import overrides, write_colour_dataset

from orderdp_dali.checkpoint import LAST, load_checkpoint, save_checkpoint
from orderdp_dali.config import load_config
from orderdp_dali.data.cifar import load_cifar
from orderdp_dali.errors import CheckpointError, DatasetError
from orderdp_dali.models import build_model
from orderdp_dali.optim import build_optimizer
from orderdp_dali.train import build_data, main, run_training
from orderdp_dali.training import loop as loop_mod

N_TRAIN, N_VAL = 48, 12  # 3 classes x (16 train + 4 val)
ORDERDP = "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5}"


def make_cfg(data: Path, cache: Path, *extra: str):
    return load_config(None, overrides(data, cache, *extra))


def read_metrics(out: Path) -> List[Dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ every policy
POLICY_RUNS = {
    # policy -> (extra overrides, planned samples per epoch); each also exercises an optimizer / precision
    "full": (["policy.name=full", "optim.name=lars", "train.amp=bf16", "model.channels_last=true",
              "train.label_smoothing=0.1", "optim.decay_norm_and_bias=false", "train.save_every=1"], 48),
    "orderdp": (["policy.name=orderdp", ORDERDP, "optim.nesterov=true", "schedule.name=onecycle"], 19),
    "uniform": (["policy.name=uniform", "policy.params={keep_ratio: 0.5}", "optim.name=lamb", "optim.lr=0.01",
                 "train.amp=fp16", "optim.max_grad_norm=5.0"], 24),
    "infobatch": (["policy.name=infobatch", "policy.params={prune_ratio: 0.5, anneal_delta: 0.875}",
                   "schedule.name=step", "schedule.milestones=[1]"], None),
}


CHECKPOINT_KEYS = ["version", "epoch", "model", "optimizer", "scaler", "iterator", "config", "dataset", "planned",
                   "record", "run_id", "steps_done", "ema"]


@pytest.mark.parametrize("policy", sorted(POLICY_RUNS))
def test_each_policy_trains_validates_logs_and_checkpoints(policy, data, cache, tmp_path):
    extra, planned = POLICY_RUNS[policy]
    cfg = make_cfg(data, cache, "train.epochs=2", *extra)
    records = run_training(cfg, output_dir=tmp_path)

    assert [r["epoch"] for r in records] == [0, 1]
    assert read_metrics(tmp_path) == json.loads(json.dumps(records))
    for r in records:
        assert r["policy"] == policy and r["steps"] == -(-r["planned"] // 8)
        assert r["samples"] == r["planned"]
        assert r["val_samples"] == N_VAL and 0 <= r["val_top1"] <= r["val_top5"] <= 100
        assert np.isfinite(r["train_loss"]) and r["lr"] > 0 and r["images_per_s"] > 0
        assert 0 <= r["data_time"] <= r["epoch_time"]
    if planned is not None:
        assert [r["planned"] for r in records] == [planned, planned]
    if policy == "infobatch":
        assert records[0]["planned"] == N_TRAIN  # all scores unseen (equal): none below the mean yet
    assert records[-1]["fraction_saved"] == pytest.approx(1 - sum(r["planned"] for r in records) / (2 * N_TRAIN))

    state = load_checkpoint(tmp_path / LAST)
    assert list(state) == CHECKPOINT_KEYS  # the saver's keys and their order, as version 1 has them
    assert state["version"] == 1 and state["run_id"] == records[0]["run_id"] and state["ema"] is None
    assert state["steps_done"] == sum(r["steps"] for r in records)
    before_validation = {k: v for k, v in records[-1].items() if not k.startswith("val_") and k != "pipelines_built"}
    assert json.loads(state["record"]) == json.loads(json.dumps(before_validation))
    assert state["epoch"] == 2 and state["config"] == cfg.to_dict()
    assert state["planned"] == [r["planned"] for r in records]
    assert state["iterator"]["epoch"] == 2 and state["iterator"]["policy"]["policy"] == policy
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    kept = sorted(p.name for p in tmp_path.glob("epoch_*.pth"))
    assert kept == (["epoch_0001.pth", "epoch_0002.pth"] if policy == "full" else [])
    if kept:  # each kept file is its epoch's state, not a link that follows last.pth
        assert load_checkpoint(tmp_path / kept[0])["epoch"] == 1


# ------------------------------------------------- loss, crash and resume
def record_plans(monkeypatch, plans: Dict[int, np.ndarray], crash_at: int = -1) -> None:
    """Wrap train_one_epoch to remember each epoch's global plan (and crash at ``crash_at``)."""
    original = loop_mod.train_one_epoch

    def wrapper(model, optimizer, scaler, it, epoch, cfg, rt, **extras):
        if epoch == crash_at:
            raise RuntimeError("simulated crash")
        plans[epoch] = it.plan.indices.copy()
        return original(model, optimizer, scaler, it, epoch, cfg, rt, **extras)

    monkeypatch.setattr(loop_mod, "train_one_epoch", wrapper)


# Random crops and flips stay on: the checkpoint's DALI pipeline state makes the resumed run's
# inputs, and so its weights, bit-identical.
RESUME = ("train.epochs=4", "policy.name=orderdp", ORDERDP, "train.eval_every=0")


@pytest.fixture(scope="module")
def uninterrupted(data, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    plans: Dict[int, np.ndarray] = {}
    with pytest.MonkeyPatch.context() as mp:
        record_plans(mp, plans)
        records = run_training(make_cfg(data, cache, *RESUME), output_dir=out)
    return out, plans, records


def test_loss_goes_down(uninterrupted):
    _, _, records = uninterrupted
    losses = [r["train_loss_unweighted"] for r in records]
    assert losses[-1] < 0.5 * losses[0], losses


def test_kill_and_resume_equals_uninterrupted(uninterrupted, data, cache, tmp_path, monkeypatch):
    ref_out, ref_plans, _ = uninterrupted
    cfg = make_cfg(data, cache, *RESUME)
    first: Dict[int, np.ndarray] = {}
    record_plans(monkeypatch, first, crash_at=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, output_dir=tmp_path, resume="auto")  # no checkpoint yet: fresh start
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 2
    with open(tmp_path / "metrics.jsonl", "a") as f:  # as if epoch 2 had logged before the crash
        f.write(json.dumps({"epoch": 2, "stale": True}) + "\n")

    second: Dict[int, np.ndarray] = {}
    monkeypatch.undo()
    record_plans(monkeypatch, second)
    records = run_training(cfg, output_dir=tmp_path, resume="auto")

    assert [r["epoch"] for r in records] == [2, 3]
    _, _, ref_records = uninterrupted
    for key in ("train_loss", "train_loss_unweighted"):  # the checkpoint's pipeline state: the same crops
        assert [r[key] for r in records] == [r[key] for r in ref_records[2:]], key
    assert sorted(first) == [0, 1] and sorted(second) == [2, 3]
    for epoch, plan in {**first, **second}.items():
        np.testing.assert_array_equal(plan, ref_plans[epoch])
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
    assert not any(r.get("stale") for r in read_metrics(tmp_path))

    ours, ref = load_checkpoint(tmp_path / LAST), load_checkpoint(ref_out / LAST)
    assert ours["planned"] == ref["planned"]
    for key, value in ref["model"].items():  # same inputs, deterministic CPU kernels: same weights
        assert torch.equal(ours["model"][key], value), key
    ref_scores, our_scores = ref["iterator"]["policy"]["scores"], ours["iterator"]["policy"]["scores"]
    assert torch.equal(our_scores["values"], ref_scores["values"])


def test_a_run_builds_one_training_and_one_validation_pipeline(data, cache, tmp_path, monkeypatch):
    """Four epochs, validating after each: DALI pipelines constructed = 2 (one per split), none
    of them inside a timed epoch."""
    from nvidia.dali.pipeline import Pipeline

    built = []
    original = Pipeline.__init__
    monkeypatch.setattr(Pipeline, "__init__", lambda self, *a, **kw: (built.append(1), original(self, *a, **kw))[1])
    records = run_training(make_cfg(data, cache, "train.epochs=4", "train.eval_every=1"), output_dir=tmp_path)
    assert len(built) == 2
    assert [r["pipelines_built"] for r in records] == [2, 2, 2, 2]
    assert all(r["pipeline_prestarted"] and r["val_samples"] == N_VAL for r in records)
    assert [r["pipeline_built"] for r in records] == [True, False, False, False]  # at start-up, outside epoch 0


def test_resume_refuses_another_policy_or_dataset(uninterrupted, data, cache, tmp_path):
    ckpt = str(uninterrupted[0] / LAST)
    other_policy = make_cfg(data, cache, *RESUME, "policy.params.top_q_ratio=0.6")
    other = r"was made with other orderdp settings \(top_q_ratio 0.5 -> 0.6\): resume with the checkpoint's settings"
    with pytest.raises(CheckpointError, match=other):
        run_training(other_policy, output_dir=tmp_path, resume=ckpt)
    model = "model.name=tiny, this run asks for resnet18: resume with model.name=tiny"
    with pytest.raises(CheckpointError, match=model):
        run_training(make_cfg(data, cache, *RESUME, "model.name=resnet18"), output_dir=tmp_path, resume=ckpt)
    with pytest.raises(CheckpointError, match="policy 'orderdp', this run asks for 'full'"):
        full = make_cfg(data, cache, *RESUME, "policy.name=full", "policy.params={}")
        run_training(full, output_dir=tmp_path, resume=ckpt)
    other_data = write_colour_dataset(tmp_path / "other", train_per_class=17)  # other files
    with pytest.raises(CheckpointError, match="another dataset"):
        run_training(make_cfg(other_data, cache, *RESUME), output_dir=tmp_path, resume=ckpt)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        run_training(make_cfg(data, cache, *RESUME), output_dir=tmp_path, resume=str(tmp_path / "nope.pth"))


# ------------------------------------------------------------- checkpoints
def test_crash_while_writing_a_checkpoint_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / LAST
    save_checkpoint({"version": 1, "epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def dies_midway(obj, f):
        real_save(obj, f)
        f.truncate(10)  # half-written
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"version": 1, "epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left behind


def test_corrupt_or_foreign_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not an orderdp-dali checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")


# ------------------------------------------------------------------ errors
def test_missing_data_root(cache, tmp_path):
    with pytest.raises(DatasetError, match="is not a directory"):
        run_training(make_cfg(tmp_path / "nowhere", cache), output_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="dataset split not found: .*empty/train"):
        run_training(make_cfg(tmp_path / "empty", cache), output_dir=tmp_path)


def test_exclude_file_from_check_data(data, cache, tmp_path):
    bad = data / "train" / "class_1" / "003.JPEG"
    listing = tmp_path / "bad.txt"
    listing.write_text(f"# orderdp-dali check-data\ntruncated\t{bad}\n")
    built = build_data(make_cfg(data, cache, f"data.exclude_file={listing}"))
    assert len(built.train) == N_TRAIN - 1 and len(built.val) == N_VAL
    assert "class_1/003.JPEG" not in built.train.paths.tolist()
    with pytest.raises(DatasetError, match="data.exclude_file"):
        build_data(make_cfg(data, cache, f"data.exclude_file={tmp_path / 'missing.txt'}"))


def test_main_reports_errors_and_prints_config(data, cache, tmp_path, capsys):
    args = [f"--output-dir={tmp_path}", *overrides(data, cache)]
    assert main([*args, "train.epochs=0"]) == 2
    assert "train.epochs: 0 out of range" in capsys.readouterr().err
    assert main([*args, "data.root=/no/such/folder"]) == 2
    assert "/no/such/folder is not a directory" in capsys.readouterr().err
    assert main([*args, "model.num_classes=2"]) == 2
    assert "model.num_classes: 2 is fewer than the 3 classes" in capsys.readouterr().err
    assert main([*args, "--print-config", "train.epochs=3"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["epochs"] == 3


# ------------------------------------------------------------------- CIFAR
def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> Path:
    """A miniature cifar-10-batches-py: 5 train batches + test batch, class = dominant channel."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n: int) -> Dict[bytes, object]:
        labels = rng.integers(0, 3, size=n)
        chw = rng.integers(0, 60, size=(n, 3, 32, 32), dtype=np.uint8)
        chw[np.arange(n), labels] += 180  # the label's channel is bright
        return {b"data": chw.reshape(n, 3072), b"labels": labels.tolist()}

    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(per_batch), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"red", b"green", b"blue"]}, f)
    return root


def test_cifar_loading_and_errors(tmp_path):
    root = write_cifar10(tmp_path / "c")
    train = load_cifar(root, "cifar10", "train")
    assert train.images.shape == (30, 32, 32, 3) and train.classes == ("red", "green", "blue")
    brightest = train.images.reshape(30, -1, 3).mean(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(brightest, train.labels)  # CHW rows became HWC correctly
    assert load_cifar(root / "cifar-10-batches-py", "cifar10", "val").images.shape == (6, 32, 32, 3)

    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py lacks data_batch_3"):
        load_cifar(root, "cifar10", "train")
    with pytest.raises(DatasetError, match=r"no CIFAR batch files under .*cifar-100-python"):
        load_cifar(root, "cifar100", "train")

    evil = tmp_path / "evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    (evil / "test_batch").write_bytes(pickle.dumps({b"data": __import__("os").getcwd}))
    (evil / "batches.meta").write_bytes(pickle.dumps({}))
    with pytest.raises(DatasetError, match="refusing to load"):
        load_cifar(tmp_path / "evil", "cifar10", "val")


def test_cifar_trains_end_to_end(tmp_path, cache):
    root = write_cifar10(tmp_path / "c")
    cfg = make_cfg(root, cache, "data.dataset=cifar10", "train.epochs=1", "policy.name=orderdp", ORDERDP)
    (record,) = run_training(cfg, output_dir=tmp_path / "out")
    assert record["planned"] == 12 and record["val_samples"] == 6  # s = 24, q = 12 of 30


# ------------------------------------------------------------- components
@pytest.mark.parametrize("name, shape", [("tiny", 32), ("cifar_resnet18", 32), ("resnet18", 64)])
def test_models(name, shape):
    model = build_model(name, 7).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, shape, shape)).shape == (2, 7)
    if name.startswith("cifar"):
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("name", ["sgd", "lars", "lamb"])
def test_optimizers_and_norm_decay_groups(name, data, cache):
    cfg = make_cfg(data, cache, f"optim.name={name}", "optim.decay_norm_and_bias=false", "optim.weight_decay=0.01")
    opt = build_optimizer(cfg, build_model("tiny", 3))
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.01]
    assert all(p.ndim <= 1 for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"])


def test_float16_pipeline_output_trains_and_validates(data, cache, tmp_path):
    """data.dtype=float16 halves the pipeline's output; without AMP the loop feeds float32 weights."""
    cfg = make_cfg(data, cache, "data.dtype=float16", "train.epochs=1", "train.eval_every=1", "policy.name=full")
    (record,) = run_training(cfg, output_dir=tmp_path)
    assert np.isfinite(record["train_loss"]) and record["val_samples"] == 12


def test_a_last_batch_of_one_sample_trains_with_batchnorm(data, cache, tmp_path):
    """48 samples in batches of 47 end in a 1-sample batch, which BatchNorm cannot train on
    (ResNet-18 at 32 px has 1x1 maps in its last stage): it is merged into the batch before."""
    cfg = make_cfg(data, cache, "model.name=resnet18", "train.batch_size=47", "train.epochs=1", "train.eval_every=0")
    (record,) = run_training(cfg, output_dir=tmp_path)
    assert record["steps"] == 1 and record["samples"] == record["planned"] == N_TRAIN


def test_ranking_figures_read_the_table_the_plan_was_chosen_from(data, cache, tmp_path):
    """Under policy.params.score_lag=1 epoch 1's plan is chosen from the initial table (the
    release's random second epoch): its ranking figures see no stored score, although the
    current table holds epoch 0's losses."""
    lag = "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.5, score_lag: 1}"
    records = run_training(make_cfg(data, cache, "train.epochs=3", "policy.name=orderdp", lag), output_dir=tmp_path)
    assert [r["ranking_kept_unseen"] for r in records[:2]] == [r["planned"] for r in records[:2]]
    assert records[1]["ranking_score_ratio"] is None and records[1]["ranking_spearman"] is None
    assert records[2]["ranking_uniform_unseen"] < records[2]["planned"]  # epoch 2: epoch 0's scores
