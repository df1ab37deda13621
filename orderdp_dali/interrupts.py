"""How the command lines end on Ctrl-C (SIGINT) and SIGTERM.

The first signal raises an exception in the main thread (``KeyboardInterrupt``, or its subclass
:class:`Terminated` for SIGTERM), so the run unwinds as on any error: the pipelines close, a
checkpoint being written removes its temporary file, the output folder's lock is released. The
command then exits with the shell's code for the signal (130 for SIGINT, 143 for SIGTERM).

SIGTERM is what torchrun's teardown, ``kill``, Slurm and Kubernetes send before a SIGKILL; without
a handler the process dies at once with a temporary checkpoint file left behind.

A second signal while that happens (an impatient Ctrl-C, or one during DALI's exit handler)
ends the process at once with one line and no traceback: DALI's ``atexit`` handler runs a garbage
collection that a second ``KeyboardInterrupt`` would break with a traceback. Whatever the first
signal's unwinding had not cleaned up yet (at most a temporary file) is removed when the next
run starts in the folder.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

__all__ = ["Interrupted", "Terminated", "signals_as_interrupts"]

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A ``KeyboardInterrupt``, so whatever cleans up after Ctrl-C cleans up after it too."""


@dataclass
class Interrupted:
    """Which signal ended the run, if one did (filled in by :func:`signals_as_interrupts`)."""

    signum: Optional[int] = None

    @property
    def exit_code(self) -> int:
        """The shell's convention, 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name


@contextlib.contextmanager
def signals_as_interrupts(prog: str) -> Iterator[Interrupted]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` and SIGTERM raises :class:`Terminated`.

    After the first signal, a second one (until the process exits) writes ``<prog>: interrupted
    again: exiting now`` and exits at once with the signal's code. When the block ends without a
    signal the previous handlers come back; after one they stay, since the process is about to exit.

    Outside the main thread (where Python cannot set handlers) it does nothing.
    """
    caught = Interrupted()
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def again(signum: int, frame: Any) -> None:
        os.write(2, f"{prog}: interrupted again: exiting now\n".encode())
        os._exit(128 + signum)

    def first(signum: int, frame: Any) -> None:
        caught.signum = signum
        for s in _HANDLED:
            signal.signal(s, again)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous: Dict[int, Any] = {s: signal.signal(s, first) for s in _HANDLED}
    try:
        yield caught
    finally:
        if caught.signum is None:
            for s, handler in previous.items():
                if handler is not None:  # None: a handler set outside Python, which cannot be put back
                    signal.signal(s, handler)
