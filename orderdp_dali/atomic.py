"""Atomic file writes: a crash mid-write leaves the previous file (or none) intact, never half a file.

The one way this project writes a file that something else reads back (checkpoints, the
index cache, check-data's bad-file list, dataset manifests, benchmark results): write a
temporary file in the destination folder, flush and fsync it, rename it over the target,
then fsync the folder so the rename itself survives a power loss.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, List, Union

__all__ = ["TMP_SUFFIX", "remove_stale_temporaries", "write_atomic", "write_text_atomic"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
# A temporary file is named ".<target name>.<8 random characters of mkstemp>.tmp": hidden, beside its
# target, and recognisable afterwards (remove_stale_temporaries) when a killed process left it.
TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")


def write_atomic(path: PathLike, write: Callable[[IO[Any]], Any], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Args:
        path: the target; its folder is created if missing.
        write: writes the content to the open file it is given.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"Invalid mode: {mode!r} (choose 'wb' or 'w')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; follow the umask like open()
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not every filesystem lets a folder be fsync'ed
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: PathLike, text: str) -> Path:
    """:func:`write_atomic` of a UTF-8 string."""
    return write_atomic(path, lambda f: f.write(text), mode="w")


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files :func:`write_atomic` left in ``folder`` when its process was killed
    mid-write (kill -9, the OOM killer, a power loss); return what was removed.

    A write that fails any other way removes its own temporary file, so only a killed process leaves
    one, e.g. ``.last.pth.k3j9x_2a.tmp``: a whole checkpoint's size that nothing else would ever delete.
    Call it only while no other process writes into ``folder`` (a training run holds the folder's
    lock, :mod:`orderdp_dali.folder_lock`, when it does). Regular files only; a missing folder is empty.
    """
    folder = Path(folder)
    removed: List[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if _TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
            log.info("removed %s (%d bytes), a temporary file of a write that was killed", entry.path, size)
    return removed
