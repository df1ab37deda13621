"""The list of samples of one split: relative file paths and labels as numpy arrays.

Class order and the image-extension rule are torchvision ``ImageFolder``'s, so a model
trained here reports the same class ids as one trained with torchvision. Scanning 1.28M
files takes minutes on network storage, so the scan is cached (see :meth:`SampleIndex.scan`).
The arrays are plain numpy, so a million samples cost two arrays rather than a million
Python objects.

:func:`walk_split` is the one walk of a split folder, shared by :class:`SampleIndex` and
``orderdp-dali check-data`` (:mod:`orderdp_dali.check_data`), so both see the same files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from orderdp_dali.atomic import write_atomic
from orderdp_dali.errors import DatasetError

__all__ = ["SampleIndex", "SplitWalk", "IMG_EXTENSIONS", "dataset_fingerprint", "find_classes", "walk_split"]

log = logging.getLogger(__name__)

# Mirrors torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 2
# A folder modified less than this before its walk began may change again within the same
# mtime tick (coarse clocks, 1-2 s on some file systems) unseen: such a cache entry is not trusted.
RACY_NS = 2 * 10**9
PathLike = Union[str, "os.PathLike[str]"]


def dataset_fingerprint(classes: Sequence[str], names: Sequence[str], labels: np.ndarray) -> str:
    """SHA-256 of class names, sample names and labels: what a checkpoint's dataset check compares."""
    h = hashlib.sha256()
    h.update("\n".join(classes).encode())
    h.update(b"\0")
    h.update("\n".join(names).encode())
    h.update(b"\0")
    h.update(np.asarray(labels).astype("<i8").tobytes())
    return h.hexdigest()


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
        dirs: every folder that was listed, relative to ``root`` (``"."`` is the split).
        stamps: ``(st_mtime_ns, st_ino)`` of each of ``dirs``, taken before it was listed.
            Adding, removing or renaming an entry changes its folder's mtime, so these
            change whenever the walk's answer can.
        skipped: ``(relpath, reason, detail)`` of folders not walked: ``"symlink_loop"``
            (a symlinked folder that contains itself) or ``"unreadable_dir"`` (cannot be
            listed), sorted by path.
        started_ns: wall-clock time when the walk began.
    """

    root: str
    classes: List[str] = field(default_factory=list)
    files: List[List[str]] = field(default_factory=list)
    dirs: List[str] = field(default_factory=list)
    stamps: List[Tuple[int, int]] = field(default_factory=list)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)
    started_ns: int = 0

    @property
    def empty_classes(self) -> List[str]:
        """Class folders without any image."""
        return [c for c, found in zip(self.classes, self.files) if not found]


def walk_split(split_dir: PathLike) -> SplitWalk:
    """Walk a split folder the way torchvision's ``ImageFolder`` does, but never into a loop.

    Classes are the sub-folders of ``split_dir`` (symlinks followed), sorted by name. A
    class's images are the files under it, searched recursively, whose names end with one of
    :data:`IMG_EXTENSIONS` (any case; broken symlinks included, as there), ordered like
    ``sorted(os.walk(class_dir, followlinks=True))``: by folder path, then by file name.
    Symlinked folders are followed; one that leads back to a folder it is inside (same
    ``(st_dev, st_ino)`` as an ancestor) is a loop, recorded in ``skipped`` and not entered,
    where ``os.walk`` would list the same files again and again until paths grow too long.
    The same folder reached twice *without* a loop (two symlinks to it) is walked twice, as
    by ``ImageFolder``. A folder that cannot be listed is recorded in ``skipped``.

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
    walk.stamps.append((st.st_mtime_ns, st.st_ino))
    walk.classes = sorted(e.name for e in entries if _is_dir(e))
    for cls in walk.classes:
        walk.files.append(_walk_class(walk, cls, (st.st_dev, st.st_ino)))
    walk.skipped.sort()
    return walk


def _walk_class(walk: SplitWalk, cls: str, split_key: Tuple[int, int]) -> List[str]:
    """The image files under one class folder, relative to the split, in ImageFolder order."""
    listed: List[Tuple[str, List[str]]] = []  # (folder, its image file names)
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
        walk.stamps.append((st.st_mtime_ns, st.st_ino))
        names, subdirs = [], []
        for entry in entries:
            if _is_dir(entry):
                subdirs.append(entry.name)
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                names.append(entry.name)
        listed.append((rel_dir, sorted(names)))
        inside = ancestors | {key}
        stack.extend((os.path.join(rel_dir, d), inside) for d in sorted(subdirs, reverse=True))
    listed.sort(key=lambda d: d[0])  # sorted(os.walk(...)): by folder path ("a" < "a b" < "a/x")
    return [os.path.join(d, n) for d, names in listed for n in names]


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
    """

    root: Path
    classes: Tuple[str, ...]
    paths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> Path:
        return self.root / str(self.paths[i])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of class names, relative paths and labels: identifies the dataset in checkpoints."""
        return dataset_fingerprint(self.classes, self.paths.tolist(), self.labels)

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
    ) -> "SampleIndex":
        """Index ``split_dir`` (``<split>/<class>/<image>``), reusing a cache when it is current.

        The files are those of :func:`walk_split` (ImageFolder's classes, order and extension
        rule; symlinked folders followed, symlink loops skipped with a warning).

        The cache cannot go stale: it records every folder the walk listed with its mtime and
        inode, and is used only when all of them still match (one ``stat`` per folder, no
        listing; a change anywhere in the tree, nested folders and symlinked ones included,
        changes the mtime of the folder holding it). A folder modified within 2 s before the
        walk began is not trusted (mtime ticks can be that coarse), so the next call rescans.
        A walk that could not list some folder is never cached.

        A class folder without any image is an error, as in ImageFolder: dropping it would
        shift the label of every later class (ImageFolder numbers classes by sorted folder
        name), so neither ``exclude`` nor check-data's list can skip it. The error says what to
        do: add images, or delete the folder from every split. The same holds when ``exclude``
        removes every image of a class.

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

        Raises:
            DatasetError: the folder is missing, has no class folders, a class is empty (or
                emptied by ``exclude``), or a folder cannot be listed and is not excluded.
        """
        root = Path(split_dir).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset split not found: {root} is not a directory")
        drop = _relative(root, exclude) if exclude is not None else set()
        cache = _cache_file(root, cache_dir)
        cached = _load_cache(cache, root)
        if cached is not None:
            index, skipped = cached
        else:
            log.info("scanning %s (no current index cache in %s)", root, cache)
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
            index = cls(root, tuple(walk.classes), paths, labels)
            skipped = walk.skipped
            if not unreadable:
                _save_cache(cache, index, walk)
        for rel, reason, _ in skipped:
            if reason == "symlink_loop":
                log.warning("skipped %s: a symlinked folder that contains itself (a symlink loop); its images "
                            "are indexed once, under the folder it points to", root / rel)
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
        return SampleIndex(self.root, self.classes, self.paths[keep], self.labels[keep])


def _cache_file(root: Path, cache_dir: Optional[PathLike]) -> Path:
    base = Path(cache_dir or os.environ.get("ORDERDP_DALI_CACHE", "~/.cache/orderdp_dali")).expanduser()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return base / f"index-{key}.npz"


def _load_cache(cache: Path, root: Path) -> Optional[Tuple[SampleIndex, List[Tuple[str, str, str]]]]:
    """The cached index and skipped folders, when every folder the walk listed is unchanged; else None."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION or meta.get("root") != str(root):
                return None
            dirs, stamps = z["dirs"].tolist(), z["stamps"].tolist()
            racy = int(meta["started_ns"]) - RACY_NS
            for rel, (mtime, ino) in zip(dirs, stamps):
                if mtime >= racy:  # modified just before the walk: maybe again within the same mtime tick
                    log.info("index cache %s not trusted: %s was modified while it was scanned", cache, root / rel)
                    return None
                try:
                    st = os.stat(os.path.join(root, rel))
                except OSError:
                    st = None
                if st is None or st.st_mtime_ns != mtime or st.st_ino != ino:
                    log.info("index cache %s is out of date: %s changed", cache, root / rel)
                    return None
            index = SampleIndex(root, tuple(meta["classes"]), z["paths"], z["labels"].astype(np.int64))
            return index, [tuple(s) for s in meta["skipped"]]
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file (EOFError, BadZipFile, KeyError, ...): rescan, never fail
        log.warning("ignoring the unreadable index cache %s (%s: %s)", cache, type(e).__name__, e)
        return None


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
    stamps = np.array(walk.stamps, dtype=np.int64).reshape(-1, 2)

    def write(f) -> None:
        np.savez(f, meta=np.array(json.dumps(meta)), paths=index.paths, labels=index.labels, dirs=dirs, stamps=stamps)

    try:
        write_atomic(cache, write)
    except OSError as e:
        log.warning("could not write the index cache %s: %s", cache, e)
