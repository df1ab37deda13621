"""A resume continues the checkpoint's recipe: a change of what the remaining epochs compute is
refused, naming the keys, unless --allow-changes; then it is recorded, never written over the
run's first record. How a run executes (threads, paths, output) may change freely."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest
from train_helpers import overrides, write_colour_dataset

from orderdp_dali.checkpoint import LAST, check_resumable, load_checkpoint
from orderdp_dali.config import RUNTIME_KEYS, Config, config_changes, flatten, load_config
from orderdp_dali.errors import CheckpointError
from orderdp_dali.policies import make_policy
from orderdp_dali.train import main, run_training

ORDERDP = ["policy.name=orderdp", "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.75}"]
BASE = ["data.root=/data/x", "model.name=tiny", "train.epochs=5", "data.crop=32", "data.val_resize=36", *ORDERDP]


# ----------------------------------------------------------------- the rule, without training
def checkpoint_of(cfg: Config, epoch: int = 1) -> Dict[str, Any]:
    """What check_resumable reads of a checkpoint written by a run of ``cfg`` after ``epoch`` epochs."""
    policy = make_policy(cfg.policy.name, 100, seed=cfg.train.seed, num_epochs=cfg.train.epochs, **cfg.policy.params)
    return {"dataset": "fingerprint", "epoch": epoch, "config": cfg.to_dict(),
            "iterator": {"policy": policy.state_dict()}}


def check(saved: Config, now: Config, allow_changes: bool = False, epoch: int = 1):
    policy = make_policy(now.policy.name, 100, seed=now.train.seed, num_epochs=now.train.epochs, **now.policy.params)
    return check_resumable(checkpoint_of(saved, epoch), "run/last.pth", "fingerprint", policy, now.to_dict(),
                           allow_changes)


@pytest.mark.parametrize("change, old, new", [
    ("optim.lr=0.2", "0.1", "0.2"),
    ("train.batch_size=64", "128", "64"),
    ("data.crop=28", "32", "28"),
    ("data.augment=false", "true", "false"),
    ("train.label_smoothing=0.1", "0.0", "0.1"),
    ("schedule.name=cosine", '"onecycle"', '"cosine"'),
    ("optim.weight_decay=0.0", "0.0001", "0.0"),
    ("train.amp=bf16", '"none"', '"bf16"'),
    ("data.dtype=float16", '"float32"', '"float16"'),
    ("train.epochs=3", "5", "3"),  # fewer epochs: the schedule's end moves
    ("schedule.pct_start=0.3", "0.25", "0.3"),
    ("optim.momentum=0.8", "0.9", "0.8"),
    ("data.drop_last=true", "false", "true"),
    ("data.val_resize=40", "36", "40"),
    ("model.num_classes=10", "0", "10"),
    ("optim.max_grad_norm=1.0", "null", "1.0"),
])
def test_a_recipe_change_is_refused_naming_the_key_and_both_values(change, old, new):
    saved, now = load_config(None, BASE), load_config(None, [*BASE, change])
    key = change.split("=")[0]
    with pytest.raises(CheckpointError) as err:
        check(saved, now)
    message = str(err.value)
    assert message.startswith(f"checkpoint run/last.pth was trained with another recipe ({key} {old} -> {new}): ")
    assert f"resume with the checkpoint's values ({key}={old}), or pass --allow-changes" in message
    assert check(saved, now, allow_changes=True) == {key: (json.loads(old), json.loads(new))}


@pytest.mark.parametrize("change", [
    "data.num_threads=8", "data.prefetch=4", "train.progress=false", "train.print_freq=7",
    "train.output_dir=/elsewhere", "data.root=/moved/x", "data.cache_dir=/cache", "train.eval_every=0",
    "train.checkpoint=false", "train.save_every=2", "train.dist_timeout_s=60", "data.hw_decoder_load=0.3",
    "train.compile=true", "train.deterministic=true", "model.channels_last=true", "train.tensorboard=true",
    "train.epochs=9",  # more epochs: OrderDP's plans do not depend on the count
])
def test_how_a_run_executes_may_change(change):
    saved, now = load_config(None, BASE), load_config(None, [*BASE, change])
    assert config_changes(saved.to_dict(), now.to_dict())  # a difference...
    assert check(saved, now) == {}  # ...that needs no permission


def test_every_runtime_key_is_a_setting_and_the_recipe_is_the_rest():
    keys = set(flatten(Config().to_dict()))
    assert RUNTIME_KEYS <= keys
    recipe = keys - RUNTIME_KEYS
    assert {"optim.lr", "train.batch_size", "data.crop", "data.augment", "train.label_smoothing", "schedule.name",
            "optim.weight_decay", "train.amp", "data.dtype", "train.epochs"} <= recipe


def test_refusals_that_allow_changes_does_not_lift():
    saved = load_config(None, BASE)
    with pytest.raises(CheckpointError, match=r"has trained 4 epochs, this run asks for train.epochs=3: resume with "
                                              r"train.epochs >= 4"):
        check(saved, load_config(None, [*BASE, "train.epochs=3"]), allow_changes=True, epoch=4)
    with pytest.raises(CheckpointError, match=r"other orderdp settings \(top_q_ratio 0.75 -> 0.5\)"):
        check(saved, load_config(None, [*BASE, "policy.params.top_q_ratio=0.5"]), allow_changes=True)
    with pytest.raises(CheckpointError, match=r"other orderdp settings \(seed 0 -> 1\)"):
        check(saved, load_config(None, [*BASE, "train.seed=1"]), allow_changes=True)
    with pytest.raises(CheckpointError, match="optim.name=sgd, this run asks for lars"):
        check(saved, load_config(None, [*BASE, "optim.name=lars"]), allow_changes=True)


def test_many_changes_stay_one_readable_line():
    saved = load_config(None, BASE)
    changes = ["optim.lr=0.2", "optim.momentum=0.8", "optim.weight_decay=0", "train.batch_size=64",
               "train.label_smoothing=0.1", "schedule.name=cosine", "data.crop=30", "data.augment=false"]
    with pytest.raises(CheckpointError) as err:
        check(saved, load_config(None, [*BASE, *changes]))
    message = str(err.value)
    assert "\n" not in message and len(message) < 900
    assert message.count(" -> ") == 6 and "and 2 more)" in message
    assert set(check(saved, load_config(None, [*BASE, *changes]), allow_changes=True)) == {
        c.split("=")[0] for c in changes}


def test_a_checkpoint_older_than_a_setting_says_nothing_about_it():
    saved, now = load_config(None, BASE), load_config(None, [*BASE, "data.dtype=float16"])
    state = checkpoint_of(saved)
    del state["config"]["data"]["dtype"]  # written before data.dtype existed
    policy = make_policy("orderdp", 100, num_epochs=5, random_len_ratio=0.8, top_q_ratio=0.75)
    assert check_resumable(state, "old.pth", "fingerprint", policy, now.to_dict()) == {}


# ----------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("colours"), train_per_class=8, val_per_class=2)


def cfg(data: Path, cache: Path, *extra: str) -> Config:
    return load_config(None, overrides(data, cache, "train.eval_every=0", *ORDERDP, *extra))


def lines(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def files(out: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_a_changed_recipe_is_refused_touching_nothing_and_recorded_when_allowed(data, cache, tmp_path, capsys):
    out = tmp_path / "run"
    run_training(cfg(data, cache, "train.epochs=1"), output_dir=out)
    before = files(out)
    first_config = json.loads((out / "config.json").read_text())
    assert first_config["optim"]["lr"] == 0.05

    # the CLI: one line naming the key, exit 2, nothing touched
    args = [*overrides(data, cache, "train.eval_every=0", *ORDERDP), "train.epochs=2", "optim.lr=0.1",
            "train.batch_size=4", "--resume", "auto", "--output-dir", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"orderdp-dali train: error: checkpoint {out / LAST} was trained with "
                                               "another recipe (optim.lr 0.05 -> 0.1, train.batch_size 8 -> 4)")
    assert files(out) == before

    # --allow-changes: continues, records the change beside the first record
    assert main([*args, "--allow-changes"]) == 0
    assert (out / "config.json").read_bytes() == before["config.json"]  # the first epoch's record, untouched
    later = json.loads((out / "config.1.json").read_text())
    assert (later["optim"]["lr"], later["train"]["batch_size"], later["train"]["epochs"]) == (0.1, 4, 2)
    logged = lines(out)
    assert logged[0] == json.loads(before["metrics.jsonl"])  # epoch 0's line as it was
    assert logged[1] == {"kind": "config_changes", "epoch": 1, "config": "config.1.json",
                         "changes": {"optim.lr": {"old": 0.05, "new": 0.1}, "train.batch_size": {"old": 8, "new": 4}}}
    assert [r["epoch"] for r in logged if "kind" not in r] == [0, 1]
    assert logged[2]["lr"] <= 0.1 and logged[2]["steps"] > json.loads(before["metrics.jsonl"])["steps"]
    assert load_checkpoint(out / LAST)["config"]["optim"]["lr"] == 0.1

    # resuming the changed run with its own recipe needs no permission; the record of the change stays
    run_training(cfg(data, cache, "train.epochs=3", "optim.lr=0.1", "train.batch_size=4"), output_dir=out,
                 resume="auto")
    assert [(r.get("kind"), r["epoch"]) for r in lines(out)] == [
        (None, 0), ("config_changes", 1), (None, 1), (None, 2)]
    assert json.loads((out / "config.2.json").read_text())["train"]["epochs"] == 3  # only train.epochs grew
    assert (out / "config.json").read_bytes() == before["config.json"]


def test_a_checkpoint_resumed_into_a_new_folder_records_both_configs(data, cache, tmp_path):
    first = tmp_path / "first"
    run_training(cfg(data, cache, "train.epochs=1"), output_dir=first)
    out = tmp_path / "second"
    run_training(cfg(data, cache, "train.epochs=2", "optim.lr=0.1"), output_dir=out, resume=str(first / LAST),
                 allow_changes=True)
    assert (out / "config.json").read_bytes() == (first / "config.json").read_bytes()  # how epoch 0 was trained
    assert json.loads((out / "config.1.json").read_text())["optim"]["lr"] == 0.1
    assert [(r.get("kind"), r["epoch"]) for r in lines(out)] == [(None, 0), ("config_changes", 1), (None, 1)]


def test_a_rerun_epoch_drops_its_stale_change_record_and_the_epoch_before_is_logged_once(
        data, cache, tmp_path, monkeypatch):
    """Epoch 1, trained with an allowed change, checkpoints and then dies before its metrics line:
    the change's line (epoch 1) must not pass for epoch 1's record on the next resume. Re-running
    epoch 1 from its kept checkpoint with the first recipe drops the change's records with it."""
    from orderdp_dali.training import run as run_mod

    out = tmp_path / "run"
    run_training(cfg(data, cache, "train.epochs=1", "train.save_every=1"), output_dir=out)
    real_append = run_mod._append_metrics

    def dies_before_epoch_1s_line(path, record):
        if record.get("epoch") == 1 and "kind" not in record:
            raise RuntimeError("simulated crash after the checkpoint")
        real_append(path, record)

    monkeypatch.setattr(run_mod, "_append_metrics", dies_before_epoch_1s_line)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg(data, cache, "train.epochs=2", "train.save_every=1", "optim.lr=0.1"), output_dir=out,
                     resume="auto", allow_changes=True)
    monkeypatch.undo()
    assert load_checkpoint(out / LAST)["epoch"] == 2
    assert [(r.get("kind"), r["epoch"]) for r in lines(out)] == [(None, 0), ("config_changes", 1)]
    run_training(cfg(data, cache, "train.epochs=2", "train.save_every=1", "optim.lr=0.1"), output_dir=out,
                 resume="auto")
    assert [(r.get("kind"), r["epoch"]) for r in lines(out)] == [(None, 0), ("config_changes", 1), (None, 1)]
    assert (out / "config.1.json").is_file()

    run_training(cfg(data, cache, "train.epochs=2", "train.save_every=1"), output_dir=out,
                 resume=str(out / "epoch_0001.pth"))
    assert [(r.get("kind"), r["epoch"]) for r in lines(out)] == [(None, 0), (None, 1)]
    # config.1.json now describes the re-run epoch 1: the first lr, only train.epochs grown (1 -> 2)
    assert json.loads((out / "config.1.json").read_text())["optim"]["lr"] == 0.05
    assert load_checkpoint(out / LAST)["config"]["optim"]["lr"] == 0.05


def test_record_config_keeps_the_first_record_and_drops_those_of_epochs_run_again(tmp_path):
    from orderdp_dali.checkpoint import record_config

    first, later = load_config(None, BASE).to_dict(), load_config(None, [*BASE, "optim.lr=0.3"]).to_dict()
    assert record_config(tmp_path, first) is None  # a fresh run
    assert json.loads((tmp_path / "config.json").read_text()) == first
    for epoch in (1, 3, 4):
        (tmp_path / f"config.{epoch}.json").write_text("{}")
    (tmp_path / "config.x.json").write_text("{}")  # not a record of ours
    assert record_config(tmp_path, later, start=3, saved=later) is None  # epoch 3 run again, unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.1.json", "config.json", "config.x.json"]
    assert json.loads((tmp_path / "config.json").read_text()) == first  # never rewritten by a resume
    assert record_config(tmp_path, later, start=3, saved=first) == tmp_path / "config.3.json"
    assert json.loads((tmp_path / "config.3.json").read_text()) == later
    (tmp_path / "config.json").unlink()  # e.g. a checkpoint resumed into a new folder
    record_config(tmp_path, later, start=5, saved=first)
    assert json.loads((tmp_path / "config.json").read_text()) == first
