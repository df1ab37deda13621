"""A run loses nothing and says what went wrong in one line: output folders, validation
failures, non-finite losses, longer runs, file modes and the CLI's error lines."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import overrides, write_colour_dataset

from orderdp_dali.checkpoint import LAST, load_checkpoint
from orderdp_dali.cli.errors import describe_error
from orderdp_dali.config import load_config
from orderdp_dali.errors import ConfigError, DatasetError, DecodeError, NonFiniteLossError
from orderdp_dali.train import main, run_training

ORDERDP = "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.75}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("colours"), train_per_class=8, val_per_class=2)


def cfg(data: Path, cache: Path, *extra: str):
    return load_config(None, overrides(data, cache, "train.epochs=2", "train.eval_every=1", *extra))


def epochs_logged(out: Path):
    """The epochs of the log's epoch records (a line with a ``kind``, e.g. config_changes, is not one)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in records if "kind" not in r]


def test_a_fresh_run_into_a_used_output_dir_is_refused_and_touches_nothing(data, cache, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(data, cache), output_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.jsonl, last.pth\); continue it with "
                                          r"--resume auto, choose another --output-dir, or pass --overwrite"):
        run_training(cfg(data, cache), output_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    records = run_training(cfg(data, cache), output_dir=out, overwrite=True)
    assert [r["epoch"] for r in records] == [0, 1] and epochs_logged(out) == [0, 1]


def test_a_failing_validation_costs_no_training_and_the_epoch_is_logged_once(data, cache, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data, root)
    bad = sorted((root / "val" / "class_1").iterdir())[0]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])
    out = tmp_path / "run"
    with pytest.raises(DecodeError, match=str(bad)):
        run_training(cfg(root, tmp_path / "c"), output_dir=out)
    assert load_checkpoint(out / LAST)["epoch"] == 1  # epoch 0's training was kept
    assert not (out / "metrics.jsonl").exists() or epochs_logged(out) == []
    bad.write_bytes(good)
    records = run_training(cfg(root, tmp_path / "c"), output_dir=out, resume="auto")
    assert [r["epoch"] for r in records] == [1]
    assert epochs_logged(out) == [0, 1]  # epoch 0 from its checkpoint, exactly once


def test_a_non_finite_loss_stops_the_run_where_it_happens(data, cache, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(data, cache, "train.epochs=1"), output_dir=out)
    checkpoint = (out / LAST).read_bytes()
    diverging = cfg(data, cache, "train.epochs=3", "optim.lr=1e12", "train.print_freq=2")
    named = r"^epoch 1, step \d+: the training loss is not finite.*optim.lr=1e\+12"
    with pytest.raises(NonFiniteLossError, match=named):  # another lr on resume: allowed explicitly
        run_training(diverging, output_dir=out, resume="auto", allow_changes=True)
    assert (out / LAST).read_bytes() == checkpoint  # the last good checkpoint, untouched
    assert epochs_logged(out) == [0]


def test_no_validation_split_is_needed_without_evaluation(data, cache, tmp_path):
    root = tmp_path / "train only"
    shutil.copytree(data / "train", root / "train")
    records = run_training(cfg(root, cache, "train.eval_every=0", "train.epochs=1"), output_dir=tmp_path / "run")
    assert len(records) == 1 and "val_top1" not in records[0]
    with pytest.raises(DatasetError, match="val"):
        run_training(cfg(root, cache, "train.epochs=1"), output_dir=tmp_path / "run2")


def test_a_finished_run_can_be_extended_where_the_plans_do_not_depend_on_the_epoch_count(data, cache, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(data, cache, "policy.name=orderdp", ORDERDP), output_dir=out)
    records = run_training(cfg(data, cache, "policy.name=orderdp", ORDERDP, "train.epochs=3"), output_dir=out,
                           resume="auto")
    assert [r["epoch"] for r in records] == [2] and epochs_logged(out) == [0, 1, 2]
    ib = tmp_path / "infobatch"
    run_training(cfg(data, cache, "policy.name=infobatch"), output_dir=ib)
    with pytest.raises(Exception, match="moves infobatch's annealing"):
        run_training(cfg(data, cache, "policy.name=infobatch", "train.epochs=4"), output_dir=ib, resume="auto")


def test_files_follow_the_umask(data, cache, tmp_path):
    previous = os.umask(0o027)
    try:
        run_training(cfg(data, cache, "train.epochs=1"), output_dir=tmp_path / "run")
    finally:
        os.umask(previous)
    for name in (LAST, "config.json", "metrics.jsonl"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name


def test_the_cli_prints_one_line_and_the_traceback_only_on_request(data, cache, tmp_path, capsys, monkeypatch):
    args = [*overrides(data, cache), "data.crop=100000", "--output-dir", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("orderdp-dali train: error: data.crop") and "\n" not in err

    def broken(*a, **kw):
        raise RuntimeError("something internal\nwith a second line")

    monkeypatch.setattr("orderdp_dali.cli.train.run_training", broken)  # where the command looks it up
    assert main(overrides(data, cache)) == 1
    err = capsys.readouterr().err.strip()
    assert err == "orderdp-dali train: error: RuntimeError: something internal (run with --debug for the traceback)"
    with pytest.raises(RuntimeError, match="something internal"):
        main([*overrides(data, cache), "--debug"])
    monkeypatch.setenv("ORDERDP_DALI_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(overrides(data, cache))


@pytest.mark.parametrize("error, code, text", [
    (OSError(28, "No space left on device", "/r/last.pth"), 1, "no space left on the device (/r/last.pth)"),
    (PermissionError(13, "Permission denied", "/r"), 1, "cannot write (/r): Permission denied; choose a writable"),
    (RuntimeError("std::bad_alloc"), 1, "out of memory (std::bad_alloc): lower train.batch_size"),
    (DecodeError("cannot read or decode sample 3 (x.JPEG)"), 1, "cannot read or decode sample 3 (x.JPEG)"),
    (ConfigError("data.crop: bad"), 2, "data.crop: bad"),
])
def test_describe_error(error, code, text):
    got_code, message = describe_error(error)
    assert got_code == code and message.startswith(text) and "\n" not in message


def test_a_full_disk_while_checkpointing_is_named(tmp_path, monkeypatch):
    from orderdp_dali import checkpoint

    def enforce_fail(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoint.torch, "save", enforce_fail)
    with pytest.raises(OSError) as err:
        checkpoint.save_checkpoint({"w": torch.ones(2)}, tmp_path / LAST)
    assert err.value.errno == 28 and err.value.filename == str(tmp_path / LAST)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_a_one_class_dataset_is_refused_for_loss_ranking_policies(data, tmp_path):
    root = tmp_path / "one"
    for split in ("train", "val"):
        shutil.copytree(data / split / "class_0", root / split / "class_0")
    for policy in ("orderdp", "infobatch"):
        with pytest.raises(DatasetError, match=rf"holds a single class: .*policy '{policy}' would rank noise"):
            run_training(cfg(root, tmp_path / "c", f"policy.name={policy}"), output_dir=tmp_path / policy)
    assert len(run_training(cfg(root, tmp_path / "c", "train.epochs=1"), output_dir=tmp_path / "full")) == 1


def test_an_exclusion_list_of_another_dataset_is_refused(data, cache, tmp_path):
    from orderdp_dali.check_data import check_dataset, write_report

    other = write_colour_dataset(tmp_path / "other", train_per_class=3, val_per_class=1)
    listed = write_report(check_dataset(other, workers=1, progress=False), tmp_path / "bad.json")
    with pytest.raises(DatasetError, match=r"data.exclude_file: .*bad.json was written .* for .*other"):
        run_training(cfg(data, cache, f"data.exclude_file={listed}"), output_dir=tmp_path / "run")
