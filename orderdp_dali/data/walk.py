"""The one walk of a class-folder split, shared by :class:`~orderdp_dali.data.folder.SampleIndex`
and ``orderdp-dali check-data``, so both see the same files.

Class order and the image-extension rule are torchvision ``ImageFolder``'s. It keeps regular
files only (symlinks to them included): a FIFO, socket or device named like an image would
block or fail the reader that opens it, so it is left out and reported.
"""
from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    FrozenSet,
    List,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from orderdp_dali.data.fingerprints import NS
from orderdp_dali.data.images import IMG_EXTENSIONS, is_utf8, printable
from orderdp_dali.errors import DatasetError

__all__ = [
    "SplitWalk",
    "file_stamps",
    "is_dir_entry",
    "walk_split",
]


PathLike = Union[str, "os.PathLike[str]"]


STAT_THREADS_MIN = 50_000  # files from which file_stamps stats in threads (network storage: latency-bound)


def file_stamps(root: PathLike, paths: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes in whole seconds) of ``root / paths[i]``, symlinks followed; -1 where it cannot
    be stat'ed (a broken symlink). About 1.7 us a file on a local disk (the ``stat`` call itself
    is most of it); many files are stat'ed in threads, which hides network storage's latency."""
    prefix = os.path.join(os.fspath(root), "")
    n = len(paths)

    def work(lo: int, hi: int) -> List[int]:
        out: List[int] = []
        add, stat_ = out.append, os.stat
        for p in paths[lo:hi]:
            try:
                st = stat_(prefix + p)
            except OSError:
                add(-1)
                add(-1)
                continue
            add(st.st_size)
            add(st.st_mtime_ns // NS)
        return out

    if n < STAT_THREADS_MIN:
        flat = work(0, n)
    else:
        step = 8192
        with ThreadPoolExecutor(min(16, 4 * (os.cpu_count() or 1))) as pool:
            flat = [v for part in pool.map(lambda lo: work(lo, min(lo + step, n)), range(0, n, step)) for v in part]
    table = np.array(flat, dtype=np.int64).reshape(n, 2)
    return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])


def is_dir_entry(entry: "os.DirEntry[str]") -> bool:
    """``entry.is_dir()`` following symlinks, as ``os.walk`` does; False when it cannot be stat'ed."""
    try:
        return entry.is_dir()
    except OSError:
        return False


@dataclass
class SplitWalk:
    """What :func:`walk_split` found in one split folder.

    Attributes:
        root: the resolved split folder.
        classes: class folder names in ImageFolder order (sorted; symlinked folders count).
        files: per class, its image files relative to ``root``, in ImageFolder order.
        sizes, mtimes: per class, each file's size and mtime (whole seconds), -1 for a broken
            symlink (kept, as ImageFolder keeps it: check-data reports it, training names it).
        dirs: every folder that was listed, relative to ``root`` (``"."`` is the split).
        stamps: ``(st_mtime_ns, st_ino, st_ctime_ns)`` of each of ``dirs``, taken before it was
            listed. Adding, removing or renaming an entry changes its folder's mtime, and setting
            the mtime back (``tar x``, ``rsync -a``, ``touch -d``) changes its ctime, which no
            user can set: so these change whenever the walk's answer can.
        skipped: ``(relpath, reason, detail)`` of what was not walked or not indexed, sorted by
            path: ``"symlink_loop"`` (a symlinked folder that contains itself),
            ``"unreadable_dir"`` (a folder that cannot be listed), ``"not_a_file"`` (an
            image-named FIFO, socket or device, or a symlink to one: never opened) and
            ``"bad_name"`` (a file or folder name that is not valid UTF-8; a class folder is
            still walked, other folders are not).
        started_ns: wall-clock time when the walk began.
    """

    root: str
    classes: List[str] = field(default_factory=list)
    files: List[List[str]] = field(default_factory=list)
    sizes: List[List[int]] = field(default_factory=list)
    mtimes: List[List[int]] = field(default_factory=list)
    dirs: List[str] = field(default_factory=list)
    stamps: List[Tuple[int, int, int]] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)
    started_ns: int = 0

    @property
    def empty_classes(self) -> List[str]:
        """Class folders without any image."""
        return [c for c, found in zip(self.classes, self.files) if not found]


def _bad_name(rel: str) -> Tuple[str, str, str]:
    return rel, "bad_name", f"'{printable(os.path.basename(rel))}' is not valid UTF-8; rename it (e.g. with convmv)"


def walk_split(split_dir: PathLike) -> SplitWalk:
    """Walk a split folder the way torchvision's ``ImageFolder`` does, but never into a loop.

    Classes are the sub-folders of ``split_dir`` (symlinks followed), sorted by name. A
    class's images are the files under it, searched recursively, whose names end with one of
    :data:`IMG_EXTENSIONS` (any case), ordered like ``sorted(os.walk(class_dir,
    followlinks=True))``: by folder path, then by file name. Each is stat'ed once (its size
    and mtime are recorded); only regular files (symlinks to them, and broken symlinks as in
    ImageFolder) are kept: an image-named FIFO, socket or device is recorded in ``skipped``
    and never opened, as is a name that is not valid UTF-8. Symlinked folders are followed;
    one that leads back to a folder it is inside (same ``(st_dev, st_ino)`` as an ancestor)
    is a loop, recorded in ``skipped`` and not entered, where ``os.walk`` would list the same
    files again and again until paths grow too long. The same folder reached twice *without*
    a loop (two symlinks to it) is walked twice, as by ``ImageFolder``. A folder that cannot
    be listed is recorded in ``skipped``.

    Raises:
        DatasetError: ``split_dir`` itself cannot be listed.
    """
    walk = SplitWalk(os.path.realpath(os.fspath(split_dir)), started_ns=time.time_ns())
    try:
        st = os.stat(walk.root)
        with os.scandir(walk.root) as it:
            entries = list(it)
    except OSError as e:
        raise DatasetError(f"cannot list the split folder {walk.root}: {e.strerror or e}") from e
    walk.dirs.append(".")
    walk.stamps.append((st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    walk.classes = sorted(e.name for e in entries if is_dir_entry(e))
    for cls in walk.classes:
        if not is_utf8(cls):
            walk.skipped.append(_bad_name(cls))
        found = _walk_class(walk, cls, (st.st_dev, st.st_ino))
        walk.files.append([rel for rel, _, _ in found])
        walk.sizes.append([size for _, size, _ in found])
        walk.mtimes.append([mtime for _, _, mtime in found])
    walk.skipped.sort()
    return walk


def _image_entry(entry: "os.DirEntry[str]") -> Union[Tuple[int, int], str]:
    """(size, mtime in seconds) of an image-named entry to keep, or why it is not kept (its file mode)."""
    try:
        st = entry.stat()  # follows symlinks
    except OSError:
        return -1, -1  # a broken symlink, or unreadable: kept, so check-data and training name it
    if not stat.S_ISREG(st.st_mode):
        kind = stat.filemode(st.st_mode)
        return f"{kind}: not a regular file (a FIFO, socket or device); training would block or fail reading it"
    return st.st_size, st.st_mtime_ns // NS


def _walk_class(walk: SplitWalk, cls: str, split_key: Tuple[int, int]) -> List[Tuple[str, int, int]]:
    """The image files under one class folder, relative to the split, in ImageFolder order, with
    their sizes and mtimes."""
    listed: List[Tuple[str, List[Tuple[str, int, int]]]] = []  # (folder, its images (name, size, mtime))
    stack: List[Tuple[str, FrozenSet[Tuple[int, int]]]] = [(cls, frozenset([split_key]))]
    while stack:
        rel_dir, ancestors = stack.pop()
        path = os.path.join(walk.root, rel_dir)
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                walk.skipped.append((rel_dir, "symlink_loop", "a symlinked folder that contains itself"))
                continue
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as e:
            walk.skipped.append((rel_dir, "unreadable_dir", e.strerror or str(e)))
            continue
        walk.dirs.append(rel_dir)
        walk.stamps.append((st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
        images, subdirs = [], []
        for entry in entries:
            if is_dir_entry(entry):
                if is_utf8(entry.name):
                    subdirs.append(entry.name)
                else:
                    walk.skipped.append(_bad_name(os.path.join(rel_dir, entry.name)))
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                if not is_utf8(entry.name):
                    walk.skipped.append(_bad_name(os.path.join(rel_dir, entry.name)))
                    continue
                found = _image_entry(entry)
                if isinstance(found, str):
                    walk.skipped.append((os.path.join(rel_dir, entry.name), "not_a_file", found))
                else:
                    images.append((entry.name, *found))
        listed.append((rel_dir, sorted(images)))
        inside = ancestors | {key}
        stack.extend((os.path.join(rel_dir, d), inside) for d in sorted(subdirs, reverse=True))
    listed.sort(key=lambda d: d[0])  # sorted(os.walk(...)): by folder path ("a" < "a b" < "a/x")
    return [(f"{d}{os.sep}{n}", size, mtime) for d, images in listed for n, size, mtime in images]  # os.path.join
