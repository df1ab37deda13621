"""Adversarial sweep: bad inputs and injected faults against the real CLI, judged case by case.

::

    python tools/adversarial_sweep.py --out bench/results/adversarial_sweep.md
    python tools/adversarial_sweep.py --list
    python tools/adversarial_sweep.py --only fault-kill --keep

Every case runs ``orderdp-dali train`` or ``check-data`` in subprocesses
(``sys.executable -m orderdp_dali.train --config <yaml> KEY=VALUE ... --output-dir DIR``) on
small datasets generated in a temporary folder (``make_dataset(mode="small")``), with tiny
CPU settings (32 px crops, the tiny CNN, one DALI thread, batch 8, one epoch where possible),
and judges what it sees:

* **bad inputs** (config, data, checkpoint, output dir): a non-zero exit; no Python
  traceback on stderr; a short last stderr line that starts with the command's error
  prefix (``orderdp-dali train: error:`` / ``orderdp-dali check-data: error:``) and names
  the bad key, file or parameter; and nothing of a previous run (``metrics.jsonl``,
  ``last.pth``, ``config.json``) changed or lost when the run is refused;
* **injected faults** (kill -9 / SIGTERM mid-epoch, torn or foreign checkpoints, corrupt
  JPEGs, NaN loss, files deleted under a cached index, missing splits, extended runs): a
  clean error as above, or a correct continuation: each epoch logged exactly once in
  ``metrics.jsonl``, the checkpoint loadable and at the right epoch, and the same plans as
  an uninterrupted run.

The expectations say what a clear error or a correct recovery looks like, not what the code
prints today: the sweep is a gate that fixes must pass. Cases are independent (each works in
its own folder; finished runs they need are made once and copied) and bounded in time (every
subprocess has a timeout; its whole session is killed when it runs over).

Output: a markdown table (case, category, expectation, exit code, traceback, verdict, last
stderr line), the summary line ``N cases: P pass, F fail; tracebacks without --debug: T;
mistaken inputs accepted silently: S; runs or epochs lost: L`` and the reasons of each
failure, written to ``--out`` and printed. Exit status 0 iff no case fails.
"""
from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

__all__ = ["CASES", "Case", "Ctx", "Outcome", "Result", "judge_error", "judge_success", "main", "render_report",
           "summary_line"]

TRAIN_PREFIX = "orderdp-dali train: error:"
CHECK_PREFIX = "orderdp-dali check-data: error:"
TRACEBACK = "Traceback (most recent call last)"
CATEGORIES = ("config", "data", "checkpoint", "output dir", "fault")
DEFAULT_TIMEOUT_S = 120.0
SIGNAL_GRACE_S = 20.0  # how long a signalled trainer may take to exit
MAX_ERROR_CHARS = 500  # "a short error": the last stderr line, paths included
SHOWN_CHARS = 120  # the table's excerpt of that line
LAST = "last.pth"
METRICS = "metrics.jsonl"
REPO = Path(__file__).resolve().parents[1]

# The recipe every training case starts from (tests/train_helpers.py's FAST settings).
BASE_SETTINGS: Dict[str, Dict[str, Any]] = {
    "data": {"crop": 32, "val_resize": 32, "num_threads": 1},
    "model": {"name": "tiny"},
    "optim": {"lr": 0.05},
    "schedule": {"name": "cosine"},
    "train": {"device": "cpu", "batch_size": 8, "progress": False, "epochs": 1, "eval_every": 1},
}
ORDERDP = ("policy.name=orderdp", "policy.params={random_len_ratio: 0.8, top_q_ratio: 0.75}")
INFOBATCH = ("policy.name=infobatch", "policy.params={prune_ratio: 0.5, anneal_delta: 0.875}")
# Runs that are interrupted: enough steps per epoch (27 of batch 4) to stop one in the middle.
KILL_RUN = ("data.root={big}", *ORDERDP, "train.batch_size=4", "train.eval_every=0", "train.epochs=3")

# Generated datasets (make_dataset mode "small"); placeholders {ds}, {other}, {big}, {one}.
DATASETS: Dict[str, Dict[str, int]] = {
    "ds": {"num_classes": 3, "train_per_class": 16, "val_per_class": 4, "seed": 0},
    "other": {"num_classes": 3, "train_per_class": 12, "val_per_class": 4, "seed": 1},
    "big": {"num_classes": 3, "train_per_class": 60, "val_per_class": 2, "seed": 2},
    "one": {"num_classes": 1, "train_per_class": 16, "val_per_class": 4, "seed": 3},
}
# Finished runs that cases copy into their own output folder (made once, on first use).
FIXTURE_RUNS: Dict[str, Tuple[str, ...]] = {
    "full1": (),
    "orderdp1": ORDERDP,
    "infobatch1": INFOBATCH,
    "other1": ("data.root={other}",),
    "killref": KILL_RUN,
}
CLASS0, CLASS1, CLASS2 = "c000_synthetic", "c001_synthetic", "c002_synthetic"


class SetupError(RuntimeError):
    """A case could not be prepared (a dataset or a finished run it needs failed)."""


# ------------------------------------------------------------------ subprocesses
@dataclass
class Result:
    """One finished subprocess."""

    argv: List[str]
    rc: Optional[int]
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    base: str = ""  # the sweep's temporary folder, left out when the error's length is judged

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.stderr

    @property
    def last_line(self) -> str:
        """The last non-empty stderr line (progress bars' carriage returns count as line ends)."""
        return last_nonempty_line(self.stderr)


def last_nonempty_line(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


_LIVE: Set["Proc"] = set()
_LIVE_LOCK = threading.Lock()


class Proc:
    """A subprocess in its own session, its output collected by two threads; killable as a whole."""

    def __init__(self, argv: List[str], cwd: Path, env: Dict[str, str], log: Optional[Path] = None,
                 base: str = "") -> None:
        self.argv = argv
        self.log = log
        self.base = base
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._bufs: Dict[str, List[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            text = decoder.decode(chunk, final=not chunk)
            with self._cond:
                if text:
                    self._bufs[name].append(text)
                self._cond.notify_all()
            if not chunk:
                stream.close()
                return

    def text(self, name: str) -> str:
        with self._cond:
            return "".join(self._bufs[name])

    def wait_for(self, pattern: str, stream: str, timeout: float) -> bool:
        """Block until ``stream`` matches ``pattern``; False if the process ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            if regex.search(self.text(stream)):
                return True
            if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                return bool(regex.search(self.text(stream)))
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                self._cond.wait(min(left, 0.05))

    def send(self, sig: int) -> None:
        """Signal the trainer process itself (not its session), as the OOM killer or a scheduler would."""
        try:
            os.kill(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def session_pids(self) -> List[int]:
        """Processes still in this subprocess's session (children it left behind included)."""
        found = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # state, ppid, pgrp, session
                found.append(int(name))
        return found

    def kill_session(self) -> None:
        """SIGKILL every process of the session this subprocess leads (only processes we started)."""
        for pid in self.session_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def finish(self, timeout: float) -> Result:
        """Wait up to ``timeout`` s for the exit; past it, kill the session and mark the result timed out."""
        timed_out = False
        try:
            self.proc.wait(timeout=max(timeout - (time.monotonic() - self.started), 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill_session()
            self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        res = Result(self.argv, self.proc.returncode, self.text("stdout"), self.text("stderr"),
                     time.monotonic() - self.started, timed_out, self.base)
        if self.log is not None:  # kept with --keep: what each step of a case printed
            self.log.write_text(f"$ {_show(self.argv)}\nexit {res.rc}{' (timed out)' if timed_out else ''}\n"
                                f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}", encoding="utf-8")
        return res


def kill_all_live() -> None:
    """Kill the sessions of every subprocess still running (an interrupted sweep)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for p in live:
        p.kill_session()


# ------------------------------------------------------------------ judging
@dataclass
class Outcome:
    """What a case observed and what was wrong with it (no problems: PASS)."""

    exit: str = "-"
    traceback: bool = False
    last_line: str = ""
    problems: List[str] = field(default_factory=list)
    silent: bool = False  # a mistaken input or a failed run was accepted with exit 0
    lost: bool = False  # a previous run's file, or an epoch, was lost or changed
    skipped: str = ""
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.skipped:
            return "SKIP"
        return "FAIL" if self.problems else "PASS"

    def see(self, res: Result, label: str = "") -> "Outcome":
        """Record ``res`` as the decisive subprocess (its exit code is appended for multi-step cases)."""
        code = "timeout" if res.timed_out else str(res.rc)
        self.exit = code if self.exit == "-" else f"{self.exit}, {code}"
        self.last_line = res.last_line or self.last_line
        if res.timed_out:
            self.problems.append(f"{label or 'run'} timed out after {res.seconds:.0f} s (session killed)")
        if res.traceback:
            self.traceback = True
            self.problems.append(f"{label or 'run'}: Python traceback on stderr")
        return self

    def fail(self, problem: str) -> None:
        self.problems.append(problem)

    def lose(self, problem: str) -> None:
        self.lost = True
        self.problems.append(problem)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Snapshot:
    """Hashes of files (a folder: every file under it) to tell later whether any was changed or lost."""

    def __init__(self, *paths: Path) -> None:
        self.hashes: Dict[Path, str] = {}
        for p in paths:
            if p.is_file():
                self.hashes[p] = _sha256(p)
            elif p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file():
                        self.hashes[f] = _sha256(f)

    def damage(self) -> List[str]:
        out = []
        for f, h in self.hashes.items():
            if not f.is_file():
                out.append(f"{f.name} was deleted")
            elif _sha256(f) != h:
                out.append(f"{f.name} was changed")
        return out


def _named(message: str, text: str) -> bool:
    return text.lower() in message.lower()


def judge_error(
    res: Result,
    prefix: str = TRAIN_PREFIX,
    must: Sequence[str] = (),
    any_of: Sequence[str] = (),
    keep: Optional[Snapshot] = None,
    outcome: Optional[Outcome] = None,
) -> Outcome:
    """A bad input must be refused: non-zero exit, no traceback, a short last line ``prefix ...`` naming
    every string of ``must`` and one of ``any_of`` (case-insensitive), and ``keep`` unchanged."""
    o = (outcome or Outcome()).see(res)
    line = res.last_line
    if res.rc == 0 and not res.timed_out:
        o.silent = True
        o.fail("exit 0: the mistaken input was accepted")
    elif res.rc is not None and res.rc < 0 and not res.timed_out:
        o.fail(f"killed by signal {-res.rc} instead of exiting with an error")
    if not line.startswith(prefix):
        o.fail(f"last stderr line does not start with {prefix!r}")
    message = line[len(prefix):] if line.startswith(prefix) else line
    missing = [s for s in must if not _named(message, s)]
    if missing:
        o.fail("the error does not name " + ", ".join(repr(s) for s in missing))
    if any_of and not any(_named(message, s) for s in any_of):
        o.fail("the error names none of " + ", ".join(repr(s) for s in any_of))
    length = len(line.replace(res.base, "$SWEEP")) if res.base else len(line)
    if length > MAX_ERROR_CHARS:
        o.fail(f"the error line has {length} characters (more than {MAX_ERROR_CHARS}), temporary folder as $SWEEP")
    if keep is not None:
        for damage in keep.damage():
            o.lose(f"previous run damaged: {damage}")
    return o


def judge_success(res: Result, label: str = "", outcome: Optional[Outcome] = None) -> Outcome:
    """A run that must work: exit 0 and no traceback."""
    o = (outcome or Outcome()).see(res, label)
    if res.rc != 0 and not res.timed_out:
        o.fail(f"{label or 'run'} exited {res.rc}")
    return o


def read_metrics(out: Path, o: Outcome) -> List[Dict[str, Any]]:
    """The records of ``out/metrics.jsonl`` (none if absent); an unparseable line is a problem."""
    path = out / METRICS
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            o.lose(f"{METRICS} line {n} is not JSON (a torn line)")
    return records


def expect_epochs(out: Path, o: Outcome, expected: List[int]) -> List[Dict[str, Any]]:
    records = read_metrics(out, o)
    logged = [r.get("epoch") for r in records]
    if logged != expected:
        o.lose(f"{METRICS} logs epochs {logged}, expected {expected} (each exactly once)")
    return records


def checkpoint_epoch(path: Path) -> Tuple[Optional[int], str]:
    """(the ``epoch`` a checkpoint resumes at, "") or (None, why it cannot be read)."""
    if not path.is_file():
        return None, f"{path.name} does not exist"
    import torch  # only the checkpoint checks need it

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to load is the finding
        return None, f"{path.name} does not load ({type(e).__name__}: {str(e)[:120]})"
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        return None, f"{path.name} holds no epoch"
    return int(state["epoch"]), ""


def expect_checkpoint(out: Path, o: Outcome, epoch: int) -> None:
    got, why = checkpoint_epoch(out / LAST)
    if got is None:
        o.lose(f"checkpoint not intact: {why}")
    elif got != epoch:
        o.lose(f"{LAST} resumes at epoch {got}, expected {epoch}")


# ------------------------------------------------------------------ context
class Ctx:
    """Shared state of one sweep: the temporary folder, datasets and finished runs (made once, on demand)."""

    def __init__(self, base: Path, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.base = base
        self.timeout = timeout
        self.cache = base / "index-cache"
        self.config = base / "base.yaml"
        self._guard = threading.Lock()
        self._locks: Dict[str, threading.Lock] = {}
        self._made: Dict[str, Any] = {}
        self._steps: Dict[Path, int] = {}
        self.cache.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(BASE_SETTINGS))
        settings["data"].update(root=str(base / "datasets" / "ds"), cache_dir=str(self.cache))
        self.config.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")  # JSON is YAML
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "ORDERDP_DALI_CACHE": str(self.cache)}
        self.env.pop("PYTHONSAFEPATH", None)

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._made:
                try:
                    self._made[key] = build()
                except SetupError as e:
                    self._made[key] = e
            made = self._made[key]
        if isinstance(made, SetupError):
            raise made
        return made

    def dataset(self, name: str) -> Path:
        def build() -> Path:
            from orderdp_dali.make_data import make_dataset

            try:
                return make_dataset(self.base / "datasets" / name, mode="small", workers=1, **DATASETS[name])
            except Exception as e:
                raise SetupError(f"make_dataset({name}) failed: {type(e).__name__}: {e}") from e

        return self._once(f"dataset:{name}", build)

    def fixture_run(self, name: str) -> Path:
        def build() -> Path:
            out = self.base / "runs" / name
            out.parent.mkdir(parents=True, exist_ok=True)
            res = self.train(list(FIXTURE_RUNS[name]), out.parent, out=out)
            if res.rc != 0 or not (out / LAST).is_file():
                raise SetupError(f"fixture run {name} failed (exit {res.rc}): {res.last_line[:300]}")
            return out

        return self._once(f"run:{name}", build)

    def copy_run(self, name: str, dest: Path) -> Path:
        shutil.copytree(self.fixture_run(name), dest)
        return dest

    def copy_dataset(self, name: str, dest: Path) -> Path:
        shutil.copytree(self.dataset(name), dest)
        return dest

    def fill(self, arg: str, work: Path) -> str:
        """Replace ``{work}``, ``{out}``, ``{config}`` and dataset names (``{ds}``, ...) in ``arg``."""

        def sub(m: "re.Match[str]") -> str:
            key = m.group(1)
            if key == "work":
                return str(work)
            if key == "out":
                return str(work / "out")
            if key == "config":
                return str(self.config)
            if key in DATASETS:
                return str(self.dataset(key))
            return m.group(0)

        return re.sub(r"\{([a-z]+)\}", sub, arg)

    def train_argv(self, args: Sequence[str], work: Path, config: bool = True, out: Optional[Path] = None) -> List[str]:
        self.dataset("ds")  # the base config's data.root
        argv = [sys.executable, "-m", "orderdp_dali.train"]
        if config:
            argv += ["--config", str(self.config)]
        argv += [self.fill(a, work) for a in args]
        if out is not None and "--output-dir" not in args:
            argv += ["--output-dir", str(out)]
        return argv

    def start(self, argv: List[str], work: Path) -> Proc:
        work.mkdir(parents=True, exist_ok=True)
        with self._guard:
            n = self._steps[work] = self._steps.get(work, 0) + 1
        return Proc(argv, work, self.env, log=work.parent / f"{work.name}.step{n}.log", base=str(self.base))

    def train(self, args: Sequence[str], work: Path, *, config: bool = True, out: Optional[Path] = None,
              ulimit_kb: Optional[int] = None) -> Result:
        """Run the trainer to its end (or the timeout); ``out`` defaults to ``work/out``."""
        argv = self.train_argv(args, work, config, out if out is not None else work / "out")
        if ulimit_kb:  # a cap on address space: a runaway allocation fails instead of exhausting the machine
            argv = ["bash", "-c", f'ulimit -v {int(ulimit_kb)} && exec "$@"', "bash", *argv]
        return self.start(argv, work).finish(self.timeout)

    def check_data(self, args: Sequence[str], work: Path) -> Result:
        argv = [sys.executable, "-m", "orderdp_dali.cli", "check-data", *[self.fill(a, work) for a in args]]
        return self.start(argv, work).finish(self.timeout)


# ------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    name: str
    category: str
    expect: str
    action: str
    run: Callable[[Ctx, Path], Outcome]


CASES: List[Case] = []


def _add(case: Case) -> Case:
    if case.category not in CATEGORIES:
        raise ValueError(f"unknown category {case.category!r}")
    if any(c.name == case.name for c in CASES):
        raise ValueError(f"duplicate case {case.name!r}")
    CASES.append(case)
    return case


def _error_expectation(must: Sequence[str], any_of: Sequence[str], kept: bool) -> str:
    parts = [f"`{s}`" for s in must]
    if any_of:
        parts.append(" or ".join(f"`{s}`" for s in any_of))
    text = "refused, error names " + " and ".join(parts) if parts else "refused with a clean error"
    return text + ("; previous run unchanged" if kept else "")


def _show(args: Sequence[str]) -> str:
    return " ".join(a if a and " " not in a else json.dumps(a) for a in args)


def bad_train(
    name: str,
    category: str,
    args: Sequence[str],
    must: Sequence[str] = (),
    any_of: Sequence[str] = (),
    *,
    setup: Optional[Callable[[Ctx, Path], None]] = None,
    setup_text: str = "",
    fixture: Optional[str] = None,
    config: bool = True,
    ulimit_kb: Optional[int] = None,
    skip: Optional[Callable[[], str]] = None,
) -> Case:
    """A training command that must be refused with an error naming ``must`` (and one of ``any_of``)."""

    def run(ctx: Ctx, work: Path) -> Outcome:
        why = skip() if skip else ""
        if why:
            return Outcome(skipped=why)
        out = work / "out"
        if fixture:
            ctx.copy_run(fixture, out)
        if setup:
            setup(ctx, work)
        keep = Snapshot(out) if out.exists() else None
        res = ctx.train(args, work, config=config, out=out, ulimit_kb=ulimit_kb)
        return judge_error(res, TRAIN_PREFIX, must, any_of, keep)

    steps = []
    if fixture:
        steps.append(f"copy finished run {fixture} to {{out}}")
    if setup_text:
        steps.append(setup_text)
    head = "train --config {config} " if config else "train "
    steps.append(head + _show(args) + ("" if "--output-dir" in args else " --output-dir {out}"))
    return _add(Case(name, category, _error_expectation(must, any_of, bool(fixture)), "; ".join(steps), run))


def bad_check(name: str, args: Sequence[str], must: Sequence[str] = (), any_of: Sequence[str] = (), *,
              setup: Optional[Callable[[Ctx, Path], None]] = None, setup_text: str = "") -> Case:
    """A check-data command that must be refused (exit 2 style error) naming ``must``."""

    def run(ctx: Ctx, work: Path) -> Outcome:
        if setup:
            setup(ctx, work)
        res = ctx.check_data(args, work)
        return judge_error(res, CHECK_PREFIX, must, any_of)

    action = (setup_text + "; " if setup_text else "") + "check-data " + _show(args)
    return _add(Case(name, "data", _error_expectation(must, any_of, False), action, run))


def custom(name: str, category: str, expect: str, action: str) -> Callable[[Callable[[Ctx, Path], Outcome]], Case]:
    def wrap(fn: Callable[[Ctx, Path], Outcome]) -> Case:
        return _add(Case(name, category, expect, action, fn))

    return wrap


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _yaml_file(name: str, body: str, extends_base: bool = True) -> Callable[[Ctx, Path], None]:
    def setup(ctx: Ctx, work: Path) -> None:
        head = f"base: {json.dumps(str(ctx.config))}\n" if extends_base else ""
        _write(work / name, head + body)

    return setup


def _gpu_visible() -> str:
    if os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"):
        return "a GPU is visible: train.device=cuda is a valid setting here"
    return ""


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpeg")


# ---------------------------------------------------------------- config
bad_train("cfg-unknown-section", "config", ["trian.epochs=1"], ["trian"])
bad_train("cfg-unknown-key", "config", ["train.epohcs=1"], ["train.epohcs"])
bad_train("cfg-unknown-key-in-yaml", "config", ["--config", "{work}/typo.yaml"], ["data.nm_threads"],
          setup=_yaml_file("typo.yaml", "data:\n  nm_threads: 1\n"), config=False,
          setup_text="typo.yaml = base + data.nm_threads: 1")
bad_train("cfg-removed-key", "config", ["data.py_workers=2"], ["data.py_workers"])
bad_train("cfg-epochs-not-a-number", "config", ["train.epochs=two"], ["train.epochs", "two"])
bad_train("cfg-bool-garbage", "config", ["data.augment=maybe"], ["data.augment"])
bad_train("cfg-yaml-string-for-int", "config", ["--config", "{work}/quoted.yaml"], ["train.epochs"],
          setup=_yaml_file("quoted.yaml", "train:\n  epochs: '3'\n"), config=False,
          setup_text="quoted.yaml = base + train.epochs: '3' (a string)")
bad_train("cfg-lr-nan", "config", ["optim.lr=.nan"], ["optim.lr"])
bad_train("cfg-crop-huge", "config", ["data.crop=100000"], ["data.crop"])
bad_train("cfg-crop-huge-val-resize-too", "config", ["data.crop=100000", "data.val_resize=100000"], ["data.crop"],
          ulimit_kb=12 * 1024 * 1024)
bad_train("cfg-val-resize-below-crop", "config", ["data.val_resize=16"], ["data.val_resize"])
bad_train("cfg-unknown-optimizer", "config", ["optim.name=adam"], ["optim.name", "adam"])
bad_train("cfg-unknown-policy", "config", ["policy.name=orderpd"], ["policy.name", "orderpd"])
bad_train("cfg-unknown-model", "config", ["model.name=resnet5O"], ["model.name", "resnet5O"])
bad_train("cfg-ratio-zero", "config", ["policy.name=orderdp", "policy.params.random_len_ratio=0"],
          ["random_len_ratio"])
bad_train("cfg-ratio-above-one", "config", ["policy.name=orderdp", "policy.params.random_len_ratio=1.5"],
          ["random_len_ratio", "1.5"])
bad_train("cfg-ratio-negative", "config", ["policy.name=orderdp", "policy.params.random_len_ratio=-1"],
          ["random_len_ratio", "-1"])
bad_train("cfg-ratio-text", "config", ["policy.name=orderdp", "policy.params.random_len_ratio=abc"],
          ["random_len_ratio", "abc"])
bad_train("cfg-infobatch-prune-ratio-one", "config", ["policy.name=infobatch", "policy.params.prune_ratio=1"],
          ["prune_ratio"])
bad_train("cfg-unknown-policy-param", "config", ["policy.name=orderdp", "policy.params.top_k=3"], ["top_k"])
bad_train("cfg-config-file-missing", "config", ["--config", "{work}/no_such_config.yaml"], ["no_such_config.yaml"],
          config=False)
bad_train("cfg-invalid-yaml", "config", ["--config", "{work}/broken.yaml"], ["broken.yaml"],
          setup=_yaml_file("broken.yaml", "data: [1, 2\ntrain: {epochs: 1}\n", extends_base=False), config=False,
          setup_text="broken.yaml with an unclosed '['")
bad_train("cfg-base-cycle", "config", ["--config", "{work}/a.yaml"], ["cycle"],
          setup=lambda ctx, work: [_write(work / f"{a}.yaml", f"base: {b}.yaml\n") for a, b in ("ab", "ba")],
          config=False, setup_text="a.yaml has base: b.yaml, b.yaml has base: a.yaml")
bad_train("cfg-base-missing", "config", ["--config", "{work}/child.yaml"], ["missing_base.yaml"],
          setup=_yaml_file("child.yaml", "base: missing_base.yaml\n", extends_base=False), config=False,
          setup_text="child.yaml has base: missing_base.yaml")
bad_train("cfg-override-without-equals", "config", ["train.epochs"], ["train.epochs"])
bad_train("cfg-empty-data-root", "config", ["data.root="], ["data.root"])
bad_train("cfg-warmup-longer-than-run", "config", ["schedule.warmup_epochs=5"], ["schedule.warmup_epochs"])
bad_train("cfg-cuda-without-gpu", "config", ["train.device=cuda"], ["train.device"], skip=_gpu_visible)
bad_train("cfg-num-classes-too-few", "config", ["model.num_classes=2"], ["model.num_classes"])
bad_train("cfg-unknown-flag", "config", ["--resune", "auto"], ["--resune"])
bad_train("cfg-drop-last-batch-over-plan", "config", ["data.drop_last=true", "train.batch_size=64"], [],
          ["train.batch_size", "data.drop_last"])
bad_train("cfg-drop-last-batch-over-orderdp-plan", "config",
          [*ORDERDP, "data.drop_last=true", "train.batch_size=32"], [], ["train.batch_size", "data.drop_last"])
# YAML keeps the last of two equal keys; a config must not train on a value its author did not see win.
bad_train("cfg-duplicate-key-in-yaml", "config", ["--config", "{work}/twice.yaml"],
          ["twice.yaml", "train.epochs", "line 4", "line 3"],
          setup=_yaml_file("twice.yaml", "train:\n  epochs: 1\n  epochs: 3\n"), config=False,
          setup_text="twice.yaml = base + train: {epochs: 1, then epochs: 3 on the next line}")
bad_train("cfg-duplicate-section-in-yaml", "config", ["--config", "{work}/sections.yaml"],
          ["sections.yaml", "optim", "line 4", "line 2"],
          setup=_yaml_file("sections.yaml", "optim: {lr: 0.05}\ntrain: {epochs: 1}\noptim: {lr: 0.1}\n"),
          config=False, setup_text="sections.yaml = base + an optim: section at lines 2 and 4")
bad_train("cfg-bool-for-ratio", "config", [*ORDERDP, "policy.params.random_len_ratio=true"],
          ["policy.params.random_len_ratio", "true"])
bad_train("cfg-seed-above-32-bits", "config", ["train.seed=4294967296"], ["train.seed", "4294967296"])


def _latin1_config(ctx: Ctx, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "latin1.yaml").write_bytes(f"base: {json.dumps(str(ctx.config))}\n# caf\u00e9\n".encode("latin-1"))


bad_train("cfg-config-file-not-utf8", "config", ["--config", "{work}/latin1.yaml"], ["latin1.yaml", "UTF-8", "line 2"],
          setup=_latin1_config, config=False, setup_text="latin1.yaml = base + a comment with a Latin-1 byte (0xe9)")


# ---------------------------------------------------------------- data
def _setup_root_file(ctx: Ctx, work: Path) -> None:
    _write(work / "root.txt", "a file, not a dataset folder\n")


def _setup_val_lacks_class(ctx: Ctx, work: Path) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    shutil.rmtree(root / "val" / CLASS2)


def _setup_class_of_non_images(ctx: Ctx, work: Path) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    _write(root / "train" / "zz_notes" / "readme.txt", "no images here\n")
    (root / "val" / "zz_notes").mkdir()
    shutil.copy(_images(root / "val" / CLASS0)[0], root / "val" / "zz_notes" / "img.JPEG")


def _corrupt(path: Path) -> None:
    """A JPEG start marker followed by garbage: every decoder fails on it, header checks too."""
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes((i * 97 + 13) % 256 for i in range(3000)))


def _setup_exclude_other(ctx: Ctx, work: Path) -> None:
    other = ctx.copy_dataset("other", work / "other_data")
    _corrupt(_images(other / "train" / CLASS1)[0])
    res = ctx.check_data([str(other), "--workers", "1", "--no-progress", "--output", str(work / "list.json")], work)
    if not (work / "list.json").is_file():
        raise SetupError(f"check-data on the other dataset wrote no list (exit {res.rc}): {res.last_line}")


def _setup_exclude_yaml(ctx: Ctx, work: Path) -> None:
    victim = _images(ctx.dataset("ds") / "train" / CLASS0)[0]
    _write(work / "bad_files.yaml", f"bad_files:\n  - path: {victim}\n    reason: truncated\n")


def _setup_exclude_class(ctx: Ctx, work: Path) -> None:
    files = _images(ctx.dataset("ds") / "train" / CLASS1)
    _write(work / "bad.txt", "# <reason>\\t<absolute path>\n" + "".join(f"truncated\t{f}\n" for f in files))


bad_train("data-root-missing", "data", ["data.root={work}/no_such_root"], ["data.root", "no_such_root"])
bad_train("data-root-is-a-file", "data", ["data.root={work}/root.txt"], ["data.root", "root.txt"],
          setup=_setup_root_file, setup_text="write {work}/root.txt")
bad_train("data-root-without-train-split", "data", ["data.root={work}/emptyroot"], [],
          ["data.train_split", "emptyroot/train"], setup=lambda ctx, work: (work / "emptyroot").mkdir(),
          setup_text="mkdir {work}/emptyroot")
bad_train("data-val-lacks-a-class", "data", ["data.root={work}/data"], [CLASS2], setup=_setup_val_lacks_class,
          setup_text=f"copy ds to {{work}}/data; delete val/{CLASS2}")
bad_train("data-class-of-non-images", "data", ["data.root={work}/data"], ["zz_notes"],
          setup=_setup_class_of_non_images,
          setup_text="copy ds; train/zz_notes holds only readme.txt (val/zz_notes one image)")
bad_train("data-cifar-on-image-folder", "data", ["data.dataset=cifar10"], [], ["data.dataset", "data_batch", "cifar"])
bad_train("data-exclude-file-missing", "data", ["data.exclude_file={work}/no_such_list.json"], ["data.exclude_file"])
bad_train("data-exclude-list-of-another-dataset", "data", ["data.exclude_file={work}/list.json"],
          ["data.exclude_file"], setup=_setup_exclude_other,
          setup_text="check-data --output list.json on another dataset with a corrupt JPEG")
bad_train("data-exclude-list-in-yaml", "data", ["data.exclude_file={work}/bad_files.yaml"], ["data.exclude_file"],
          setup=_setup_exclude_yaml, setup_text="bad_files.yaml: 'bad_files: [{path: <a ds file>}]' as YAML")
bad_train("data-exclude-list-empties-a-class", "data", ["data.exclude_file={work}/bad.txt"], [CLASS1],
          setup=_setup_exclude_class, setup_text=f"bad.txt lists every train image of {CLASS1}")
bad_check("check-root-missing", ["{work}/no_such_root", "--no-progress"], ["no_such_root"])
bad_check("check-workers-zero", ["{ds}", "--workers", "0", "--no-progress"], ["--workers"])
bad_check("check-unknown-split", ["{ds}", "--split", "nope", "--no-progress"], ["nope"])


@custom("check-data-list-excludes-a-corrupt-jpeg", "data",
        "check-data exits 1 naming the corrupt JPEG; training with its list trains on the other 47 images",
        "copy ds, corrupt one train JPEG; check-data --output bad.json; train data.exclude_file=bad.json")
def _check_then_exclude(ctx: Ctx, work: Path) -> Outcome:
    root = ctx.copy_dataset("ds", work / "data")
    victim = _images(root / "train" / CLASS1)[1]
    _corrupt(victim)
    o = Outcome()
    res = ctx.check_data([str(root), "--workers", "1", "--no-progress", "--output", str(work / "bad.json")], work)
    o.see(res, "check-data")
    if res.rc != 1:
        o.fail(f"check-data exited {res.rc}, expected 1 (problems found)")
    if victim.name not in res.stdout:
        o.fail(f"check-data's report does not name {victim.name}")
    if not (work / "bad.json").is_file():
        o.fail("check-data wrote no list")
        return o
    run = ctx.train([f"data.root={root}", f"data.exclude_file={work / 'bad.json'}"], work)
    judge_success(run, "train", o)
    records = read_metrics(work / "out", o)
    planned = [r.get("planned") for r in records]
    if run.rc == 0 and planned != [47]:
        o.fail(f"planned {planned} samples, expected [47] (48 minus the excluded one)")
    return o


def _planned(ctx: Ctx, res: Result, out: Path, o: Outcome, expected: int, label: str = "train") -> None:
    """The run must succeed and plan ``expected`` samples in its one epoch."""
    judge_success(res, label, o)
    planned = [r.get("planned") for r in read_metrics(out, o)]
    if res.rc == 0 and planned != [expected]:
        o.fail(f"{label} planned {planned} samples, expected [{expected}]")


def _declaring_60000(path: Path) -> None:
    """Rewrite a JPEG so that its frame header declares 60000x60000 pixels (the data stays small)."""
    data = bytearray(path.read_bytes())
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 5 : pos + 9] = (60000).to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))


def _tar_copy(ctx: Ctx, work: Path) -> Path:
    """The ds dataset as tar shards of 16 samples under ``work/tar`` (with classes.txt)."""
    from orderdp_dali.make_shards import folder_to_shards

    folder_to_shards(ctx.dataset("ds"), work / "tar", shard_size=16, prefix="ds", cache_dir=work / "shard-cache")
    return work / "tar"


def _rewrite_shard(shard: Path, change: Callable[[List[Tuple[str, bytes]]], List[Tuple[str, bytes]]]) -> None:
    """Replace ``shard`` by a tar of ``change(its (name, bytes) members)``."""
    import io
    import tarfile

    with tarfile.open(shard) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers() if m.isreg()]
    with tarfile.open(shard, "w") as tf:
        for name, data in change(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


# Issue 22's odd data, one case of several parts (each in its own folder, judged on its own):
# (name, what must happen, what is done, the part).
OddPart = Callable[[Ctx, Path, Outcome], None]
ODD_DATA_PARTS: List[Tuple[str, str, str, OddPart]] = []


def _odd_part(name: str, expect: str, action: str) -> Callable[[OddPart], OddPart]:
    def add(fn: OddPart) -> OddPart:
        ODD_DATA_PARTS.append((name, expect, action, fn))
        return fn

    return add


@_odd_part("fifo", "a FIFO named x.jpg: check-data lists it (not_a_file); training leaves it out, never opens it "
           "(plans 48)", f"copy ds; mkfifo train/{CLASS0}/x.jpg; check-data; train")
def _fifo(ctx: Ctx, work: Path, o: Outcome) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    os.mkfifo(root / "train" / CLASS0 / "x.jpg")
    res = ctx.check_data([str(root), "--workers", "1", "--no-progress"], work)
    o.see(res, "check-data")
    if res.rc != 1 or "x.jpg: not_a_file" not in res.stdout:
        o.fail(f"check-data exited {res.rc} without listing x.jpg as not_a_file")
    _planned(ctx, ctx.train([f"data.root={root}"], work), work / "out", o, 48)


@_odd_part("huge-header", "a JPEG declaring 60000x60000: check-data lists it (too_large); training stops naming it",
           f"copy ds; patch train/{CLASS1}/<2nd image>'s frame header to 60000x60000; check-data; train")
def _huge(ctx: Ctx, work: Path, o: Outcome) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    victim = _images(root / "train" / CLASS1)[1]
    _declaring_60000(victim)
    res = ctx.check_data([str(root), "--workers", "1", "--no-progress"], work)
    o.see(res, "check-data")
    if res.rc != 1 or f"{victim.name}: too_large" not in res.stdout:
        o.fail(f"check-data exited {res.rc} without listing {victim.name} as too_large")
    judge_error(ctx.train([f"data.root={root}"], work), TRAIN_PREFIX, [victim.name], outcome=o)


@_odd_part("latin1-name", "a file named caf<0xE9>.JPEG: refused, the error names `caf\\xe9.JPEG` and `UTF-8`",
           f"copy ds; add train/{CLASS0}/caf<0xE9>.JPEG; train")
def _latin1(ctx: Ctx, work: Path, o: Outcome) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    shutil.copy(_images(root / "train" / CLASS0)[0], root / "train" / CLASS0 / os.fsdecode(b"caf\xe9.JPEG"))
    judge_error(ctx.train([f"data.root={root}"], work), TRAIN_PREFIX, ["caf\\xe9.JPEG", "UTF-8"], outcome=o)


@_odd_part("list-label-2e9", "a file-list label of 2e9 without classes file: refused at once, naming "
           "`train.txt line 48` and `data.classes_file`",
           "copy ds; train.txt lists its 48 train images, the last with label 2000000000; train (ulimit -v 12 GB)")
def _label_2e9(ctx: Ctx, work: Path, o: Outcome) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    lines = [f"{c}/{f.name} {k}" for k, c in enumerate((CLASS0, CLASS1, CLASS2)) for f in _images(root / "train" / c)]
    lines[-1] = lines[-1].rsplit(" ", 1)[0] + " 2000000000"
    _write(root / "train.txt", "\n".join(lines) + "\n")
    res = ctx.train([f"data.root={root}", "data.train_list=train.txt", "train.eval_every=0"], work,
                    ulimit_kb=12 * 1024 * 1024)
    judge_error(res, TRAIN_PREFIX, ["train.txt line 48", "data.classes_file"], outcome=o)


@_odd_part("tar-cls-26-digits", "a 26-digit .cls: refused, naming `ds-train-0001.tar`, the key and `too large`",
           "make-shards ds (16 a shard); the 3rd .cls of shard 0001 holds 26 digits; train")
def _cls_26(ctx: Ctx, work: Path, o: Outcome) -> None:
    tar = _tar_copy(ctx, work)
    shard = sorted((tar / "train").glob("*.tar"))[1]
    _rewrite_shard(shard, lambda ms: [(n, b"1" * 26 if n.endswith(".cls") and i == 5 else d)
                                      for i, (n, d) in enumerate(ms)])
    res = ctx.train(["data.dataset=tar", f"data.root={tar}"], work)
    judge_error(res, TRAIN_PREFIX, ["ds-train-0001.tar", "key", "too large"], outcome=o)


@_odd_part("tar-several-dots", "img.v2.jpeg + img.v2.cls is a sample: check-data exits 0, training plans 48",
           "make-shards ds; rename one pair of shard 0000 to <key>.v2.jpeg / <key>.v2.cls; check-data; train")
def _tar_dots(ctx: Ctx, work: Path, o: Outcome) -> None:
    tar = _tar_copy(ctx, work)
    shard = sorted((tar / "train").glob("*.tar"))[0]
    _rewrite_shard(shard, lambda ms: [(_dotted(n) if i < 2 else n, d) for i, (n, d) in enumerate(ms)])  # one pair
    res = ctx.check_data([str(tar), "--workers", "1", "--no-progress"], work)
    o.see(res, "check-data")
    if res.rc != 0:
        o.fail(f"check-data exited {res.rc}, expected 0 (every member pairs)")
    _planned(ctx, ctx.train(["data.dataset=tar", f"data.root={tar}"], work), work / "out", o, 48)


def _dotted(name: str) -> str:
    """``c/img.jpeg`` as ``c/img.v2.jpeg``: a second dot before the extension."""
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.v2.{ext}"


@_odd_part("tar-dotdot-member", "check-data's entry for a corrupt '../evil.jpeg' excludes it: training with the "
           "list plans 48", "make-shards ds; add a corrupt ../evil.jpeg (+ .cls) to shard 0000; check-data --output "
           "bad.json; train data.exclude_file=bad.json")
def _tar_dotdot(ctx: Ctx, work: Path, o: Outcome) -> None:
    tar = _tar_copy(ctx, work)
    shard = sorted((tar / "train").glob("*.tar"))[0]
    _rewrite_shard(shard, lambda ms: ms + [("../evil.jpeg", b"\xff\xd8\xff\xe0" + bytes(300)), ("../evil.cls", b"0")])
    listed = work / "bad.json"
    res = ctx.check_data([str(tar), "--workers", "1", "--no-progress", "--output", str(listed)], work)
    o.see(res, "check-data")
    if res.rc != 1 or "evil.jpeg" not in res.stdout:
        o.fail(f"check-data exited {res.rc} without listing ../evil.jpeg")
    run = ctx.train(["data.dataset=tar", f"data.root={tar}", f"data.exclude_file={listed}"], work)
    _planned(ctx, run, work / "out", o, 48)


@custom("data-odd-entries-and-labels", "data",
        f"each of {len(ODD_DATA_PARTS)} parts ({', '.join(name for name, _, _, _ in ODD_DATA_PARTS)}) as its action "
        "says: refused naming the file, line or shard and key, or left out / paired / excluded and trained",
        "; ".join(f"[{name}] {action} => {expect}" for name, expect, action, _ in ODD_DATA_PARTS))
def _odd_data(ctx: Ctx, work: Path) -> Outcome:
    o = Outcome()
    for name, _, _, part in ODD_DATA_PARTS:
        got = Outcome()
        try:
            part(ctx, work / name, got)
        except SetupError as e:
            got.fail(f"setup failed: {e}")
        o.exit = got.exit if o.exit == "-" else f"{o.exit}, {got.exit}"
        o.traceback |= got.traceback
        o.silent |= got.silent
        o.lost |= got.lost
        o.last_line = got.last_line or o.last_line
        o.problems += [f"[{name}] {problem}" for problem in got.problems]
    return o


# ---------------------------------------------------------------- checkpoint
def _setup_foreign_version(ctx: Ctx, work: Path) -> None:
    import torch

    work.mkdir(parents=True, exist_ok=True)
    torch.save({"version": 99, "epoch": 1, "model": {}}, work / "old.pth")


bad_train("ckpt-resume-path-missing", "checkpoint", ["--resume", "{work}/nope.pth"], ["nope.pth"])
bad_train("ckpt-resume-path-is-a-folder", "checkpoint", ["--resume", "{work}/ckptdir"], ["ckptdir"],
          setup=lambda ctx, work: (work / "ckptdir").mkdir(parents=True), setup_text="mkdir {work}/ckptdir")
bad_train("ckpt-resume-text-file", "checkpoint", ["--resume", "{work}/notes.pth"], ["notes.pth"],
          setup=lambda ctx, work: _write(work / "notes.pth", "not a checkpoint\n"),
          setup_text="write a text file {work}/notes.pth")
bad_train("ckpt-resume-foreign-version", "checkpoint", ["--resume", "{work}/old.pth"], ["old.pth"],
          setup=_setup_foreign_version, setup_text="torch.save({'version': 99, ...}, old.pth)")
bad_train("ckpt-other-policy-params", "checkpoint",
          [*ORDERDP, "policy.params.top_q_ratio=0.5", "--resume", "auto"], ["top_q_ratio"], fixture="orderdp1")
bad_train("ckpt-other-model", "checkpoint", ["model.name=resnet18", "--resume", "auto"], ["model.name"],
          fixture="full1")
bad_train("ckpt-other-optimizer", "checkpoint", ["optim.name=lamb", "train.epochs=2", "--resume", "auto"],
          ["optim.name"], fixture="full1")
bad_train("ckpt-changed-recipe", "checkpoint",
          ["optim.lr=0.1", "train.batch_size=4", "data.crop=28", "data.val_resize=28", "train.epochs=2",
           "--resume", "auto"], ["optim.lr", "train.batch_size", "data.crop", "--allow-changes"], fixture="full1")


# ---------------------------------------------------------------- output dir
def _setup_delete_last(ctx: Ctx, work: Path) -> None:
    (work / "out" / LAST).unlink()


bad_train("out-rerun-without-resume", "output dir", [], ["--resume"], fixture="full1")
bad_train("out-log-without-checkpoint-resume-auto", "output dir", ["--resume", "auto"], [], [LAST, METRICS],
          fixture="full1", setup=_setup_delete_last, setup_text=f"delete {{out}}/{LAST} (keep {METRICS})")
bad_train("out-dir-under-a-file", "output dir", ["--output-dir", "{work}/afile/run"], ["afile"],
          setup=lambda ctx, work: _write(work / "afile", "a file\n"), setup_text="write {work}/afile")


@custom("out-dir-empty-string", "output dir", "refused, error names `--output-dir`; nothing written to the cwd",
        'train --config {config} --output-dir ""  (cwd {work})')
def _out_empty(ctx: Ctx, work: Path) -> Outcome:
    work.mkdir(parents=True, exist_ok=True)
    res = ctx.train(["--output-dir", ""], work)
    o = judge_error(res, TRAIN_PREFIX, ["--output-dir"])
    written = sorted(p.name for p in work.iterdir())
    if written:
        o.fail(f"wrote {written} into the working directory")
    return o


@custom("out-dir-with-spaces-and-unicode", "output dir", "trains: exit 0, epoch 0 logged once, last.pth at epoch 1",
        'train --config {config} --output-dir "{work}/out dir ü 日本"')
def _out_unicode(ctx: Ctx, work: Path) -> Outcome:
    out = work / "out dir ü 日本"
    o = judge_success(ctx.train([], work, out=out))
    expect_epochs(out, o, [0])
    expect_checkpoint(out, o, 1)
    return o


@custom("out-resume-finished-run", "output dir", "exit 0, nothing re-run: metrics.jsonl and last.pth unchanged",
        "copy finished run full1 to {out}; train --config {config} --resume auto --output-dir {out}")
def _resume_finished(ctx: Ctx, work: Path) -> Outcome:
    out = ctx.copy_run("full1", work / "out")
    keep = Snapshot(out / METRICS, out / LAST)
    o = judge_success(ctx.train(["--resume", "auto"], work, out=out))
    for damage in keep.damage():
        o.lose(f"finished run damaged: {damage}")
    return o


# A run still training while a case starts a second one into its folder (stopped with SIGTERM after).
LONG_RUN = (*(a for a in KILL_RUN if not a.startswith("train.epochs=")), "train.epochs=400")


@custom("out-second-run-while-one-trains", "output dir",
        "a fresh run (another lr) and a --resume auto into a folder where a run trains: both refused naming "
        "the training run's PID; its log stays its own",
        "train (orderdp, big, 400 epochs) into {out}; while it trains: train optim.lr=0.2 and train --resume auto "
        "into {out}; SIGTERM the first")
def _second_run(ctx: Ctx, work: Path) -> Outcome:
    out = work / "out"
    o = Outcome()
    first = ctx.start(ctx.train_argv([*LONG_RUN, "train.progress=true"], work, out=out), work)
    try:
        if not first.wait_for(_mid_epoch(1), "stderr", ctx.timeout):
            o.fail("the first run never reached epoch 1")
            return o
        for extra in (["optim.lr=0.2"], ["--resume", "auto"]):
            res = ctx.train([*LONG_RUN, *extra], work, out=out)
            judge_error(res, TRAIN_PREFIX, ["in use", f"PID {first.proc.pid}"], outcome=o)
        if first.proc.poll() is not None:
            o.fail(f"the first run stopped (exit {first.proc.returncode}) while the others were refused")
        first.send(signal.SIGTERM)
        first.finish(SIGNAL_GRACE_S)
    finally:
        first.kill_session()
    records = read_metrics(out, o)
    epochs = [r.get("epoch") for r in records]
    if not epochs or epochs != list(range(len(epochs))) or len({r.get("run_id") for r in records}) != 1:
        o.lose(f"{METRICS} logs epochs {epochs} of {len({r.get('run_id') for r in records})} runs: "
               "expected the first run's alone, each epoch once")
    if not (out / "config.json").is_file() or json.loads((out / "config.json").read_text())["optim"]["lr"] != 0.05:
        o.lose("config.json is no longer the training run's")
    return o


@custom("out-resume-checkpoint-of-another-run", "output dir",
        "refused, error names `another run` and `--overwrite`; the folder's run unchanged",
        "copy finished run full1 to {out}, orderdp1 to {work}/b; train orderdp --resume {work}/b/last.pth "
        "--output-dir {out}")
def _other_run_checkpoint(ctx: Ctx, work: Path) -> Outcome:
    out = ctx.copy_run("full1", work / "out")
    other = ctx.copy_run("orderdp1", work / "b")
    keep = Snapshot(out)
    res = ctx.train([*ORDERDP, "train.epochs=2", "--resume", str(other / LAST)], work, out=out)
    return judge_error(res, TRAIN_PREFIX, ["another run", "--overwrite"], keep=keep)


@custom("out-corrupt-metrics-line-then-resume", "output dir",
        f"refused, error names `{METRICS}` and `line 2`; the run's files unchanged",
        f"copy finished run killref (3 epochs) to {{out}}; garble line 2 of {METRICS}; train --resume auto")
def _corrupt_metrics_line(ctx: Ctx, work: Path) -> Outcome:
    out = ctx.copy_run("killref", work / "out")
    lines = (out / METRICS).read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"  # epoch 1's line, cut in half
    (out / METRICS).write_text("".join(lines), encoding="utf-8")
    keep = Snapshot(out)
    res = ctx.train([*KILL_RUN, "--resume", "auto"], work, out=out)
    return judge_error(res, TRAIN_PREFIX, [METRICS, "line 2"], keep=keep)


@custom("out-temporary-files-of-a-killed-write", "output dir",
        "trains on: exit 0, epochs 0,1 logged once, last.pth at epoch 2, the temporary files gone",
        f"copy finished run full1 to {{out}}; add .{LAST}.k3j9x2aq.tmp and .{METRICS}.zz_09abc.tmp (what kill -9 "
        "mid-write leaves); train train.epochs=2 --resume auto")
def _stale_temporaries(ctx: Ctx, work: Path) -> Outcome:
    out = ctx.copy_run("full1", work / "out")
    (out / f".{LAST}.k3j9x2aq.tmp").write_bytes((out / LAST).read_bytes()[:4096])
    (out / f".{METRICS}.zz_09abc.tmp").write_text('{"epoch": 0', encoding="utf-8")
    o = judge_success(ctx.train(["train.epochs=2", "--resume", "auto"], work, out=out))
    expect_epochs(out, o, [0, 1])
    expect_checkpoint(out, o, 2)
    left = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    if left:
        o.fail(f"temporary files still there: {left}")
    return o


# ---------------------------------------------------------------- injected faults
def _mid_epoch(epoch: int) -> str:
    """tqdm's bar for ``epoch`` after at least one finished step, e.g. ``epoch 1:  21%|##  | 3/27``."""
    return rf"epoch {epoch}:\s+\d+%\|[^|\r\n]*\| *[1-9]\d*/\d+"


def _interrupt(ctx: Ctx, work: Path, pattern: str, stream: str, sig: int, again: Optional[float] = None) -> Outcome:
    """Run KILL_RUN, send ``sig`` once ``stream`` matches ``pattern`` (and a SIGINT ``again`` seconds
    later), check what is left, resume, compare."""
    ref = read_metrics(ctx.fixture_run("killref"), Outcome())
    out = work / "out"
    o = Outcome()
    proc = ctx.start(ctx.train_argv([*KILL_RUN, "train.progress=true"], work, out=out), work)
    try:
        reached = proc.wait_for(pattern, stream, ctx.timeout)
        if reached:
            proc.send(sig)
            if again is not None:
                time.sleep(again)
                proc.send(signal.SIGINT)
        res = proc.finish(SIGNAL_GRACE_S if reached else ctx.timeout)
        left = proc.session_pids()
    finally:
        proc.kill_session()
    o.see(res, "interrupted run")
    if not reached:
        o.fail(f"the run never reached the point to interrupt (exit {res.rc})")
        return o
    if res.timed_out:
        o.fail(f"still running {SIGNAL_GRACE_S:.0f} s after {signal.Signals(sig).name}")
    elif sig == signal.SIGKILL and res.rc != -sig:
        o.fail(f"exit {res.rc} after SIGKILL")
    elif res.rc == 0:
        o.fail(f"exit 0 after {signal.Signals(sig).name}: an interrupted run must not look finished")
    elif sig in (signal.SIGINT, signal.SIGTERM) and res.rc != 128 + (signal.SIGINT if again is not None else sig):
        o.fail(f"exit {res.rc} after {signal.Signals(sig).name}{' and a second SIGINT' if again is not None else ''}"
               f", expected {128 + (signal.SIGINT if again is not None else sig)}")
    if left:
        o.fail(f"processes left behind: {left}")
    known = ("config.json", LAST, METRICS)
    stray = sorted(p.name for p in out.iterdir() if p.name not in known) if out.is_dir() else []
    if sig == signal.SIGTERM and again is None and stray:
        o.fail(f"files left behind after SIGTERM: {stray}")
    if again is not None and [name for name in stray if name.endswith(".tmp")]:
        o.fail(f"temporary files left behind after two SIGINTs: {stray}")
    # What the interrupted run left: a log of epochs 0..k-1 (no line twice, none torn) and a loadable
    # checkpoint. Whether the log or the checkpoint of the epoch at hand is written first is the
    # trainer's choice; the resume below must make them agree.
    logged = [r.get("epoch") for r in read_metrics(out, o)]
    saved, why = checkpoint_epoch(out / LAST)
    if logged != list(range(len(logged))):
        o.lose(f"after the interruption {METRICS} logs epochs {logged}")
    if saved is None and (out / LAST).exists():
        o.lose(f"checkpoint not intact after {signal.Signals(sig).name}: {why}")
    if pattern.startswith("epoch 1") and saved != 1:
        o.lose(f"{LAST} should resume at epoch 1 after an interruption in epoch 1, got {saved} ({why})")
    resumed = ctx.train([*KILL_RUN, "--resume", "auto"], work, out=out)
    judge_success(resumed, "resumed run", o)
    records = expect_epochs(out, o, [0, 1, 2])
    if [r.get("plan_sha1") for r in records] != [r.get("plan_sha1") for r in ref]:
        o.fail("the resumed run's plans (plan_sha1) differ from an uninterrupted run's")
    expect_checkpoint(out, o, 3)
    # Whatever the interruption left (a kill -9 mid-write leaves a temporary checkpoint file), the
    # resumed run cleaned it up. (config.<epoch>.json records the resume's changed settings: progress.)
    stray = sorted(p.name for p in out.iterdir()
                   if p.name not in known and not re.fullmatch(r"config\.\d+\.json", p.name)) if out.is_dir() else []
    if stray:
        o.fail(f"files left behind after the resumed run: {stray}")
    if "Traceback" in res.stderr or "Exception ignored" in res.stderr:
        o.traceback = True
        o.fail("the interrupted run printed a traceback")
    return o


@custom("fault-kill-9-mid-epoch-then-resume", "fault",
        "after kill -9 in epoch 1: last.pth intact (epoch 1); --resume auto logs epochs 0,1,2 once, "
        "plans as uninterrupted",
        "train (orderdp, 3 epochs, big) ; kill -9 mid-epoch 1 ; train --resume auto")
def _kill_mid_epoch(ctx: Ctx, work: Path) -> Outcome:
    return _interrupt(ctx, work, _mid_epoch(1), "stderr", signal.SIGKILL)


@custom("fault-kill-9-at-epoch-end", "fault",
        "kill -9 as epoch 0's metrics line is printed (log/checkpoint being written): the checkpoint loads; "
        "resume logs 0,1,2 once, same plans",
        "train (orderdp, 3 epochs, big) ; kill -9 when epoch 0's metrics line reaches stdout ; train --resume auto")
def _kill_after_log(ctx: Ctx, work: Path) -> Outcome:
    return _interrupt(ctx, work, r'"epoch": 0,', "stdout", signal.SIGKILL)


@custom("fault-sigterm-mid-epoch", "fault",
        "SIGTERM in epoch 1: exits within 20 s, non-zero, no traceback, no stray files; resume logs 0,1,2 once",
        "train (orderdp, 3 epochs, big) ; SIGTERM mid-epoch 1 ; train --resume auto")
def _sigterm(ctx: Ctx, work: Path) -> Outcome:
    return _interrupt(ctx, work, _mid_epoch(1), "stderr", signal.SIGTERM)


@custom("fault-sigint-twice-mid-epoch", "fault",
        "Ctrl-C twice, 50 ms apart, in epoch 1: exit 130 within 20 s, no traceback, no temporary file; "
        "resume logs 0,1,2 once",
        "train (orderdp, 3 epochs, big) ; SIGINT mid-epoch 1 and again 50 ms later ; train --resume auto")
def _sigint_twice(ctx: Ctx, work: Path) -> Outcome:
    return _interrupt(ctx, work, _mid_epoch(1), "stderr", signal.SIGINT, again=0.05)


@custom("fault-read-only-output-dir", "fault", "refused, error names the output dir `readonly_out`",
        "mkdir {work}/readonly_out; chmod 0555; train --output-dir {work}/readonly_out (skipped as root)")
def _read_only(ctx: Ctx, work: Path) -> Outcome:
    if os.geteuid() == 0:
        return Outcome(skipped="running as root, which ignores a read-only mode")
    out = work / "readonly_out"
    out.mkdir(parents=True)
    out.chmod(0o555)
    try:
        return judge_error(ctx.train([], work, out=out), TRAIN_PREFIX, ["readonly_out"])
    finally:
        out.chmod(0o755)


@custom("fault-output-dir-is-a-file", "fault", "refused, error names `not_a_dir.txt`; the file unchanged",
        "write {work}/not_a_dir.txt; train --output-dir {work}/not_a_dir.txt")
def _out_is_file(ctx: Ctx, work: Path) -> Outcome:
    target = _write(work / "not_a_dir.txt", "keep me\n")
    keep = Snapshot(target)
    return judge_error(ctx.train([], work, out=target), TRAIN_PREFIX, ["not_a_dir.txt"], keep=keep)


@custom("fault-truncated-last-pth", "fault", f"refused, error names `{LAST}`; the run's files unchanged",
        f"copy finished run full1 to {{out}}; truncate {LAST} to half; train --resume auto")
def _truncated(ctx: Ctx, work: Path) -> Outcome:
    out = ctx.copy_run("full1", work / "out")
    data = (out / LAST).read_bytes()
    (out / LAST).write_bytes(data[: len(data) // 2])
    keep = Snapshot(out)
    return judge_error(ctx.train(["--resume", "auto"], work, out=out), TRAIN_PREFIX, [LAST], keep=keep)


bad_train("fault-last-pth-from-another-dataset", "fault", ["--resume", "auto"], [LAST], ["dataset", "data.root"],
          fixture="other1")
bad_train("fault-checkpoint-of-another-policy", "fault", ["--resume", "auto"], ["orderdp", "policy"],
          fixture="orderdp1")


@custom("fault-nan-loss", "fault",
        "refused mid-run with an error naming `optim.lr` or the non-finite loss; no NaN epoch logged",
        "train --config {config} optim.lr=1e6")
def _nan(ctx: Ctx, work: Path) -> Outcome:
    out = work / "out"
    o = judge_error(ctx.train(["optim.lr=1e6"], work, out=out), TRAIN_PREFIX, [],
                    ["optim.lr", "non-finite", "not finite", "nan"])
    for r in read_metrics(out, o):
        loss = r.get("train_loss")
        if not isinstance(loss, (int, float)) or loss != loss or loss in (float("inf"), float("-inf")):
            o.lose(f"epoch {r.get('epoch')} logged with train_loss {loss}")
    return o


def _corrupt_case(split: str) -> Callable[[Ctx, Path], Outcome]:
    def run(ctx: Ctx, work: Path) -> Outcome:
        root = ctx.copy_dataset("ds", work / "data")
        victim = _images(root / split / CLASS1)[2]
        _corrupt(victim)
        return judge_error(ctx.train([f"data.root={root}"], work), TRAIN_PREFIX, [victim.name])

    return run


custom("fault-corrupt-jpeg-in-train", "fault", "stops with a clean error naming the corrupt file",
       f"copy ds; overwrite train/{CLASS1}/<3rd image> with garbage; train")(_corrupt_case("train"))
custom("fault-corrupt-jpeg-in-val", "fault", "stops with a clean error naming the corrupt file",
       f"copy ds; overwrite val/{CLASS1}/<3rd image> with garbage; train")(_corrupt_case("val"))


def _deleted_case(nested: bool) -> Callable[[Ctx, Path], Outcome]:
    def run(ctx: Ctx, work: Path) -> Outcome:
        root = ctx.copy_dataset("ds", work / "data")
        folder = root / "train" / CLASS0
        files = _images(folder)
        if nested:
            sub = folder / "sub"
            sub.mkdir()
            for f in files[:4]:
                f.rename(sub / f.name)
            victim = sub / files[0].name
        else:
            victim = files[0]
        o = Outcome()
        judge_success(ctx.train([f"data.root={root}"], work, out=work / "first"), "first run (builds the cache)", o)
        victim.unlink()
        res = ctx.train([f"data.root={root}"], work, out=work / "out")
        if res.rc == 0 or not nested:
            judge_success(res, "run after the deletion", o)
            planned = [r.get("planned") for r in read_metrics(work / "out", o)]
            if res.rc == 0 and planned != [47]:
                o.fail(f"planned {planned} samples after the deletion, expected [47]")
            return o
        return judge_error(res, TRAIN_PREFIX, [victim.name], outcome=o)

    return run


custom("fault-file-deleted-after-index-cache", "fault",
       "the cached index notices: trains on the 47 remaining images",
       f"copy ds; train (builds the index cache); delete train/{CLASS0}/<1st image>; train")(_deleted_case(False))
custom("fault-nested-file-deleted-after-index-cache", "fault",
       "trains on the 47 remaining images, or a clean error naming the missing file",
       f"copy ds, move 4 images to train/{CLASS0}/sub/; train; delete one of them; train")(_deleted_case(True))
@custom("fault-image-replaced-before-resume", "fault",
        f"refused, error names `{LAST}` and the replaced files; the run's files unchanged",
        f"copy ds; train (1 epoch); rewrite train/{CLASS1}/<3rd image> in place with another image's bytes; "
        "train train.epochs=2 --resume auto")
def _replaced(ctx: Ctx, work: Path) -> Outcome:
    root = ctx.copy_dataset("ds", work / "data")
    out = work / "out"
    o = judge_success(ctx.train([f"data.root={root}"], work, out=out), "first run")
    victim = _images(root / "train" / CLASS1)[2]
    data = _images(root / "train" / CLASS0)[0].read_bytes()
    with open(victim, "r+b") as f:  # as `cp other.JPEG victim.JPEG` does: same inode, the folder untouched
        f.truncate(0)
        f.write(data)
    keep = Snapshot(out)
    res = ctx.train([f"data.root={root}", "train.epochs=2", "--resume", "auto"], work, out=out)
    return judge_error(res, TRAIN_PREFIX, [LAST, "replaced"], keep=keep, outcome=o)


@custom("fault-file-added-folder-mtime-restored", "fault",
        "the index cache notices (the folder's ctime changed): trains on the 49 images",
        f"copy ds; train (builds the cache); add train/{CLASS0}/added.JPEG and set the folder's mtime back "
        "(as tar x / rsync -a); train")
def _restored(ctx: Ctx, work: Path) -> Outcome:
    root = ctx.copy_dataset("ds", work / "data")
    o = judge_success(ctx.train([f"data.root={root}"], work, out=work / "first"), "first run (builds the cache)")
    folder = root / "train" / CLASS0
    st = os.stat(folder)
    shutil.copy(_images(folder)[0], folder / "added.JPEG")
    os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    _planned(ctx, ctx.train([f"data.root={root}"], work, out=work / "out"), work / "out", o, 49)
    return o


# A single class trains to loss 0: refused for the policies that rank by loss (full data only warns).
bad_train("fault-one-class-dataset", "fault", ["data.root={one}", "policy.name=orderdp"], ["single class", "orderdp"])


def _setup_empty_class(ctx: Ctx, work: Path) -> None:
    root = ctx.copy_dataset("ds", work / "data")
    (root / "train" / "zz_empty").mkdir()
    (root / "val" / "zz_empty").mkdir()
    shutil.copy(_images(root / "val" / CLASS0)[0], root / "val" / "zz_empty" / "img.JPEG")


bad_train("fault-empty-class-folder", "fault", ["data.root={work}/data"], ["zz_empty"], setup=_setup_empty_class,
          setup_text="copy ds; mkdir train/zz_empty (val/zz_empty has one image)")


@custom("fault-missing-val-split-eval-every-0", "fault", "trains without validation: exit 0, epoch 0 logged, last.pth",
        "copy ds; delete val/; train train.eval_every=0")
def _no_val_ok(ctx: Ctx, work: Path) -> Outcome:
    root = ctx.copy_dataset("ds", work / "data")
    shutil.rmtree(root / "val")
    out = work / "out"
    o = judge_success(ctx.train([f"data.root={root}", "train.eval_every=0"], work, out=out))
    expect_epochs(out, o, [0])
    expect_checkpoint(out, o, 1)
    return o


def _setup_no_val(ctx: Ctx, work: Path) -> None:
    shutil.rmtree(ctx.copy_dataset("ds", work / "data") / "val")


bad_train("fault-missing-val-split-eval-every-1", "fault", ["data.root={work}/data", "train.eval_every=1"], [],
          ["data.val_split", "/val", "train.eval_every"], setup=_setup_no_val, setup_text="copy ds; delete val/")


def _extend(fixture: str, policy: Sequence[str]) -> Callable[[Ctx, Path], Outcome]:
    def run(ctx: Ctx, work: Path) -> Outcome:
        out = ctx.copy_run(fixture, work / "out")
        first = (out / METRICS).read_text(encoding="utf-8").splitlines()
        o = judge_success(ctx.train([*policy, "train.epochs=2", "--resume", "auto"], work, out=out))
        records = expect_epochs(out, o, [0, 1])
        now = (out / METRICS).read_text(encoding="utf-8").splitlines() if (out / METRICS).is_file() else []
        if records and now[:1] != first[:1]:
            o.lose("epoch 0's line of the finished run was rewritten")
        expect_checkpoint(out, o, 2)
        return o

    return run


custom("fault-extend-finished-full-run", "fault",
       "continues: exit 0, epochs 0,1 logged once (epoch 0's line untouched), last.pth at epoch 2",
       "copy finished run full1 (1 epoch); train train.epochs=2 --resume auto")(_extend("full1", ()))
custom("fault-extend-finished-orderdp-run", "fault",
       "continues: exit 0, epochs 0,1 logged once (epoch 0's line untouched), last.pth at epoch 2",
       "copy finished run orderdp1 (1 epoch); train orderdp train.epochs=2 --resume auto")(_extend("orderdp1", ORDERDP))
bad_train("fault-extend-finished-infobatch-run", "fault", [*INFOBATCH, "train.epochs=2", "--resume", "auto"],
          ["infobatch"], ["anneal", "train.epochs"], fixture="infobatch1")


@custom("fault-resume-with-allow-changes", "fault",
        "continues with the new lr: exit 0, epochs 0,1 logged once, a config_changes line naming optim.lr, "
        "config.json and epoch 0's line untouched, config.1.json holding the new lr",
        "copy finished run full1 (1 epoch); train optim.lr=0.1 train.epochs=2 --resume auto --allow-changes")
def _allow_changes(ctx: Ctx, work: Path) -> Outcome:
    out = ctx.copy_run("full1", work / "out")
    keep = Snapshot(out / "config.json")
    first = (out / METRICS).read_text(encoding="utf-8").splitlines()
    o = judge_success(ctx.train(["optim.lr=0.1", "train.epochs=2", "--resume", "auto", "--allow-changes"], work,
                                out=out))
    records = read_metrics(out, o)
    epochs = [r.get("epoch") for r in records if "kind" not in r]
    changes = [r for r in records if r.get("kind") == "config_changes"]
    if epochs != [0, 1]:
        o.lose(f"{METRICS} logs epochs {epochs}, expected [0, 1] (each exactly once)")
    if len(changes) != 1 or changes[0].get("epoch") != 1 or "optim.lr" not in (changes[0].get("changes") or {}):
        o.fail(f"expected one config_changes line for epoch 1 naming optim.lr, got {changes}")
    now = (out / METRICS).read_text(encoding="utf-8").splitlines() if (out / METRICS).is_file() else []
    if now[:1] != first[:1]:
        o.lose("epoch 0's line of the finished run was rewritten")
    for damage in keep.damage():
        o.lose(f"the first record was rewritten: {damage}")
    later = out / "config.1.json"
    if not later.is_file() or json.loads(later.read_text(encoding="utf-8"))["optim"]["lr"] != 0.1:
        o.fail("config.1.json does not hold the new optim.lr")
    expect_checkpoint(out, o, 2)
    return o


# torch's libraries do not fit in 1 GiB of address space: the import fails before any of our code runs.
bad_train("fault-torch-import-under-ulimit", "fault", [], ["torch", "ulimit"], ulimit_kb=1024 * 1024)


# ------------------------------------------------------------------ running and reporting
def select_cases(only: Optional[Sequence[str]]) -> List[Case]:
    if not only:
        return list(CASES)
    return [c for c in CASES if any(s.lower() in c.name.lower() or s.lower() == c.category for s in only)]


def run_case(ctx: Ctx, case: Case) -> Outcome:
    """Run one case in its own folder; a setup failure or a bug of this harness is a failing case, not a crash."""
    work = ctx.base / "cases" / case.name
    work.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        o = case.run(ctx, work)
    except SetupError as e:
        o = Outcome(last_line=str(e), problems=[f"setup failed: {e}"])
    except Exception as e:
        detail = traceback.format_exc(limit=4).strip().splitlines()[-1]
        o = Outcome(last_line=f"harness error: {type(e).__name__}: {e}", problems=[f"harness error: {detail}"])
    o.seconds = time.monotonic() - start
    return o


def run_cases(ctx: Ctx, cases: Sequence[Case], jobs: int = 1, log: Optional[Callable[[str], None]] = None,
              ) -> List[Tuple[Case, Outcome]]:
    """Run ``cases`` on ``jobs`` threads (faults first: they take longest); results in ``cases``' order."""
    order = sorted(range(len(cases)), key=lambda i: cases[i].category != "fault")
    results: Dict[int, Outcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_case, ctx, cases[i]): i for i in order}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            results[i] = future.result()
            if log:
                o = results[i]
                log(f"[{done}/{len(cases)}] {o.verdict} {cases[i].name} ({o.seconds:.1f} s)")
    return [(cases[i], results[i]) for i in range(len(cases))]


def summary_line(outcomes: Iterable[Outcome]) -> str:
    outcomes = list(outcomes)
    passed = sum(o.verdict == "PASS" for o in outcomes)
    failed = sum(o.verdict == "FAIL" for o in outcomes)
    skipped = sum(o.verdict == "SKIP" for o in outcomes)
    counts = f"{len(outcomes)} cases: {passed} pass, {failed} fail" + (f", {skipped} skipped" if skipped else "")
    return (f"{counts}; tracebacks without --debug: {sum(o.traceback for o in outcomes)}; "
            f"mistaken inputs accepted silently: {sum(o.silent for o in outcomes)}; "
            f"runs or epochs lost: {sum(o.lost for o in outcomes)}")


def _cell(text: str, limit: Optional[int] = None) -> str:
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _shorten(text: str, base: Optional[str]) -> str:
    return text.replace(base, "$SWEEP") if base else text


def render_report(results: Sequence[Tuple[Case, Outcome]], base: Optional[str] = None, header: str = "") -> str:
    """The markdown table, the summary line and the reasons of each failure."""
    lines = ["# Adversarial sweep", ""]
    if header:
        lines += [header, ""]
    lines += [
        "| case | category | expectation | exit | traceback | verdict | last stderr line |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, o in results:
        shown = _shorten(o.skipped or o.last_line, base)
        lines.append(
            f"| {_cell(case.name)} | {case.category} | {_cell(case.expect)} | {_cell(o.exit)} | "
            f"{'yes' if o.traceback else 'no'} | {o.verdict} | {_cell(shown, SHOWN_CHARS)} |"
        )
    lines += ["", summary_line(o for _, o in results), ""]
    failing = [(c, o) for c, o in results if o.verdict == "FAIL"]
    if failing:
        lines += ["## Why each failing case fails", ""]
        for case, o in failing:
            lines.append(f"- `{case.name}`: " + "; ".join(_cell(_shorten(p, base)) for p in o.problems))
        lines.append("")
    lines += ["`$SWEEP` stands for the sweep's temporary folder. Actions:", ""]
    for case, _ in results:
        lines.append(f"- `{case.name}`: {_cell(case.action)}")
    return "\n".join(lines) + "\n"


def _git_describe() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def list_cases(cases: Sequence[Case]) -> str:
    lines = []
    for c in cases:
        lines.append(f"{c.name}  [{c.category}]\n    action: {c.action}\n    expect: {c.expect}")
    counts = ", ".join(f"{cat} {sum(c.category == cat for c in cases)}" for cat in CATEGORIES)
    lines.append(f"{len(cases)} cases ({counts})")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tools/adversarial_sweep.py",
        description="Bad inputs and injected faults against the real train / check-data CLI; exit 0 iff all pass.",
    )
    p.add_argument("--out", metavar="FILE", help="write the markdown report here (it is printed either way)")
    p.add_argument("--only", metavar="SUBSTRING", action="append",
                   help="run the cases whose name contains SUBSTRING, or of that category (repeatable)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="cases run at once (default 2)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per subprocess (default 120)")
    p.add_argument("--tmp", metavar="DIR", help="make the temporary folder under DIR")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    cases = select_cases(args.only)
    if args.list:
        print(list_cases(cases))
        return 0
    if not cases:
        print(f"no case matches {args.only}", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.timeout <= 0:
        print("--jobs must be >= 1 and --timeout > 0", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="orderdp-sweep-", dir=args.tmp))
    start = time.monotonic()
    try:
        ctx = Ctx(base, timeout=args.timeout)
        results = run_cases(ctx, cases, args.jobs, log=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        kill_all_live()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    seconds = time.monotonic() - start
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"`python tools/adversarial_sweep.py` at {when}, git {_git_describe()}, "
              f"{os.cpu_count()} CPUs, {args.jobs} jobs: {len(cases)} cases in {seconds:.0f} s "
              f"(timeout {args.timeout:.0f} s per subprocess). Every case runs the real CLI in subprocesses.")
    text = render_report(results, str(base), header)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    print(text)
    return 0 if all(o.verdict != "FAIL" for _, o in results) else 1


if __name__ == "__main__":
    sys.exit(main())
