"""The on-disk index cache: one stamped ``.npz`` per split folder, for every format.

Indexing a split (walking 1.28M files, or parsing every tar header) takes minutes on network
storage, so each format keeps its index in ``<cache_dir>/<prefix>-<hash of the folder>.npz``:
a JSON ``meta`` record (format version, folder, when the scan began, format-specific
fields) beside the index's arrays. Each format decides from the stamps it recorded whether
the entry is current; this module reads and writes the entries, and never fails a run: an
unreadable entry means a rescan, an unwritable location costs one next time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar, Union

import numpy as np

from orderdp_dali.atomic import write_atomic

__all__ = ["RACY_NS", "cache_path", "file_stamp", "read_cache", "update_cache", "write_cache"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")

# A file or folder modified less than this before its scan began may change again within the
# same mtime tick (coarse clocks, 1-2 s on some file systems) unseen: such an entry is not trusted.
RACY_NS = 2 * 10**9


def cache_path(root: Path, cache_dir: Optional[PathLike], prefix: str) -> Path:
    """Where the index of the folder ``root`` is cached: ``cache_dir``, else ``$ORDERDP_DALI_CACHE``,
    else ``~/.cache/orderdp_dali``; ``prefix`` names the format (``index``, ``tar-index``)."""
    base = Path(cache_dir or os.environ.get("ORDERDP_DALI_CACHE", "~/.cache/orderdp_dali")).expanduser()
    return base / f"{prefix}-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.npz"


def file_stamp(path: PathLike) -> Tuple[int, int, int, int]:
    """(size, mtime, inode, ctime) in ns: what tells a cache a file or folder changed. The ctime
    changes with any write and when an mtime is set back (tar x, rsync -a), and cannot be set."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def read_cache(cache: Path, what: str, version: int, root: Path,
               load: Callable[[Dict[str, Any], Any], Optional[T]]) -> Optional[T]:
    """``load(meta, npz)`` of the entry ``cache`` when its meta has ``version`` and ``root``; else None.

    ``load`` checks the format's stamps and builds the index (None: out of date). A missing
    entry is None; a torn or foreign one (any error while reading it) is None with a warning
    naming it as ``what``: a cache never fails a run.
    """
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != version or meta.get("root") != str(root):
                return None
            return load(meta, z)
    except FileNotFoundError:
        return None
    except Exception as e:  # EOFError, BadZipFile, KeyError, ...: rescan, never fail
        log.warning("ignoring the unreadable %s %s (%s: %s)", what, cache, type(e).__name__, e)
        return None


def write_cache(cache: Path, what: str, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Write the entry atomically; a read-only cache location only costs a rescan next time."""

    def write(f: Any) -> None:
        np.savez(f, meta=np.array(json.dumps(dict(meta))), **arrays)

    try:
        write_atomic(cache, write)
    except OSError as e:
        log.warning("could not write the %s %s: %s", what, cache, e)


def update_cache(cache: Path, what: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Replace some arrays of the entry, keeping the rest (its stamps are still current)."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            kept = {k: z[k] for k in z.files}
        kept.update(arrays)
        write_atomic(cache, lambda f: np.savez(f, **kept))
    except (OSError, ValueError, KeyError) as e:
        log.warning("could not update the %s %s: %s", what, cache, e)
