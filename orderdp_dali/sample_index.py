"""The list of samples of one split: relative file paths and labels as numpy arrays.

Class order and the image-extension rule are torchvision ``ImageFolder``'s, so a model
trained here reports the same class ids as one trained with torchvision. Scanning 1.28M
files takes minutes on network storage, so the scan is cached (see :meth:`SampleIndex.scan`).
The arrays are plain numpy, so a million samples cost two arrays rather than a million
Python objects.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from orderdp_dali.atomic import write_atomic
from orderdp_dali.errors import DatasetError

__all__ = ["SampleIndex", "IMG_EXTENSIONS", "find_classes"]

log = logging.getLogger(__name__)

# Mirrors torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


def find_classes(split_dir: Path) -> List[str]:
    """Class folder names in ImageFolder order (sorted directory names, symlinks followed)."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    if not classes:
        raise DatasetError(f"no class folders in {split_dir}")
    return classes


def _scan(split_dir: Path) -> Tuple[List[str], List[str], List[int]]:
    classes = find_classes(split_dir)
    paths: List[str] = []
    labels: List[int] = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(split_dir / cls, followlinks=True):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, split_dir)
            found.extend(
                os.path.join(rel_dir, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)
            )
        if not found:
            raise DatasetError(
                f"empty class folder: {split_dir / cls} holds no image "
                f"(extensions {', '.join(IMG_EXTENSIONS)}); remove it or add images"
            )
        paths.extend(found)
        labels.extend([label] * len(found))
    return classes, paths, labels


def _dir_signature(split_dir: Path, classes: Sequence[str]) -> List[int]:
    """Modification times of the split and class folders: cheap staleness check for the cache."""
    return [os.stat(split_dir).st_mtime_ns] + [os.stat(split_dir / c).st_mtime_ns for c in classes]


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
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode())
        h.update(b"\0")
        h.update("\n".join(self.paths.tolist()).encode())
        h.update(b"\0")
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()

    @classmethod
    def scan(
        cls,
        split_dir: PathLike,
        cache_dir: Optional[PathLike] = None,
        exclude: Optional[Iterable[PathLike]] = None,
    ) -> "SampleIndex":
        """Index ``split_dir`` (``<split>/<class>/<image>``), reusing a cache when it is current.

        Args:
            split_dir: the split folder, e.g. ``IMAGENET_ROOT/train``.
            cache_dir: where to keep the scan cache; default ``~/.cache/orderdp_dali``
                (override with ``ORDERDP_DALI_CACHE``). The cache is keyed by the split's
                absolute path and invalidated when any class folder's mtime changes.
            exclude: files to leave out (absolute paths, or paths relative to
                ``split_dir``), e.g. the bad-file list of ``orderdp-dali check-data``.

        Raises:
            DatasetError: the folder is missing, has no class folders, or a class is empty.
        """
        root = Path(split_dir).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset split not found: {root} is not a directory")
        classes = find_classes(root)
        signature = _dir_signature(root, classes)
        cache = _cache_file(root, cache_dir)
        index = _load_cache(cache, root, classes, signature)
        if index is None:
            log.info("scanning %s (cache miss: %s)", root, cache)
            classes, paths, labels = _scan(root)
            index = cls(root, tuple(classes), np.array(paths, dtype=np.str_), np.array(labels, dtype=np.int64))
            _save_cache(cache, index, signature)
        if exclude is not None:
            index = index.without(exclude)
        return index

    def without(self, files: Iterable[PathLike]) -> "SampleIndex":
        """A copy without ``files`` (absolute, or relative to :attr:`root`); logs how many were dropped."""
        drop = set()
        for f in files:
            p = Path(f)
            rel = os.path.relpath(p, self.root) if p.is_absolute() else os.path.normpath(str(p))
            drop.add(rel)
        if not drop:
            return self
        keep = np.array([os.path.normpath(p) not in drop for p in self.paths.tolist()], dtype=bool)
        removed = int((~keep).sum())
        log.warning("excluding %d of %d files of %s listed as bad", removed, len(self), self.root)
        counts = np.bincount(self.labels[keep], minlength=len(self.classes))
        if np.any(counts == 0):
            empty = [self.classes[k] for k in np.flatnonzero(counts == 0)]
            raise DatasetError(f"excluding bad files leaves class folder(s) empty: {empty} in {self.root}")
        return SampleIndex(self.root, self.classes, self.paths[keep], self.labels[keep])


def _cache_file(root: Path, cache_dir: Optional[PathLike]) -> Path:
    base = Path(cache_dir or os.environ.get("ORDERDP_DALI_CACHE", "~/.cache/orderdp_dali")).expanduser()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return base / f"index-{key}.npz"


def _load_cache(cache: Path, root: Path, classes: List[str], signature: List[int]) -> Optional[SampleIndex]:
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if (
                meta.get("version") != CACHE_VERSION
                or meta.get("root") != str(root)
                or meta.get("classes") != classes
                or meta.get("signature") != signature
            ):
                return None
            return SampleIndex(root, tuple(classes), z["paths"], z["labels"].astype(np.int64))
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file (EOFError, BadZipFile, ...): rescan, never fail
        log.warning("ignoring the unreadable index cache %s (%s: %s)", cache, type(e).__name__, e)
        return None


def _save_cache(cache: Path, index: SampleIndex, signature: List[int]) -> None:
    """Write the cache atomically; a read-only cache location only costs a rescan next time."""
    meta = {"version": CACHE_VERSION, "root": str(index.root), "classes": list(index.classes), "signature": signature}
    try:
        write_atomic(
            cache, lambda f: np.savez(f, meta=np.array(json.dumps(meta)), paths=index.paths, labels=index.labels)
        )
    except OSError as e:
        log.warning("could not write the index cache %s: %s", cache, e)
