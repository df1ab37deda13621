"""An output folder belongs to one run: its lock, resumes that would write over another run,
a damaged metrics log, temporary files a killed run left, and ``bench --out`` over an old bench.

In-process runs of the tiny CNN on a small colour dataset (CPU, one DALI thread). A lock
holder or a killed writer is a subprocess, so it has a PID of its own and really dies.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
from train_helpers import overrides, write_colour_dataset

from orderdp_dali import atomic
from orderdp_dali.checkpoint import METRICS
from orderdp_dali.config import load_config

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


# ------------------------------------------------------- temporary files of a killed run
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
