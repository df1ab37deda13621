"""Turn a dead DALI worker process into an exception instead of a hang.

When one of DALI's external-source worker processes is killed (OOM killer, ``kill -9``)
while it holds the lock of the shared result queue, DALI's own observer can block, and
the training process waits forever for a batch that will never come. A small thread here
watches the worker PIDs; if one disappears while the main thread waits in
``pipeline.run()``, it interrupts the main thread with ``SIGUSR1``, whose handler raises
:class:`~orderdp_dali.errors.WorkerError`. Linux only (``/proc``), like DALI itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Iterator, List, Optional, Set

from orderdp_dali.errors import WorkerError

__all__ = ["WorkerWatchdog", "spawned_children"]

log = logging.getLogger(__name__)


def _parent_and_state(pid: int) -> Optional[tuple]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def spawned_children() -> Set[int]:
    """PIDs of this process's children started by ``multiprocessing``'s spawn method."""
    me, found = os.getpid(), set()
    if not os.path.isdir("/proc"):
        return found
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        info = _parent_and_state(int(name))
        if info is None or info[0] != me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.add(int(name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    info = _parent_and_state(pid)
    return info is not None and info[1] not in ("Z", "X")


class WorkerWatchdog:
    """Watches ``pids``; while :meth:`guard` is active, a death raises ``WorkerError`` in the guarded thread."""

    def __init__(self, pids: Set[int], interval: float = 0.5) -> None:
        self.pids: List[int] = sorted(pids)
        self.interval = interval
        self.dead: Optional[int] = None
        self._armed = threading.Event()
        self._stop = threading.Event()
        self._target: Optional[int] = None
        self._thread = threading.Thread(target=self._watch, name="orderdp-dali-watchdog", daemon=True)
        if self.pids:
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self.pids:
                if not _alive(pid) and not self._stop.is_set():
                    # Only recorded here: workers also vanish at interpreter exit, which is no
                    # error. It is reported when someone waits on (or next asks for) a batch.
                    self.dead = pid
                    if self._armed.is_set() and self._target is not None:
                        signal.pthread_kill(self._target, signal.SIGUSR1)
                    return

    def _raise(self, signum, frame) -> None:
        log.error("DALI worker process %d died", self.dead)
        raise WorkerError(
            f"DALI external-source worker process {self.dead} died (killed, or out of memory: "
            "check dmesg, or lower py_workers); the input pipeline cannot continue"
        )

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the body (a blocking ``pipeline.run()``) so that a worker death interrupts it."""
        if self.dead is not None:
            self._raise(None, None)
        if threading.current_thread() is not threading.main_thread() or not self.pids:
            yield  # signals reach only the main thread; elsewhere DALI's own detection applies
            return
        previous = signal.signal(signal.SIGUSR1, self._raise)
        self._target = threading.get_ident()
        self._armed.set()
        try:
            if self.dead is not None:
                self._raise(None, None)
            yield
        finally:
            self._armed.clear()
            signal.signal(signal.SIGUSR1, previous)

    def close(self) -> None:
        self._stop.set()
