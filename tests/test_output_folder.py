"""An output folder belongs to one run: its lock, resumes that would write over another run,
a damaged metrics log, temporary files a killed run left, and ``bench --out`` over an old bench.

In-process runs of the tiny CNN on a small colour dataset (CPU, one DALI thread). A lock
holder or a killed writer is a subprocess, so it has a PID of its own and really dies.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from train_helpers import overrides, write_colour_dataset

from orderdp_dali import atomic
from orderdp_dali.checkpoint import LAST, METRICS, load_checkpoint, trim_metrics
from orderdp_dali.config import load_config
from orderdp_dali.errors import CheckpointError, ConfigError
from orderdp_dali.folder_lock import LOCK_NAME, FolderLock, OutputDirInUseError
from orderdp_dali.train import run_training

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("colours"), train_per_class=6, val_per_class=2)


def cfg(data: Path, cache: Path, *extra: str):
    return load_config(None, overrides(data, cache, "train.eval_every=0", *extra))


def files(out: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def logged(out: Path) -> List[dict]:
    return [json.loads(line) for line in (out / METRICS).read_text(encoding="utf-8").splitlines()]


def start_python(code: str, ready: str) -> subprocess.Popen:
    """A Python subprocess running ``code``; returns once it printed ``ready`` on stdout."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if line.strip() != ready:
        proc.kill()
        pytest.fail(f"helper process did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# ----------------------------------------------------------------- the lock
def test_a_run_into_a_folder_in_use_is_refused_naming_the_holder_until_it_dies(data, cache, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(data, cache, "train.epochs=1"), output_dir=out)
    holder = start_python(f"""
        import sys, time
        from orderdp_dali.folder_lock import FolderLock
        lock = FolderLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
        """, "locked")
    try:
        before = files(out)
        assert LOCK_NAME in before
        for resume, overwrite in ((None, False), ("auto", False), (None, True)):
            with pytest.raises(OutputDirInUseError, match=rf"train.output_dir: {out} is in use by another run "
                                                          rf"\(PID {holder.pid}, since .*\); wait for it"):
                run_training(cfg(data, cache, "train.epochs=2", "optim.lr=0.2"), output_dir=out, resume=resume,
                             overwrite=overwrite)
            assert files(out) == before  # nothing touched, not even the holder's lock file
    finally:
        stop(holder)  # SIGKILL: no clean-up ran, the kernel let go of the lock
    assert (out / LOCK_NAME).exists()
    records = run_training(cfg(data, cache, "train.epochs=2"), output_dir=out, resume="auto")
    assert [r["epoch"] for r in records] == [1]
    assert [r["epoch"] for r in logged(out)] == [0, 1]
    # the stale lock file went with the run (config.1.json: the extended train.epochs, from epoch 1 on)
    assert sorted(os.listdir(out)) == ["config.1.json", "config.json", LAST, METRICS]


def test_the_lock_is_exclusive_in_one_process_too_and_a_failed_start_leaves_no_folder(data, cache, tmp_path):
    out = tmp_path / "new" / "run"
    with FolderLock(out):
        with pytest.raises(OutputDirInUseError, match=rf"\(PID {os.getpid()}, since"):
            FolderLock(out).acquire()
    assert not (tmp_path / "new").exists()  # the lock made both folders; releasing it removed them, empty
    with pytest.raises(Exception, match="data.root"):
        run_training(cfg(tmp_path / "no data", cache), output_dir=out)
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------- a resume into another run
def test_a_checkpoint_of_one_run_is_not_resumed_over_another_runs_folder(data, cache, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_training(cfg(data, cache, "train.epochs=2"), output_dir=a)
    run_training(cfg(data, cache, "train.epochs=1", "optim.lr=0.2"), output_dir=b)
    kept = files(a)
    other = cfg(data, cache, "train.epochs=2", "optim.lr=0.2")
    with pytest.raises(ConfigError, match=rf"train.output_dir: {a} holds another run \(metrics.jsonl, last.pth; "
                                          rf"run id \w{{8}}, the checkpoint's \w{{8}}\) than the one {b / LAST} "
                                          r"continues; .*or pass --overwrite"):
        run_training(other, output_dir=a, resume=str(b / LAST))
    assert files(a) == kept  # epoch 1's line, last.pth and config.json of run a: all still there

    # What stays allowed: into an empty folder, into a copy of the checkpoint's own run, and with --overwrite.
    run_training(other, output_dir=tmp_path / "c", resume=str(b / LAST))
    assert [r["epoch"] for r in logged(tmp_path / "c")] == [0, 1]
    shutil.copytree(a, tmp_path / "a copy")
    run_training(cfg(data, cache, "train.epochs=3"), output_dir=tmp_path / "a copy", resume=str(a / LAST))
    assert [r["epoch"] for r in logged(tmp_path / "a copy")] == [0, 1, 2]
    run_training(other, output_dir=a, resume=str(b / LAST), overwrite=True)
    records = logged(a)
    assert [r["epoch"] for r in records] == [0, 1]  # b's epoch 0 (from its checkpoint) and the epoch resumed
    assert {r["run_id"] for r in records} == {load_checkpoint(b / LAST)["run_id"]} == {records[0]["run_id"]}
    assert load_checkpoint(a / LAST)["run_id"] == records[0]["run_id"]
    assert json.loads((a / "config.json").read_text())["optim"]["lr"] == 0.2  # b's record, not a's


def test_without_run_ids_the_recipe_tells_whose_checkpoint_it_is(data, cache, tmp_path):
    """Checkpoints and logs written before run ids existed: the folder's config.json decides."""
    a = tmp_path / "a"
    run_training(cfg(data, cache, "train.epochs=1"), output_dir=a)
    state = load_checkpoint(a / LAST)
    del state["run_id"]
    torch.save(state, tmp_path / "old a.pth")  # a's own checkpoint, as an older version wrote it
    state["config"]["optim"]["lr"] = 0.2
    torch.save(state, tmp_path / "old other.pth")
    (a / METRICS).write_text("".join(json.dumps({k: v for k, v in r.items() if k != "run_id"}) + "\n"
                                     for r in logged(a)))
    kept = files(a)
    with pytest.raises(ConfigError, match=r"its config.json differs from the checkpoint's config"):
        run_training(cfg(data, cache, "train.epochs=2", "optim.lr=0.2"), output_dir=a,
                     resume=str(tmp_path / "old other.pth"))
    assert files(a) == kept
    records = run_training(cfg(data, cache, "train.epochs=2"), output_dir=a, resume=str(tmp_path / "old a.pth"))
    assert [r["epoch"] for r in records] == [1] and [r["epoch"] for r in logged(a)] == [0, 1]


# ------------------------------------------------------- a damaged metrics log
def test_a_corrupt_line_inside_the_log_refuses_the_resume_and_loses_nothing(data, cache, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(data, cache, "train.epochs=2"), output_dir=out)
    lines = (out / METRICS).read_text(encoding="utf-8").splitlines(keepends=True)
    (out / METRICS).write_text(lines[0][:25] + "\x00garbage\n" + lines[1], encoding="utf-8")  # epoch 0's line
    kept = files(out)
    with pytest.raises(CheckpointError, match=rf"{out / METRICS}, line 1: not valid JSON .*repair or delete the line"):
        run_training(cfg(data, cache, "train.epochs=3"), output_dir=out, resume="auto")
    assert files(out) == kept


def test_trim_metrics_drops_only_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / METRICS
    good = [json.dumps({"epoch": e, "train_loss": 1.0}) for e in range(3)]
    for bad in ('{"epoch": 1, "train_lo', "[1, 2]", "\x00\x00\x00"):
        text = "\n".join([good[0], bad, good[2], '{"epoch": 3, "tr']) + "\n"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(CheckpointError, match=rf"{path}, line 2: "):
            trim_metrics(path, 3)
        assert path.read_text(encoding="utf-8") == text
    path.write_text("\n".join([*good, '{"epoch": 3, "tr']), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        kept = trim_metrics(path, 3)
    assert [r["epoch"] for r in kept] == [0, 1, 2] and "dropping line 4" in caplog.text
    assert path.read_text(encoding="utf-8") == "".join(line + "\n" for line in good)
    path.write_text(f"{good[0]}\ngarbage\n{good[1]}\n", encoding="utf-8")
    assert trim_metrics(path, 0) == [] and path.read_text() == ""  # a fresh start (--overwrite) keeps nothing


# ------------------------------------------------------- temporary files of a killed run
def test_temporary_files_of_a_killed_write_are_removed_when_a_run_starts(data, cache, tmp_path):
    out = tmp_path / "run"
    run_training(cfg(data, cache, "train.epochs=1"), output_dir=out)
    writer = start_python(f"""
        import time
        from orderdp_dali.atomic import write_atomic
        def slow(f):
            f.write(b"x" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(120)
        write_atomic({str(out / LAST)!r}, slow)
        """, "writing")
    os.kill(writer.pid, signal.SIGKILL)  # in the middle of a checkpoint write
    stop(writer)
    (stale,) = [p for p in out.iterdir() if p.name.startswith(f".{LAST}.")]
    assert stale.name.endswith(".tmp") and stale.stat().st_size == 1000
    (out / f".{METRICS}.zz_09abc.tmp").write_text("half a log")
    (out / "notes.tmp").write_text("not ours")  # not a write_atomic name: kept
    (out / ".notes.tmp").write_text("not ours either")
    records = run_training(cfg(data, cache, "train.epochs=2"), output_dir=out, resume="auto")
    assert [r["epoch"] for r in records] == [1]
    assert sorted(os.listdir(out)) == [".notes.tmp", "config.1.json", "config.json", LAST, METRICS, "notes.tmp"]


def test_remove_stale_temporaries_matches_write_atomic_names_only(tmp_path):
    target = tmp_path / "config.json"
    real_replace = os.replace

    def killed(src, dst):  # what a SIGKILL between the write and the rename leaves
        raise SystemExit

    os.replace = killed
    try:
        with pytest.raises(SystemExit):
            atomic.write_text_atomic(target, "{}")
    finally:
        os.replace = real_replace
    assert not list(tmp_path.iterdir())  # an exception cleans up after itself; only a kill leaves a file
    (tmp_path / ".config.json.abcd_123.tmp").write_text("{")
    (tmp_path / ".epoch_0004.pth.k3j9x2aq.tmp").write_bytes(b"\0")
    (tmp_path / ".x.abc.tmp").write_text("too short a random part")
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    removed = atomic.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".config.json.abcd_123.tmp", ".epoch_0004.pth.k3j9x2aq.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".dir.abcdefgh.tmp", ".x.abc.tmp"]
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []


# ------------------------------------------------------- bench --out
def test_bench_refuses_an_out_folder_that_holds_a_bench_unless_overwrite(tmp_path, monkeypatch, capsys):
    from orderdp_dali.cli import bench as bench_cli

    config = tmp_path / "bench.yaml"
    config.write_text(f"name: tiny\ndataset: {{root: {tmp_path / 'data'}}}\npolicies: {{full: {{}}}}\n")
    out = tmp_path / "old bench"
    out.mkdir()
    (out / "results.json").write_text('{"complete": true}')
    (out / "report.md").write_text("# the old report\n")
    kept = files(out)
    ran = []
    monkeypatch.setattr(bench_cli, "run_bench", lambda bench, run_dir, *a: ran.append(run_dir) or {
        "total_s": 0.0, "runs": []})
    assert bench_cli.main(["--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"orderdp-dali bench: error: --out: {out} already holds files (report.md, results.json); "
                   "choose another --out, or pass --overwrite to write the new bench over them")
    assert files(out) == kept and ran == []
    assert bench_cli.main(["--config", str(config), "--out", str(out), "--overwrite"]) == 0
    assert ran == [out] and files(out) == kept  # the stand-in bench wrote nothing; the lock file is gone
    assert bench_cli.main(["--config", str(config), "--out", str(tmp_path / "new")]) == 0
    assert ran[-1] == tmp_path / "new"
    with FolderLock(tmp_path / "busy", setting="--out"):
        assert bench_cli.main(["--config", str(config), "--out", str(tmp_path / "busy")]) == 2
    assert f"--out: {tmp_path / 'busy'} is in use by another run (PID {os.getpid()}" in capsys.readouterr().err
