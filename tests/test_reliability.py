"""Reliability: bad files, a killed run, a dying rank, torn writes and odd paths.

What must hold: bad files are found and never trained on; a run killed with SIGKILL resumes
with the same plans and logs each epoch once; a rank that dies makes the others stop with a
clear message instead of hanging; a write that fails midway leaves the previous checkpoint
and log intact; unicode, spaces, symlinked class folders and one-image classes decode.

CPU only (DALI's CPU backend, one thread), 32-48 px images, the tiny CNN.
Subprocess runs are started in their own session and killed by session id afterwards, so
no process outlives a test.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Set

import numpy as np
import pytest
import torch
from conftest import write_jpeg_folder
from PIL import Image
from train_helpers import overrides, write_colour_dataset

from orderdp_dali import train as train_mod
from orderdp_dali.check_data import check_dataset, write_report
from orderdp_dali.checkpoint import LAST, load_checkpoint
from orderdp_dali.config import load_config
from orderdp_dali.data.exclusions import load_exclusion_list
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.errors import DecodeError
from orderdp_dali.iterator import DALIPlanIterator
from orderdp_dali.pipelines import ImagePipelineConfig
from orderdp_dali.train import run_training
from orderdp_dali.training import loop as loop_mod
from orderdp_dali.training import run as run_mod

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.crop=16", "data.val_resize=16"]
ORDERDP = ["policy.name=orderdp", "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.75}"]

# One colour per class of the odd dataset, far apart, so a decoded image tells its class.
COLOURS = {"a class": (220, 40, 40), "klasse ü ñ 日本": (40, 200, 60), "linked": (50, 70, 230), "one": (230, 220, 40)}


def save_jpeg(path: Path, colour, rng: np.random.Generator) -> None:
    h, w = (int(v) for v in rng.integers(32, 49, size=2))
    img = np.clip(np.array(colour) + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def read_metrics(out: Path) -> List[Dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------ datasets
@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> SimpleNamespace:
    """A dataset under a path with a space and unicode, salted with every kind of bad file.

    Classes (ImageFolder order): ``a class``, ``klasse ü ñ 日本`` (unicode and spaces in
    folder and file names), ``linked`` (a symlink to a folder outside the dataset) and
    ``one`` (a single good image). Bad files: zero bytes, a truncated JPEG, garbage named
    ``.JPEG``, a broken symlink; a non-image ``notes.txt`` that both sides ignore.
    """
    base = tmp_path_factory.mktemp("odd") / "dätä sét"
    rng = np.random.default_rng(7)
    root = base / "data"
    good: Dict[str, Set[str]] = {"train": set(), "val": set()}
    for split, count in (("train", 6), ("val", 2)):
        for cls, colour in COLOURS.items():
            folder = root / split / cls
            if cls == "linked":
                target = base / f"outside {split}" / "real class"
                target.mkdir(parents=True)
                folder.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, folder)
            for i in range(1 if cls == "one" else count):
                name = f"bild {i:02d} ü.JPEG" if cls.startswith("klasse") else f"img_{i:03d}.JPEG"
                save_jpeg(folder / name, colour, rng)
                good[split].add(f"{cls}/{name}")
    good_bytes = (root / "train" / "a class" / "img_000.JPEG").read_bytes()
    tr = root / "train"
    (tr / "a class" / "zero.JPEG").write_bytes(b"")
    os.symlink(base / "nowhere.JPEG", tr / "a class" / "dangling.JPEG")
    (tr / "klasse ü ñ 日本" / "abgeschnitten ä.JPEG").write_bytes(good_bytes[: len(good_bytes) // 2])
    (tr / "linked" / "garbage.JPEG").write_bytes(b"this is not a JPEG\n" + rng.bytes(300))
    (tr / "one" / "half.jpeg").write_bytes(good_bytes[: len(good_bytes) // 3])
    (tr / "a class" / "notes.txt").write_text("not an image")
    (root / "val" / "linked" / "empty.JPEG").write_bytes(b"")
    bad = {
        ("train", "a class/zero.JPEG"): "empty_file",
        ("train", "a class/dangling.JPEG"): "broken_symlink",
        ("train", "klasse ü ñ 日本/abgeschnitten ä.JPEG"): "truncated",
        ("train", "linked/garbage.JPEG"): "not_an_image",
        ("train", "one/half.jpeg"): "truncated",
        ("val", "linked/empty.JPEG"): "empty_file",
    }
    return SimpleNamespace(root=root, bad=bad, good=good, classes=sorted(COLOURS))


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """A clean dataset with enough steps per epoch to stop a run in the middle of one."""
    return write_colour_dataset(tmp_path_factory.mktemp("colours"), train_per_class=30, val_per_class=2)


def make_cfg(root: Path, cache: Path, *extra: str):
    return load_config(None, overrides(root, cache, *SMALL, *extra))


def record_plans(monkeypatch, plans: Dict[int, Set[str]]) -> None:
    """Remember the files of each epoch's global plan, as the training loop sees it."""
    original = loop_mod.train_one_epoch

    def wrapper(model, optimizer, scaler, it, epoch, cfg, rt, **extras):
        plans[epoch] = {str(it.index.paths[i]) for i in it.plan.indices.tolist()}
        assert len(plans[epoch]) == len(it.plan.indices)  # full policy: each sample once
        return original(model, optimizer, scaler, it, epoch, cfg, rt, **extras)

    monkeypatch.setattr(loop_mod, "train_one_epoch", wrapper)


# ------------------------------------------------------- 1. bad files (fuzz)
def test_bad_files_are_found_excluded_and_never_planned(odd, cache, tmp_path, monkeypatch):
    report = check_dataset(odd.root, workers=1, progress=False)
    assert {(f.split, f.relpath): f.reason for f in report.bad} == odd.bad
    assert report.warnings == [] and report.empty_classes == [] and report.class_mismatch == {}
    assert report.num_files == len(odd.bad) + len(odd.good["train"]) + len(odd.good["val"])

    # Without the list the index holds every bad file (a broken symlink too): exclusion is what removes them.
    unfiltered = SampleIndex.scan(odd.root / "train", cache_dir=cache)
    bad_train = {rel for (split, rel) in odd.bad if split == "train"}
    assert bad_train <= set(unfiltered.paths.tolist())

    listed = write_report(report, tmp_path / "bad files ü.txt")
    as_json = write_report(report, tmp_path / "bad files ü.json")
    assert load_exclusion_list(listed) == load_exclusion_list(as_json) == {f.path for f in report.bad}
    for exclude in (listed, as_json):  # both report formats work as data.exclude_file
        data = train_mod.build_data(make_cfg(odd.root, cache, f"data.exclude_file={exclude}"))
        assert set(data.train.paths.tolist()) == odd.good["train"]
        assert set(data.val.paths.tolist()) == odd.good["val"]
        assert list(data.train.classes) == odd.classes and np.bincount(data.train.labels).tolist() == [6, 6, 6, 1]

    plans: Dict[int, Set[str]] = {}
    record_plans(monkeypatch, plans)
    cfg = make_cfg(odd.root, cache, f"data.exclude_file={listed}", "train.epochs=2", "policy.name=full")
    records = run_training(cfg, output_dir=tmp_path / "run")

    assert sorted(plans) == [0, 1]
    for epoch, files in plans.items():
        assert files == odd.good["train"], epoch  # every good file, no bad one
    assert [r["samples"] for r in records] == [len(odd.good["train"])] * 2
    assert [r["val_samples"] for r in records] == [len(odd.good["val"])] * 2
    assert all(np.isfinite(r["train_loss"]) for r in records)


# ---------------------------------------------- 5. odd paths through DALI
def test_unicode_symlinked_and_one_image_classes_decode_through_dali(odd, cache, tmp_path):
    exclude = [f"{odd.root}/{split}/{rel}" for split, rel in odd.bad]
    index = SampleIndex.scan(odd.root / "train", cache_dir=cache, exclude=exclude)
    assert set(index.paths.tolist()) == odd.good["train"]
    raw = ImagePipelineConfig(crop=16, val_resize=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    palette = np.array([COLOURS[c] for c in index.classes], dtype=np.float64)
    seen: List[int] = []
    with DALIPlanIterator(index, None, 4, device="cpu", num_threads=1, pipeline_config=raw) as it:
        for batch in it:
            assert batch["data"].shape[1:] == (3, 16, 16)
            means = batch["data"].double().mean(dim=(2, 3)).numpy()  # raw 0-255 pixels: the file's colour
            nearest = np.argmin(((means[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
            indices = batch["index"].numpy()
            np.testing.assert_array_equal(batch["label"].numpy(), index.labels[indices])
            np.testing.assert_array_equal(nearest, index.labels[indices])  # the bytes of the right file
            seen += indices.tolist()
    assert sorted(seen) == list(range(len(index)))
    named = {index.classes[index.labels[i]] for i in seen}
    assert named == set(COLOURS)  # the unicode, the symlinked and the one-image class all decoded


def test_a_torn_index_cache_means_a_rescan_and_lists_are_fsynced(tmp_path, monkeypatch):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=2)
    real_fsync, fsynced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: fsynced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    first = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
    (cache,) = (tmp_path / "cache").iterdir()
    assert any(name.startswith(str(tmp_path / "cache")) and name.endswith(".tmp") for name in fsynced)
    good = cache.read_bytes()
    for torn in (b"", good[: len(good) // 2], b"PK\x03\x04 not a zip"):  # power loss before the data hit the disk
        cache.write_bytes(torn)
        again = SampleIndex.scan(root, cache_dir=tmp_path / "cache")
        assert again.fingerprint == first.fingerprint
        assert cache.read_bytes() != torn  # rewritten
    fsynced.clear()
    write_report(check_dataset(root, workers=1, progress=False), tmp_path / "bad.txt")
    assert any(os.path.basename(name).lstrip(".").startswith("bad.txt") for name in fsynced)


# ------------------------------------------------------- subprocess helpers
class Run:
    """A subprocess in its own session whose stderr is watched for a pattern; killed by session at the end."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None) -> None:
        self.proc = subprocess.Popen(
            args, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.sessions = {self.proc.pid}
        self.err: List[str] = []
        self.out: List[str] = []
        self._hits: Dict[str, threading.Event] = {}
        self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]
        for t in self._threads:
            t.start()

    def _pump(self, stream, buf: List[str]) -> None:
        fd = stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf.append(chunk.decode("utf-8", errors="replace"))
            text = "".join(buf[-50:])
            for pattern, event in list(self._hits.items()):
                if re.search(pattern, text):
                    event.set()

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """Block until stderr matches ``pattern`` (as soon as the chunk arrives) or the process ends."""
        event = self._hits.setdefault(pattern, threading.Event())
        if re.search(pattern, "".join(self.err)):
            event.set()
        deadline = time.monotonic() + timeout
        while not event.wait(0.02):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return event.is_set()
        return True

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    def kill_all(self) -> None:
        """SIGKILL every process still in one of our sessions (torchrun agents and their ranks included)."""
        for pid in _pids_in_sessions(self.sessions):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _stat(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pids_in_sessions(sessions: Set[int]) -> List[int]:
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        fields = _stat(int(name))
        if fields is not None and int(fields[3]) in sessions:  # fields: state, ppid, pgrp, session
            found.append(int(name))
    return found


def _children(pid: int) -> List[int]:
    return [int(n) for n in filter(str.isdigit, os.listdir("/proc")) if (_stat(int(n)) or [0, -1])[1] == str(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _mid_epoch(epoch: int) -> str:
    """tqdm's bar for ``epoch`` after at least one finished step, e.g. ``epoch 1:  21%|##  | 3/14``."""
    return rf"epoch {epoch}:\s+\d+%\|[^|\r\n]*\| *[1-9]\d*/\d+"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------- 2. kill -9 mid-epoch, then resume
# Random crops and flips on: the resumed run restores its pipeline's random state from the checkpoint.
KILL_RUN = ["train.epochs=3", *ORDERDP, "train.batch_size=4", "train.eval_every=0"]


def _shm_entries() -> Set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _train_command(world: int) -> List[str]:
    """The training command of one process (``world`` 1) or of ``world`` gloo ranks under torchrun."""
    if world == 1:
        return [sys.executable, "-m", "orderdp_dali.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
            "--max_restarts=0", "-m", "orderdp_dali.train"]


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2])
def test_sigkill_mid_epoch_then_resume_auto_equals_uninterrupted(world, colours, cache, tmp_path):
    """kill -9 in the middle of epoch 1, then --resume auto: every epoch's plan and training loss
    equal an uninterrupted run's, on one process and on two gloo ranks (each rank restores its
    own DALI pipeline state from the checkpoint, random crops and flips included)."""
    config = tmp_path / "kill run.yaml"
    config.write_text(json.dumps(make_cfg(colours, cache, *KILL_RUN).to_dict()), encoding="utf-8")  # JSON is YAML
    cmd = [*_train_command(world), "--config", str(config)]
    env = {"OMP_NUM_THREADS": "1"}
    ref_out = tmp_path / "ref"
    ref = Run([*cmd, "--output-dir", str(ref_out), "train.progress=false"], env=env)
    try:
        assert ref.finish(timeout=240) == 0, ref.stderr[-3000:]
    finally:
        ref.kill_all()
    ref_logged, ref_last = read_metrics(ref_out), load_checkpoint(ref_out / LAST)

    out = tmp_path / "out dir"
    run = Run([*cmd, "--output-dir", str(out), "train.progress=true"], env=env)  # the bar tells where the run is
    try:
        assert run.wait_for(_mid_epoch(1), timeout=150), run.stderr[-3000:]
        if world == 1:
            assert _children(run.proc.pid) == []  # DALI reads in threads: no worker process to orphan
            os.kill(run.proc.pid, signal.SIGKILL)  # mid-epoch 1, as the OOM killer would
            assert run.finish(timeout=30) == -signal.SIGKILL
            assert not _pids_in_sessions(run.sessions)
        else:
            ranks = _children(run.proc.pid)
            assert len(ranks) == world
            run.sessions.update(ranks)  # torchrun starts each worker in a session of its own
            for pid in [run.proc.pid, *ranks]:
                os.kill(pid, signal.SIGKILL)  # the whole job at once, as a lost node would
            run.finish(timeout=30)
            deadline = time.monotonic() + 10  # the orphaned ranks die (and may stay as zombies)
            while any((_stat(pid) or ["Z"])[0] != "Z" for pid in ranks) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all((_stat(pid) or ["Z"])[0] == "Z" for pid in ranks)
    finally:
        run.kill_all()
    assert [r["epoch"] for r in read_metrics(out)] == [0]  # killed inside epoch 1, before its log line
    killed_state = load_checkpoint(out / LAST)  # intact after the kill
    assert killed_state["epoch"] == 1
    pipelines = killed_state["iterator"]["pipelines"]
    assert len(pipelines) == world and all(p is not None for p in pipelines)  # every rank's DALI state

    resumed = Run([*cmd, "--output-dir", str(out), "--resume", "auto", "train.progress=false"], env=env)
    try:
        assert resumed.finish(timeout=240) == 0, resumed.stderr[-3000:]
    finally:
        resumed.kill_all()
    assert f"resumed from {out / LAST}: continuing at epoch 1" in resumed.stdout
    assert "fresh pipeline seeds" not in resumed.stderr
    logged = read_metrics(out)
    assert [r["epoch"] for r in logged] == [0, 1, 2]  # each epoch exactly once
    assert [r["plan_sha1"] for r in logged] == [r["plan_sha1"] for r in ref_logged]  # the same plans
    assert [r["planned"] for r in logged] == [r["planned"] for r in ref_logged] == [54, 54, 54]
    assert len({r["plan_sha1"] for r in ref_logged}) == 3  # the plans do differ by epoch: the comparison has teeth
    for key in ("train_loss", "train_loss_unweighted"):  # the same crops and flips: the same losses
        assert [r[key] for r in logged] == [r[key] for r in ref_logged], key
    assert logged[1]["pipelines_built"] == 1  # the resumed run built its one training pipeline
    last = load_checkpoint(out / LAST)
    assert last["epoch"] == 3 and last["planned"] == ref_last["planned"]
    ours, theirs = last["iterator"]["policy"]["scores"], ref_last["iterator"]["policy"]["scores"]
    torch.testing.assert_close(ours["values"], theirs["values"])


@pytest.mark.slow
def test_sigterm_mid_epoch_exits_promptly_and_leaves_nothing_behind(colours, cache, tmp_path):
    """torchrun's teardown and preemption send SIGTERM: the run must end at once as Ctrl-C ends it,
    with the shell's code for SIGTERM (143), no process, shared-memory file, temporary file or lock
    file left, and its last checkpoint intact."""
    shm_before = _shm_entries()
    out = tmp_path / "term"
    run = Run([sys.executable, "-m", "orderdp_dali.train", *make_cfg_args(colours, cache, *KILL_RUN),
               "train.progress=true", "--output-dir", str(out)])
    try:
        assert run.wait_for(_mid_epoch(1), timeout=150), run.stderr[-3000:]
        assert _children(run.proc.pid) == []
        run.proc.send_signal(signal.SIGTERM)
        assert run.finish(timeout=20) == 128 + signal.SIGTERM, run.stderr[-3000:]
        assert not _pids_in_sessions(run.sessions)
    finally:
        run.kill_all()
    assert "Traceback" not in run.stderr
    assert "orderdp-dali train: interrupted (SIGTERM)" in run.stderr
    assert not {e for e in _shm_entries() - shm_before if "orderdp" in e or "dali" in e.lower()}
    # The bar said "inside epoch 1", but an epoch here is ~0.1 s: the signal may land in epoch 2.
    # Either way the last checkpoint loads and the log holds the epochs before it (or all but
    # the last, when the signal fell between a checkpoint and its metrics line).
    done = load_checkpoint(out / LAST)["epoch"]
    assert done in (1, 2)
    assert [r["epoch"] for r in read_metrics(out)] in (list(range(done)), list(range(done - 1)))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", LAST, "metrics.jsonl"]


def make_cfg_args(root: Path, cache: Path, *extra: str) -> List[str]:
    return overrides(root, cache, *SMALL, *extra)


# A run that is still training when a test is done with it (it is then stopped).
LONG_RUN = [*(a for a in KILL_RUN if not a.startswith("train.epochs=")), "train.epochs=400"]


@pytest.mark.slow
@pytest.mark.parametrize("second", ["50 ms later", "after the first is reported"])
def test_a_second_sigint_exits_quietly(second, colours, cache, tmp_path):
    """Ctrl-C twice: the second one lands while the first unwinds the run or while DALI's exit handler
    runs; either way the process ends at once, with no traceback and no temporary file."""
    out = tmp_path / "twice"
    run = Run([sys.executable, "-m", "orderdp_dali.train", *make_cfg_args(colours, cache, *LONG_RUN),
               "train.progress=true", "--output-dir", str(out)])
    try:
        assert run.wait_for(_mid_epoch(1), timeout=150), run.stderr[-3000:]
        run.proc.send_signal(signal.SIGINT)
        if second == "50 ms later":
            time.sleep(0.05)
        else:
            assert run.wait_for("orderdp-dali train: interrupted", timeout=20), run.stderr[-3000:]
        run.proc.send_signal(signal.SIGINT)
        assert run.finish(timeout=20) == 128 + signal.SIGINT, run.stderr[-3000:]
    finally:
        run.kill_all()
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr[-3000:]
    assert "orderdp-dali train: interrupted" in run.stderr
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert load_checkpoint(out / LAST)["epoch"] >= 1


@pytest.mark.slow
def test_two_runs_cannot_share_an_output_dir(colours, cache, tmp_path):
    """A second fresh run (another lr) and a --resume auto started while a run trains in the folder
    are both refused naming the first run's PID; the first run's log and config stay its own."""
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "orderdp_dali.train", *make_cfg_args(colours, cache, *LONG_RUN)]
    first = Run([*cmd, "train.progress=true", "--output-dir", str(out)])
    try:
        assert first.wait_for(_mid_epoch(1), timeout=150), first.stderr[-3000:]
        for extra in (["optim.lr=0.2"], ["--resume", "auto"], ["--overwrite"]):
            second = Run([*cmd, *extra, "train.progress=false", "--output-dir", str(out)])
            try:
                assert second.finish(timeout=150) == 2, second.stderr[-3000:]
            finally:
                second.kill_all()
            assert second.stderr.strip().splitlines()[-1] == (
                f"orderdp-dali train: error: train.output_dir: {out} is in use by another run (PID {first.proc.pid}, "
                f"since {json.loads((out / '.orderdp-dali.lock').read_text())['started']}); wait for it to end or "
                "stop it, or choose another --output-dir"), extra
            assert first.proc.poll() is None  # still training
        first.proc.send_signal(signal.SIGTERM)
        assert first.finish(timeout=20) == 128 + signal.SIGTERM, first.stderr[-3000:]
    finally:
        first.kill_all()
    epochs = [r["epoch"] for r in read_metrics(out)]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 1  # each epoch once, in order
    assert len({r["run_id"] for r in read_metrics(out)}) == 1
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.05
    assert sorted(os.listdir(out)) == ["config.json", LAST, "metrics.jsonl"]


# ----------------------------------------------------- 3. a rank that dies
@pytest.mark.slow
@pytest.mark.parametrize("failure", ["dies", "hangs"])
def test_a_rank_failing_mid_epoch_stops_the_other_with_a_clear_message(failure, colours, cache, tmp_path):
    """Two torchrun agents (two "nodes", one rank each): the survivor's agent cannot see the other
    rank, so the survivor itself must notice and exit non-zero. A rank that dies (SIGKILL) drops
    its gloo connections: noticed at once. A rank that hangs (SIGSTOP) is noticed when the
    collective times out after train.dist_timeout_s."""
    out = tmp_path / "ddp out"
    port = _free_port()
    timeout_s = 60 if failure == "dies" else 8
    train = ["-m", "orderdp_dali.train", *overrides(colours, cache, *SMALL), "train.batch_size=4", "train.epochs=4",
             "train.eval_every=0", f"train.dist_timeout_s={timeout_s}", "--output-dir", str(out)]
    agents = [
        Run([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}",
             "--master_addr=127.0.0.1", f"--master_port={port}", "--max_restarts=0", *train,
             f"train.progress={'true' if node == 0 else 'false'}"])
        for node in (0, 1)
    ]
    try:
        assert agents[0].wait_for(_mid_epoch(1), timeout=150), agents[0].stderr[-3000:]
        (rank1,) = [pid for pid in _children(agents[1].proc.pid) if b"orderdp_dali.train" in _cmdline(pid)]
        agents[1].sessions.add(rank1)  # torchrun starts each worker in a session of its own
        for pid in _children(agents[0].proc.pid):
            agents[0].sessions.add(pid)
        if failure == "dies":
            os.killpg(rank1, signal.SIGKILL)  # rank 1, mid-epoch 1
        else:
            os.kill(rank1, signal.SIGSTOP)  # rank 1 stops answering, its sockets stay open
        failed = time.monotonic()
        rc0 = agents[0].finish(timeout=90)
        noticed = time.monotonic() - failed
        rc1 = agents[1].finish(timeout=30) if failure == "dies" else None
    finally:
        for agent in agents:
            agent.kill_all()
    log0 = agents[0].stderr
    assert rc0 != 0, (rc0, log0[-3000:])
    if failure == "dies":
        assert rc1 != 0 and noticed < 30, (rc1, noticed)  # well before the 60 s timeout
    else:
        assert timeout_s <= noticed < timeout_s + 30, noticed
    assert "rank 0: a peer rank died or stopped responding during epoch 1 (training)" in log0, log0[-3000:]
    assert f"the last checkpoint {out / LAST} is intact" in log0
    assert load_checkpoint(out / LAST)["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out)] == [0]


@pytest.mark.parametrize("error, peer", [
    (RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: Connection reset by peer"), True),
    (RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 8000ms for recv operation"), True),
    (RuntimeError("Application timeout caused pair closure"), True),
    (torch.distributed.DistBackendError("NCCL communicator was aborted"), True),
    (RuntimeError("CUDA out of memory"), False),
    (DecodeError("cannot decode sample 3 (x.JPEG): timed out reading"), False),
])
def test_which_errors_mean_a_peer_failed(error, peer):
    assert run_mod._is_peer_failure(error) is peer


def test_process_group_gets_the_configured_timeout(colours, cache, monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    rt = train_mod.init_runtime(make_cfg(colours, cache, "train.dist_timeout_s=7"))
    assert (rt.rank, rt.world_size, rt.owns_process_group) == (1, 2, True)
    assert seen["backend"] == "gloo" and seen["timeout"] == timedelta(seconds=7)
    assert load_config(None, overrides(colours, cache)).train.dist_timeout_s == 1800


# ------------------------------------------- 4. writes that fail midway
def test_failed_writes_keep_the_previous_checkpoint_and_log(colours, cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = make_cfg(colours, cache, "train.epochs=3", "train.eval_every=0", "policy.name=full")
    real_replace, real_fsync = os.replace, os.fsync
    fsynced: List[str] = []
    saves = []

    def recording_fsync(fd):
        fsynced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def failing_second_checkpoint(src, dst):
        if os.path.basename(dst) == LAST:
            saves.append(dst)
            if len(saves) == 2:
                raise OSError(28, "No space left on device (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", failing_second_checkpoint)
    with pytest.raises(OSError, match="simulated"):
        run_training(cfg, output_dir=out)
    monkeypatch.undo()

    assert load_checkpoint(out / LAST)["epoch"] == 1  # the first checkpoint, intact
    # epoch 1's checkpoint is written before its validation and its log line: neither came
    assert [r["epoch"] for r in read_metrics(out)] == [0]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", LAST, "metrics.jsonl"]  # no temporary files
    assert "metrics.jsonl" in fsynced  # epoch 0's log line is on disk
    assert any(name.startswith(f".{LAST}.") for name in fsynced)  # the checkpoint bytes before the rename

    # A crash in the middle of appending a line leaves half a line behind.
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "train_lo')
    before = (out / "metrics.jsonl").read_bytes()
    checkpoint_before = (out / LAST).read_bytes()

    def failing_log_rewrite(src, dst):
        if os.path.basename(dst) == "metrics.jsonl":
            raise OSError(5, "Input/output error (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_log_rewrite)
    with pytest.raises(OSError, match="simulated"):
        run_training(cfg, output_dir=out, resume="auto")  # fails trimming the log, before training
    monkeypatch.undo()
    assert (out / "metrics.jsonl").read_bytes() == before
    assert (out / LAST).read_bytes() == checkpoint_before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    records = run_training(cfg, output_dir=out, resume="auto")
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["epoch"] for r in read_metrics(out)] == [0, 1, 2]  # each once; the torn line is gone
    assert load_checkpoint(out / LAST)["epoch"] == 3
