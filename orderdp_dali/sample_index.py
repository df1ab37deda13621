"""The list of samples of one split: relative file paths, labels, sizes and mtimes as numpy arrays.

Class order and the image-extension rule are torchvision ``ImageFolder``'s, so a model
trained here reports the same class ids as one trained with torchvision. Scanning 1.28M
files takes minutes on network storage, so the scan is cached (see :meth:`SampleIndex.scan`).
The arrays are plain numpy, so a million samples cost a few arrays rather than a million
Python objects.

:func:`walk_split` is the one walk of a split folder, shared by :class:`SampleIndex` and
``orderdp-dali check-data`` (:mod:`orderdp_dali.check_data`), so both see the same files.
It keeps regular files only (symlinks to them included): a FIFO, socket or device named
like an image would block or fail the reader that opens it, so it is left out and reported.

The dataset fingerprint (what checkpoints compare on resume, see :func:`compare_fingerprints`)
covers class names, sample names, labels and each file's size and mtime in whole seconds: a
file replaced under its name is another dataset, while a moved copy that kept its mtimes
(``mv``, ``cp -a``, ``rsync -a``, ``tar``) is the same one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from orderdp_dali.atomic import write_atomic
from orderdp_dali.errors import DatasetError

__all__ = [
    "IMG_EXTENSIONS",
    "MAX_LABEL",
    "MAX_UNNAMED_CLASSES",
    "SampleIndex",
    "SplitWalk",
    "compare_fingerprints",
    "content_fingerprint",
    "dataset_fingerprint",
    "file_stamps",
    "find_classes",
    "is_utf8",
    "printable",
    "walk_split",
]

log = logging.getLogger(__name__)

# Mirrors torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 3  # 3: folder ctimes, per-file sizes and mtimes
# A folder modified less than this before its walk began may change again within the same
# mtime tick (coarse clocks, 1-2 s on some file systems) unseen: such a cache entry is not trusted.
RACY_NS = 2 * 10**9
# Labels are class indices: beyond this they are no class anyone trains (and overflow int32 consumers).
MAX_LABEL = 2**31 - 1
# Without class names (a classes file), labels 0..max are the classes: a stray huge label would
# otherwise make billions of class names and a classifier that cannot be allocated.
MAX_UNNAMED_CLASSES = 1_000_000
FINGERPRINT_TAG = "v2"  # fingerprints of names, labels, sizes and mtimes; untagged ones cover names and labels
NS = 10**9
STAT_THREADS_MIN = 50_000  # files from which file_stamps stats in threads (network storage: latency-bound)
PathLike = Union[str, "os.PathLike[str]"]


def is_utf8(name: str) -> bool:
    """Whether ``name`` (a path or file name as ``os`` returns it) is valid UTF-8 on disk.

    Python hands back undecodable bytes as lone surrogates (``surrogateescape``); such a name
    cannot be written to a UTF-8 list, log or fingerprint, so the walk reports it instead.
    """
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(name: str) -> str:
    """``name`` with undecodable bytes spelled ``\\xNN``, for messages and reports."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _encoded(parts: Iterable[str]) -> bytes:
    # surrogateescape: a name with undecodable bytes fingerprints as its bytes on disk (no crash)
    return "\n".join(parts).encode("utf-8", "surrogateescape")


def dataset_fingerprint(classes: Sequence[str], names: Sequence[str], labels: np.ndarray) -> str:
    """SHA-256 of class names, sample names and labels: the names part of a fingerprint, and the
    whole fingerprint of checkpoints written before sizes and mtimes were covered."""
    h = hashlib.sha256()
    h.update(_encoded(classes))
    h.update(b"\0")
    h.update(_encoded(names))
    h.update(b"\0")
    h.update(np.asarray(labels).astype("<i8").tobytes())
    return h.hexdigest()


def content_fingerprint(names_fingerprint: str, sizes: np.ndarray, mtimes: np.ndarray) -> str:
    """``"v2:<names fingerprint>:<SHA-256 of it, the sizes and the mtimes>"``.

    The names part stays readable in the string, so a mismatch can tell "other files or labels"
    from "the same files, other contents" (:func:`compare_fingerprints`). ``mtimes`` are whole
    seconds: tar and most copies keep seconds, not always nanoseconds.
    """
    h = hashlib.sha256()
    h.update(names_fingerprint.encode())
    h.update(np.asarray(sizes).astype("<i8").tobytes())
    h.update(b"\0")
    h.update(np.asarray(mtimes).astype("<i8").tobytes())
    return f"{FINGERPRINT_TAG}:{names_fingerprint}:{h.hexdigest()}"


_LEGACY = re.compile(r"[0-9a-f]{64}")


def compare_fingerprints(saved: Any, now: str) -> str:
    """How a checkpoint's dataset fingerprint ``saved`` relates to this run's ``now``.

    Returns:
        ``"same"``; ``"legacy"`` (``saved`` predates content fingerprints and names the same
        files and labels: accept it, with a note that replaced files cannot be told);
        ``"content"`` (the same files and labels, but some file's size or mtime differs:
        replaced or rewritten under its name, or copied without its mtimes); ``"other"``.
    """
    if saved == now:
        return "same"
    if not isinstance(saved, str) or not isinstance(now, str):
        return "other"
    names_now = now.split(":")[1] if now.startswith(f"{FINGERPRINT_TAG}:") else None
    if names_now is not None and _LEGACY.fullmatch(saved):
        return "legacy" if saved == names_now else "other"
    if names_now is not None and saved.startswith(f"{FINGERPRINT_TAG}:"):
        return "content" if saved.split(":")[1] == names_now else "other"
    return "other"


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


def _is_dir(entry: "os.DirEntry[str]") -> bool:
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
    walk.classes = sorted(e.name for e in entries if _is_dir(e))
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
            if _is_dir(entry):
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


def find_classes(split_dir: Path) -> List[str]:
    """Class folder names in ImageFolder order (sorted directory names, symlinks followed)."""
    with os.scandir(split_dir) as it:
        classes = sorted(e.name for e in it if _is_dir(e))
    if not classes:
        raise DatasetError(f"no class folders in {split_dir}")
    return classes


def _relative(root: Path, files: Iterable[PathLike]) -> Set[str]:
    """``files`` as normalised paths relative to the resolved folder ``root``.

    A relative path is taken as relative to ``root``. An absolute one is matched as spelled
    and, when that fails, through its folders: if one of them resolves to ``root`` (a path
    spelled through a symlink to the dataset), the rest of the path is relative to ``root``.
    """
    out = set()
    base = str(root)
    memo: Dict[str, str] = {}
    for f in files:
        p = os.path.normpath(os.fspath(f))
        if not os.path.isabs(p):
            out.add(p)
        elif p == base or p.startswith(base.rstrip(os.sep) + os.sep):
            out.add(os.path.relpath(p, base))
        else:
            out.add(_resolved_relative(p, base, memo))
    return out


def _resolved_relative(path: str, root: str, memo: Dict[str, str]) -> str:
    """``path`` relative to ``root`` through the first of its folders that resolves to ``root``."""
    parts = path.split(os.sep)
    for k in range(1, len(parts)):
        folder = os.sep.join(parts[:k]) or os.sep
        if folder not in memo:
            memo[folder] = os.path.realpath(folder)
        if memo[folder] == root:
            return os.path.join(*parts[k:])
    return os.path.relpath(path, root)  # not in this split: matches none of its files


def _covered(rel: str, drop: Set[str]) -> bool:
    """Whether ``rel`` or a folder above it is in ``drop``."""
    parts = rel.split(os.sep)
    return any(os.sep.join(parts[: k + 1]) in drop for k in range(len(parts)))


def _empty_class_error(root: Path, empty: List[str], why: str, remedy: str) -> DatasetError:
    names = ", ".join(repr(c) for c in empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
    return DatasetError(
        f"{why}: {names} in {root}. ImageFolder numbers classes by sorted folder name, so SampleIndex "
        "cannot skip a class (an exclusion list cannot either) without shifting the label of every later "
        f"class: {remedy}, or delete the folder from every split (train and val) and re-run "
        "'orderdp-dali check-data'"
    )


@dataclass(frozen=True)
class SampleIndex:
    """Samples of one split: ``root / paths[i]`` has class ``labels[i]``.

    Attributes:
        root: absolute path of the split folder (e.g. ``.../imagenet/train``).
        classes: class folder names; label ``k`` is ``classes[k]``.
        paths: paths relative to ``root`` (numpy unicode array).
        labels: int64 labels.
        sizes, mtimes: each file's size and mtime in whole seconds (int64, -1 where it cannot
            be stat'ed), as the scan recorded them; None for an index built without them (a
            file list's), which stats the files the first time :meth:`stamps` is asked.
    """

    root: Path
    classes: Tuple[str, ...]
    paths: np.ndarray
    labels: np.ndarray
    sizes: Optional[np.ndarray] = None
    mtimes: Optional[np.ndarray] = None
    _memo: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> Path:
        return self.root / str(self.paths[i])

    def stamps(self) -> Tuple[np.ndarray, np.ndarray]:
        """(sizes, mtimes in whole seconds) of the samples: the recorded ones, else stat'ed now (once)."""
        if self.sizes is not None and self.mtimes is not None:
            return self.sizes, self.mtimes
        if "stamps" not in self._memo:
            self._memo["stamps"] = file_stamps(self.root, self.paths.tolist())
        return self._memo["stamps"]

    @property
    def names_fingerprint(self) -> str:
        """SHA-256 of class names, relative paths and labels (the fingerprint of earlier checkpoints)."""
        if "names" not in self._memo:
            self._memo["names"] = dataset_fingerprint(self.classes, self.paths.tolist(), self.labels)
        return self._memo["names"]

    @property
    def fingerprint(self) -> str:
        """Class names, relative paths, labels, sizes and mtimes (:func:`content_fingerprint`):
        identifies the dataset in checkpoints, so a file replaced under its name is noticed."""
        if "fingerprint" not in self._memo:
            self._memo["fingerprint"] = content_fingerprint(self.names_fingerprint, *self.stamps())
        return self._memo["fingerprint"]

    def make_samples(self) -> Any:
        """The batch source's samples (:class:`~orderdp_dali.samples.FileSamples`: file paths DALI reads)."""
        from orderdp_dali.samples import FileSamples

        return FileSamples(self.root, self.paths, self.labels)

    @classmethod
    def scan(
        cls,
        split_dir: PathLike,
        cache_dir: Optional[PathLike] = None,
        exclude: Optional[Iterable[PathLike]] = None,
        rescan: bool = False,
        verify: bool = False,
    ) -> "SampleIndex":
        """Index ``split_dir`` (``<split>/<class>/<image>``), reusing a cache when it is current.

        The files are those of :func:`walk_split` (ImageFolder's classes, order and extension
        rule; symlinked folders followed, symlink loops skipped with a warning; regular files
        only: an image-named FIFO, socket or device is left out with a warning).

        The cache records every folder the walk listed with its mtime, inode and ctime, and is
        used only when all of them still match (one ``stat`` per folder, no listing; a file
        added, removed or renamed anywhere in the tree, nested and symlinked folders included,
        changes the mtime of the folder holding it, and setting that mtime back, as ``tar x``
        or ``rsync -a`` do, changes its ctime). A folder modified within 2 s before the walk
        began is not trusted (mtime ticks can be that coarse), so the next call rescans. A walk
        that could not list some folder is never cached. What the folders cannot show is a
        file rewritten in place under its name: ``verify`` re-stats every file for that. On a
        file system whose ctimes cannot be trusted, pass ``rescan`` (``data.rescan=true``):
        only a rescan is then trusted.

        A class folder without any image is an error, as in ImageFolder: dropping it would
        shift the label of every later class (ImageFolder numbers classes by sorted folder
        name), so neither ``exclude`` nor check-data's list can skip it. The error says what to
        do: add images, or delete the folder from every split. The same holds when ``exclude``
        removes every image of a class. A file or folder name that is not valid UTF-8 is an
        error naming it (rename it; check-data lists it, so its list can exclude it, unless it
        is a class folder).

        A split with a single class is logged as a warning: every label is 0, so training
        reaches loss 0 and 100% accuracy without learning; callers that rank samples by loss
        should refuse ``len(index.classes) == 1``.

        Args:
            split_dir: the split folder, e.g. ``IMAGENET_ROOT/train``.
            cache_dir: where to keep the scan cache; default ``~/.cache/orderdp_dali``
                (override with ``ORDERDP_DALI_CACHE``), keyed by the split's absolute path.
            exclude: files to leave out (absolute paths, or paths relative to ``split_dir``),
                e.g. ``load_exclusion_list(...)`` of check-data's list. A folder listed here
                (check-data lists unreadable ones) is left out with everything under it.
            rescan: walk the folder even when the cache looks current (and refresh the cache).
            verify: with a cached index, stat every file and take its current size and mtime
                (one ``stat`` a file; training does, so a resume notices a file rewritten in
                place); the cache is updated when some changed.

        Raises:
            DatasetError: the folder is missing, has no class folders, a class is empty (or
                emptied by ``exclude``), a name is not valid UTF-8, or a folder cannot be
                listed, and the last two are not excluded.
        """
        root = Path(split_dir).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset split not found: {root} is not a directory")
        drop = _relative(root, exclude) if exclude is not None else set()
        cache = _cache_file(root, cache_dir)
        cached = None if rescan else _load_cache(cache, root)
        if cached is not None:
            index, skipped = cached
            if verify:
                index = _verified(index, cache)
        else:
            log.info("scanning %s (%s)", root, "data.rescan" if rescan else f"no current index cache in {cache}")
            walk = walk_split(root)
            if not walk.classes:
                raise DatasetError(f"no class folders in {root}: expected <split>/<class>/<image> folders")
            unreadable = [(rel, detail) for rel, reason, detail in walk.skipped if reason == "unreadable_dir"]
            for rel, detail in unreadable:
                if not _covered(rel, drop):
                    raise DatasetError(
                        f"cannot list {root / rel} ({detail}): the images under it would be left out silently; "
                        "make it readable, or exclude it by passing check-data's list (which names it)"
                    )
            empty = walk.empty_classes
            if empty:
                raise _empty_class_error(
                    root, empty, f"empty class folder(s) holding no image (extensions {', '.join(IMG_EXTENSIONS)})",
                    "add images to it",
                )
            labels = np.repeat(np.arange(len(walk.classes), dtype=np.int64), [len(f) for f in walk.files])
            paths = np.array([p for found in walk.files for p in found], dtype=np.str_)
            sizes = np.array([v for found in walk.sizes for v in found], dtype=np.int64)
            mtimes = np.array([v for found in walk.mtimes for v in found], dtype=np.int64)
            index = cls(root, tuple(walk.classes), paths, labels, sizes, mtimes)
            skipped = walk.skipped
            if not unreadable:
                _save_cache(cache, index, walk)
        _refuse_bad_names(root, index.classes, skipped, drop)
        for rel, reason, _ in skipped:
            if reason == "symlink_loop":
                log.warning("skipped %s: a symlinked folder that contains itself (a symlink loop); its images "
                            "are indexed once, under the folder it points to", root / rel)
        special = [(rel, detail) for rel, reason, detail in skipped if reason == "not_a_file"]
        if special:
            rel, detail = special[0]
            log.warning("left out %d image-named entr%s of %s that %s no regular file, e.g. %s (%s); check-data "
                        "lists them", len(special), "y" if len(special) == 1 else "ies", root,
                        "is" if len(special) == 1 else "are", printable(rel), detail.split(":")[0])
        if drop:
            index = index.without(drop)
        if len(index.classes) == 1:
            log.warning(
                "%s has a single class (%r): every label is 0, so training reaches loss 0 and 100%% accuracy "
                "without learning anything, and a policy that ranks samples by loss has nothing to rank; "
                "point the split at a folder of class folders (<split>/<class>/<image>)", root, index.classes[0]
            )
        return index

    def without(self, files: Iterable[PathLike]) -> "SampleIndex":
        """A copy without ``files`` (absolute, or relative to :attr:`root`; a folder drops all under it).

        Logs how many were dropped. Raises :class:`DatasetError` when a class is left empty.
        """
        drop = _relative(self.root, files)
        if not drop:
            return self
        folders = tuple(d.rstrip(os.sep) + os.sep for d in drop if not d.lower().endswith(IMG_EXTENSIONS))
        if folders:
            keep = np.array([not (p in drop or p.startswith(folders)) for p in self.paths.tolist()], dtype=bool)
        else:
            keep = np.array([p not in drop for p in self.paths.tolist()], dtype=bool)
        removed = int((~keep).sum())
        log.warning("excluding %d of %d files of %s listed as bad", removed, len(self), self.root)
        counts = np.bincount(self.labels[keep], minlength=len(self.classes))
        emptied = (counts == 0) & (np.bincount(self.labels, minlength=len(self.classes)) > 0)  # a list may lack some
        if np.any(emptied):
            empty = [self.classes[k] for k in np.flatnonzero(emptied)]
            raise _empty_class_error(
                self.root, empty, "excluding the files listed as bad leaves class folder(s) without any image",
                "replace the bad files with good images",
            )
        sizes = None if self.sizes is None else self.sizes[keep]
        mtimes = None if self.mtimes is None else self.mtimes[keep]
        return SampleIndex(self.root, self.classes, self.paths[keep], self.labels[keep], sizes, mtimes)


def _refuse_bad_names(root: Path, classes: Sequence[str], skipped: Sequence[Tuple[str, str, str]],
                      drop: Set[str]) -> None:
    """DatasetError naming the first file or folder whose name is not valid UTF-8 and not excluded.

    Such a name cannot be written to check-data's UTF-8 lists, logs or the dataset fingerprint
    as text; renaming it is the fix. A class folder cannot be excluded (labels would shift).
    """
    bad_classes = [c for c in classes if not is_utf8(c)]
    if bad_classes:
        raise DatasetError(
            f"class folder '{printable(str(root / bad_classes[0]))}' has a name that is not valid UTF-8: rename it "
            "(e.g. convmv -f latin1 -t utf8) in every split, as class names are written to checkpoints and lists"
        )
    bad = [rel for rel, reason, _ in skipped if reason == "bad_name" and not _covered(rel, drop)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DatasetError(
            f"'{printable(str(root / bad[0]))}'{more}: the name is not valid UTF-8: rename it (e.g. convmv -f latin1 "
            "-t utf8), or exclude it by passing check-data's list (which names it) as data.exclude_file"
        )


def _cache_file(root: Path, cache_dir: Optional[PathLike]) -> Path:
    base = Path(cache_dir or os.environ.get("ORDERDP_DALI_CACHE", "~/.cache/orderdp_dali")).expanduser()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return base / f"index-{key}.npz"


def _load_cache(cache: Path, root: Path) -> Optional[Tuple[SampleIndex, List[Tuple[str, str, str]]]]:
    """The cached index and skipped entries, when every folder the walk listed is unchanged; else None."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION or meta.get("root") != str(root):
                return None
            dirs, stamps = z["dirs"].tolist(), z["stamps"].tolist()
            racy = int(meta["started_ns"]) - RACY_NS
            for rel, (mtime, ino, ctime) in zip(dirs, stamps):
                if mtime >= racy:  # modified just before the walk: maybe again within the same mtime tick
                    log.info("index cache %s not trusted: %s was modified while it was scanned", cache, root / rel)
                    return None
                try:
                    st = os.stat(os.path.join(root, rel))
                except OSError:
                    st = None
                # ctime: an mtime set back (tar x, rsync -a) leaves the mtime as cached, not the ctime
                if st is None or st.st_mtime_ns != mtime or st.st_ino != ino or st.st_ctime_ns != ctime:
                    log.info("index cache %s is out of date: %s changed", cache, root / rel)
                    return None
            index = SampleIndex(root, tuple(meta["classes"]), z["paths"], z["labels"].astype(np.int64),
                                z["sizes"].astype(np.int64), z["mtimes"].astype(np.int64))
            return index, [tuple(s) for s in meta["skipped"]]
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file (EOFError, BadZipFile, KeyError, ...): rescan, never fail
        log.warning("ignoring the unreadable index cache %s (%s: %s)", cache, type(e).__name__, e)
        return None


def _verified(index: SampleIndex, cache: Path) -> SampleIndex:
    """``index`` with every file's current size and mtime; the cache updated when some changed."""
    sizes, mtimes = file_stamps(index.root, index.paths.tolist())
    changed = np.flatnonzero((sizes != index.sizes) | (mtimes != index.mtimes))
    if not changed.size:
        return index
    shown = ", ".join(printable(str(index.paths[i])) for i in changed[:5])
    log.warning("%d of %d files of %s were rewritten since the index was cached (size or mtime), e.g. %s",
                changed.size, len(index), index.root, shown)
    _update_cache_stamps(cache, sizes, mtimes)
    return SampleIndex(index.root, index.classes, index.paths, index.labels, sizes, mtimes)


def _update_cache_stamps(cache: Path, sizes: np.ndarray, mtimes: np.ndarray) -> None:
    """Rewrite the cache's file sizes and mtimes, keeping the rest (its folder stamps are current)."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(sizes=sizes, mtimes=mtimes)
        write_atomic(cache, lambda f: np.savez(f, **arrays))
    except (OSError, ValueError, KeyError) as e:
        log.warning("could not update the index cache %s: %s", cache, e)


def _save_cache(cache: Path, index: SampleIndex, walk: SplitWalk) -> None:
    """Write the cache atomically; a read-only cache location only costs a rescan next time."""
    meta = {
        "version": CACHE_VERSION,
        "root": str(index.root),
        "classes": list(index.classes),
        "skipped": walk.skipped,
        "started_ns": walk.started_ns,
    }
    dirs = np.array(walk.dirs, dtype=np.str_)
    stamps = np.array(walk.stamps, dtype=np.int64).reshape(-1, 3)
    sizes, mtimes = index.stamps()

    def write(f) -> None:
        np.savez(f, meta=np.array(json.dumps(meta)), paths=index.paths, labels=index.labels, dirs=dirs, stamps=stamps,
                 sizes=sizes, mtimes=mtimes)

    try:
        write_atomic(cache, write)
    except OSError as e:
        log.warning("could not write the index cache %s: %s", cache, e)
