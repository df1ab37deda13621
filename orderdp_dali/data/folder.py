"""Class-folder splits: the samples of one split as relative paths, labels, sizes and mtimes (numpy arrays).

Class order and the image-extension rule are torchvision ``ImageFolder``'s, so a model
trained here reports the same class ids as one trained with torchvision. Scanning 1.28M
files takes minutes on network storage, so the scan is cached (see :meth:`SampleIndex.scan`,
:mod:`orderdp_dali.data.cache`). The arrays are plain numpy, so a million samples cost a
few arrays rather than a million Python objects. The walk is :mod:`orderdp_dali.data.walk`'s;
file lists and Kaggle's flat validation folder index into the same :class:`SampleIndex`
(:mod:`orderdp_dali.data.file_lists`). :class:`FileSamples` is what the batch source hands
DALI: each planned sample's absolute path, which ``fn.io.file.read`` opens in DALI's threads.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

import numpy as np

from orderdp_dali.data.cache import RACY_NS, cache_path, read_cache, update_cache, write_cache
from orderdp_dali.data.exclusions import is_covered, relative_entries
from orderdp_dali.data.fingerprints import content_fingerprint, dataset_fingerprint
from orderdp_dali.data.images import IMG_EXTENSIONS, check_file, first_broken, is_utf8, printable
from orderdp_dali.data.walk import SplitWalk, file_stamps, walk_split
from orderdp_dali.errors import DatasetError

__all__ = [
    "CACHE_VERSION",
    "FileSamples",
    "MAX_LABEL",
    "MAX_UNNAMED_CLASSES",
    "SampleIndex",
]


log = logging.getLogger(__name__)


PathLike = Union[str, "os.PathLike[str]"]


CACHE_VERSION = 3  # 3: folder ctimes, per-file sizes and mtimes


# Labels are class indices: beyond this they are no class anyone trains (and overflow int32 consumers).
MAX_LABEL = 2**31 - 1


# Without class names (a classes file), labels 0..max are the classes: a stray huge label would
# otherwise make billions of class names and a classifier that cannot be allocated.
MAX_UNNAMED_CLASSES = 1_000_000


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
    #: the pipeline transform: DALI reads the files (``fn.io.file.read``), then decodes them
    transform: ClassVar[str] = "files"

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

    def make_samples(self) -> "FileSamples":
        """The batch source's samples (:class:`FileSamples`: file paths DALI reads)."""
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
        drop = relative_entries(root, exclude) if exclude is not None else set()
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
                if not is_covered(rel, drop):
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
        drop = relative_entries(self.root, files)
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
    bad = [rel for rel, reason, _ in skipped if reason == "bad_name" and not is_covered(rel, drop)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DatasetError(
            f"'{printable(str(root / bad[0]))}'{more}: the name is not valid UTF-8: rename it (e.g. convmv -f latin1 "
            "-t utf8), or exclude it by passing check-data's list (which names it) as data.exclude_file"
        )


def _cache_file(root: Path, cache_dir: Optional[PathLike]) -> Path:
    return cache_path(root, cache_dir, "index")


def _load_cache(cache: Path, root: Path) -> Optional[Tuple[SampleIndex, List[Tuple[str, str, str]]]]:
    """The cached index and skipped entries, when every folder the walk listed is unchanged; else None."""

    def load(meta: Dict[str, Any], z: Any) -> Optional[Tuple[SampleIndex, List[Tuple[str, str, str]]]]:
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

    return read_cache(cache, "index cache", CACHE_VERSION, root, load)


def _verified(index: SampleIndex, cache: Path) -> SampleIndex:
    """``index`` with every file's current size and mtime; the cache updated when some changed."""
    sizes, mtimes = file_stamps(index.root, index.paths.tolist())
    changed = np.flatnonzero((sizes != index.sizes) | (mtimes != index.mtimes))
    if not changed.size:
        return index
    shown = ", ".join(printable(str(index.paths[i])) for i in changed[:5])
    log.warning("%d of %d files of %s were rewritten since the index was cached (size or mtime), e.g. %s",
                changed.size, len(index), index.root, shown)
    update_cache(cache, "index cache", {"sizes": sizes, "mtimes": mtimes})
    return SampleIndex(index.root, index.classes, index.paths, index.labels, sizes, mtimes)


def _save_cache(cache: Path, index: SampleIndex, walk: SplitWalk) -> None:
    meta = {
        "version": CACHE_VERSION,
        "root": str(index.root),
        "classes": list(index.classes),
        "skipped": walk.skipped,
        "started_ns": walk.started_ns,
    }
    sizes, mtimes = index.stamps()
    write_cache(cache, "index cache", meta, {
        "paths": index.paths, "labels": index.labels, "dirs": np.array(walk.dirs, dtype=np.str_),
        "stamps": np.array(walk.stamps, dtype=np.int64).reshape(-1, 3), "sizes": sizes, "mtimes": mtimes,
    })


class FileSamples:
    """Samples that are files: ``root / paths[i]`` with class ``labels[i]``."""

    def __init__(self, root: Path, paths: Sequence[str], labels: np.ndarray) -> None:
        self.root = Path(root)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        packed = _pack_ascii(self.root, paths)
        if packed is not None:
            self._buffer, self._offsets = packed
            return
        encoded = [os.fsencode(os.path.join(self.root, p)) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        return os.fsdecode(self._buffer[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def fetch(self, indices: np.ndarray) -> List[np.ndarray]:
        """The encoded paths of ``indices``: views into one buffer."""
        buf = self._buffer
        starts = self._offsets[indices].tolist()
        ends = self._offsets[np.asarray(indices) + 1].tolist()
        return [buf[a:b] for a, b in zip(starts, ends)]

    def find_broken(self, indices: np.ndarray) -> Optional[Tuple[int, str, str]]:
        """The first of ``indices`` whose file cannot be read or decoded: (index, path, reason);
        else the first too large for PIL's decompression-bomb check (a likely cause of a decoder's
        allocation failure); else None."""
        return first_broken(indices, lambda i: (self.path(i), check_file(self.path(i), deep=True)))


def _pack_ascii(root: Path, paths: Sequence[str]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(buffer, offsets) of ``root / paths[i]`` built with array operations, or None to build them per path.

    Only for a numpy unicode array of ASCII relative paths (the sample index's, almost always):
    1.28M paths take a fraction of a second this way instead of seconds of per-path encoding.
    The bytes equal ``os.fsencode(os.path.join(root, p))``.
    """
    if not (isinstance(paths, np.ndarray) and paths.dtype.kind == "U" and paths.ndim == 1 and paths.size):
        return None
    if paths.dtype.itemsize == 0:
        return None
    codes = np.ascontiguousarray(paths).view(np.uint32).reshape(paths.size, -1)  # UCS-4, NUL-padded
    if codes.max() >= 128 or np.any(codes[:, 0] == ord(os.sep)):
        return None
    prefix = np.frombuffer(os.fsencode(os.path.join(root, "")), dtype=np.uint8)
    if not prefix.all():
        return None
    lengths = prefix.size + np.char.str_len(paths)
    offsets = np.zeros(paths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
    # Rows of (prefix, path, NUL padding), a block at a time: the block is reused, so the only
    # large allocation is the buffer itself. NUL never occurs inside a path.
    rows = min(paths.size, 1 << 15)
    table = np.empty((rows, prefix.size + codes.shape[1]), dtype=np.uint8)
    table[:, : prefix.size] = prefix
    for lo in range(0, paths.size, rows):
        block = table[: min(rows, paths.size - lo)]
        block[:, prefix.size :] = codes[lo : lo + rows]
        flat = block.reshape(-1)
        buffer[offsets[lo] : offsets[lo + block.shape[0]]] = flat[flat != 0]
    return buffer, offsets
