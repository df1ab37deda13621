"""An output folder belongs to one process at a time: the lock a training run or a bench holds on it.

Two runs writing into one folder interleave their ``metrics.jsonl`` lines and replace each other's
``last.pth`` and ``config.json``; nothing either of them reports is then true. So a run (rank 0
under torchrun: the only rank that writes the folder) and ``orderdp-dali bench`` hold an exclusive
``flock`` on ``<folder>/.orderdp-dali.lock`` for their whole life, and a second one is refused with
an error naming the holder's PID.

Why ``flock`` on a file: the kernel drops the lock when the holding process ends, however it ends
(kill -9 and the OOM killer included), so a crashed run never leaves its folder locked and no
"stale lock" needs guessing at. The file records the holder's PID, host and start time for the
error message; it is removed when the holder releases the lock and reused (overwritten) after a
crash. On a filesystem without locks (some network mounts) the run goes on with a warning.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from orderdp_dali.errors import ConfigError

__all__ = ["LOCK_NAME", "FolderLock", "OutputDirInUseError"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
LOCK_NAME = ".orderdp-dali.lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class OutputDirInUseError(ConfigError):
    """Another live process holds the output folder's lock; the message names its PID."""


class FolderLock:
    """An exclusive lock on ``folder`` (created if missing), held from :meth:`acquire` to :meth:`release`.

    Args:
        folder: the output folder.
        setting: how the user named the folder (``train.output_dir``, ``--out``), for the error.

    A failed start leaves no trace: :meth:`release` removes the lock file and the folders
    :meth:`acquire` created, as long as nothing else was written into them.
    """

    def __init__(self, folder: PathLike, setting: str = "train.output_dir") -> None:
        self.folder = Path(folder)
        self.setting = setting
        self._fd: Optional[int] = None
        self._created: List[Path] = []

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock (idempotent).

        Raises:
            OutputDirInUseError: another process holds it; the message names the holder's PID.
            OSError: the folder cannot be created or written (read-only, a file in the way).
        """
        if self._fd is not None:
            return self
        self._created = _missing_folders(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._fd = self._lock()
        except BaseException:
            self._remove_created()
            raise
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(_holder()) + "\n").encode("utf-8"), 0)
        return self

    def _lock(self) -> Optional[int]:
        """The locked file's descriptor, or None where the filesystem has no locks."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in _BUSY:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise OutputDirInUseError(self._busy_message(holder)) from None
                os.close(fd)
                if e.errno in _NO_LOCKS:
                    log.warning("%s: the filesystem does not support file locks (%s): nothing keeps a second run "
                                "from writing into this folder at the same time", self.folder, e.strerror)
                    self._unlink()
                    return None
                raise
            # The previous holder removes the file as it lets go: if it did so between our open and our
            # lock, we hold a lock on a file nobody else will ever open. Lock the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _busy_message(self, holder: Dict[str, Any]) -> str:
        pid = holder.get("pid", "unknown")
        where = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
        since = f", since {holder['started']}" if holder.get("started") else ""
        return (f"{self.setting}: {self.folder} is in use by another run (PID {pid}{where}{since}); wait for it to "
                f"end or stop it, or choose another {'--out' if self.setting == '--out' else '--output-dir'}")

    def release(self) -> None:
        """Remove the lock file and let go of the lock (idempotent); remove folders :meth:`acquire`
        created if they are still empty."""
        if self._fd is not None:
            self._unlink()  # while still locked: a process waiting on this file then sees it is gone
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first; stops at the first that holds something
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _missing_folders(folder: Path) -> List[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    for f in (folder, *folder.parents):
        if f.exists() or f.is_symlink():
            break
        missing.append(f)
    return missing


def _holder() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _read_holder(fd: int) -> Dict[str, Any]:
    """What the holder wrote into the lock file; it writes just after locking, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        if text:
            try:
                found = json.loads(text)
            except ValueError:
                found = None
            if isinstance(found, dict):
                return found
        time.sleep(0.01)
    return {}
