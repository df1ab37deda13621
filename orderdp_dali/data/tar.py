"""Tar shards with random access: index webdataset-style shards once, read any sample by offset.

A shard is an uncompressed tar whose samples are member pairs sharing a key (webdataset's
rule: the member name up to the first dot of its file name)::

    n01440764/n01440764_10026.jpeg   the encoded image (.jpg, .jpeg or another IMG_EXTENSIONS one)
    n01440764/n01440764_10026.cls    its class index as text ("0")

A name with several dots whose first-dot extension is no image or ``cls`` one (``img.v2.jpg``
beside ``img.v2.cls``) is keyed by the name before its last dot instead (:func:`sample_key`),
so such pairs are samples rather than members skipped without a word; an image keyed so
without its ``.cls`` is an extra field of a sample when the first-dot key has one
(``a.seg.png`` beside ``a.jpg`` and ``a.cls``), else a problem (``missing_label``).

A split is a folder of shards, ``<split>/*.tar``, e.g. ``imagenet1k-train-0000.tar``. Sequential
shard readers (DALI's ``fn.readers.webdataset`` included) cannot give a pruned epoch's subset;
here :class:`TarIndex` records every sample's (shard, offset, size) with stdlib ``tarfile``
(cached on disk, refreshed when a shard's size, mtime or inode changes), and
:class:`TarSamples` hands DALI each planned sample's bytes as views into a per-shard memory
map, so every policy runs on shards unchanged and the pipeline skips ``fn.io.file.read``.

Order and labels: shards sorted by file name, samples in tar order of their image member, so
the index is deterministic. Shards hold class indices only; class names come from
``classes.txt`` (one name a line, line k is class k) in the split folder or the folder above
it (what ``make-shards`` writes), else the classes are ``"0" .. str(max label)``.

Problems found while indexing (a truncated shard, an image without ``.cls`` or the reverse,
a label that is no non-negative integer or too large, a key twice in a shard, a member or
shard name that is not valid UTF-8) are errors naming the shard and the key, unless an
exclusion list (``orderdp-dali check-data --output``, whose entries are
``<split>/<shard>.tar/<member>``, or a whole ``<shard>.tar``) covers them. A member name that
a path normalisation would change (``../x.jpg``, ``/abs/x.jpg``, ``a//b.jpg``) is spelled in
those entries with ``/`` as ``%2F`` and ``%`` as ``%25`` (:func:`member_id`), so the entry
names that member and no other path.

The dataset fingerprint covers shard and member names, labels, each sample's size and its
shard's mtime (whole seconds): a shard rebuilt with other bytes is another dataset, while a
copy that kept its mtimes (``cp -a``, ``rsync -a``) is the same one.

Writing: :func:`orderdp_dali.make_shards.folder_to_shards` converts class-folder splits into
shards in ImageFolder order, so a folder dataset and its tar copy index identically
(``orderdp-dali make-shards``, ``orderdp-dali make-data --format tar``).
"""
from __future__ import annotations

import logging
import mmap
import os
import time
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
    Tuple,
    Union,
)

import numpy as np

from orderdp_dali.data.cache import RACY_NS, cache_path, file_stamp, read_cache, write_cache
from orderdp_dali.data.exclusions import is_covered, relative_entries
from orderdp_dali.data.file_lists import read_classes_file
from orderdp_dali.data.fingerprints import NS, content_fingerprint, dataset_fingerprint
from orderdp_dali.data.folder import MAX_UNNAMED_CLASSES
from orderdp_dali.data.images import check_bytes, first_broken, printable
from orderdp_dali.data.tar_format import (
    CLASSES_FILE,
    LABEL_EXT,
    ShardListing,
    exclusion_entry,
    index_shards,
    key_id,
    list_shards,
    member_id,
    sample_key,
)
from orderdp_dali.errors import DatasetError

__all__ = [
    "CACHE_VERSION",
    "TarIndex",
    "TarSamples",
    "read_shard_classes",
]


log = logging.getLogger(__name__)


PathLike = Union[str, "os.PathLike[str]"]


CACHE_VERSION = 2  # 2: ctimes in the stamps


@dataclass(frozen=True)
class TarIndex:
    """Samples of one tar split: sample ``i`` is ``sizes[i]`` bytes at ``offsets[i]`` of shard
    ``shards[shard_ids[i]]`` (member ``members[i]``), class ``labels[i]``.

    Used like :class:`~orderdp_dali.data.folder.SampleIndex` (``len``, ``labels``,
    ``classes``, ``root``, ``fingerprint``); :class:`~orderdp_dali.iterator.DALIPlanIterator`
    reads it through :meth:`make_samples`. ``shard_mtimes``: each shard's mtime in whole
    seconds when it was indexed (stat'ed now when empty), for the fingerprint.
    """

    root: Path
    classes: Tuple[str, ...]
    shards: Tuple[str, ...]
    shard_ids: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    members: np.ndarray
    labels: np.ndarray
    shard_mtimes: Tuple[int, ...] = ()
    _memo: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    #: the pipeline transform: the source hands DALI the encoded bytes, which it decodes
    transform: ClassVar[str] = "encoded"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def key(self, i: int) -> str:
        return sample_key(str(self.members[i]))[0]

    def shard_path(self, i: int) -> Path:
        return self.root / self.shards[int(self.shard_ids[i])]

    def describe(self, i: int) -> str:
        """Where sample ``i`` lives, for messages: ``<shard path>, key <key>``."""
        return f"{self.shard_path(i)}, key {self.key(i)}"

    @property
    def ids(self) -> List[str]:
        """Each sample as ``<shard>.tar/<image member id>`` (:func:`member_id`), relative to :attr:`root`:
        what exclusion lists name."""
        return [f"{self.shards[s]}/{member_id(m)}" for s, m in zip(self.shard_ids.tolist(), self.members.tolist())]

    @property
    def names_fingerprint(self) -> str:
        """SHA-256 of class names, ``<shard>/<member>`` names and labels (the fingerprint of earlier checkpoints)."""
        if "names" not in self._memo:
            names = [f"{self.shards[s]}/{m}" for s, m in zip(self.shard_ids.tolist(), self.members.tolist())]
            self._memo["names"] = dataset_fingerprint(self.classes, names, self.labels)
        return self._memo["names"]

    @property
    def fingerprint(self) -> str:
        """Class names, shard and member names, labels, sample sizes and shard mtimes
        (:func:`~orderdp_dali.data.fingerprints.content_fingerprint`): identifies the dataset in checkpoints."""
        if "fingerprint" not in self._memo:
            mtimes = self.shard_mtimes or tuple(os.stat(self.root / s).st_mtime_ns // NS for s in self.shards)
            per_sample = np.asarray(mtimes, dtype=np.int64)[self.shard_ids] if len(self) else np.zeros(0, np.int64)
            self._memo["fingerprint"] = content_fingerprint(self.names_fingerprint, self.sizes, per_sample)
        return self._memo["fingerprint"]

    def make_samples(self) -> "TarSamples":
        """The batch source's samples (encoded bytes read through memory maps)."""
        return TarSamples(self)

    @classmethod
    def scan(
        cls,
        split_dir: PathLike,
        cache_dir: Optional[PathLike] = None,
        exclude: Optional[Iterable[PathLike]] = None,
        classes: Optional[Sequence[str]] = None,
        workers: Optional[int] = None,
        rescan: bool = False,
    ) -> "TarIndex":
        """Index the shards ``split_dir/*.tar``, reusing a cache when it is current.

        The cache (beside SampleIndex's, ``~/.cache/orderdp_dali`` or ``ORDERDP_DALI_CACHE``)
        records the split folder's and each shard's size, mtime, inode and ctime, and is used
        only when all still match (a shard rewritten in place, or one whose mtime was set
        back, changes its ctime); one changed within 2 s before the scan began is not trusted
        (coarse mtime clocks). ``rescan`` (``data.rescan=true``) re-indexes regardless.

        Args:
            split_dir: the folder of shards.
            cache_dir: where to keep the index cache.
            exclude: entries to leave out, absolute or relative to ``split_dir``:
                ``<shard>.tar/<member>`` (a sample, by its image or ``.cls`` member) or
                ``<shard>.tar`` (all of it), e.g. ``load_exclusion_list(...)`` of check-data's list.
            classes: class names (label k is ``classes[k]``); default: ``classes.txt`` in
                ``split_dir`` or its parent, else ``"0" .. str(max label)``. Pass the training
                split's classes when indexing its validation split.
            workers: processes that index the shards (default ``min(8, cpus)``).
            rescan: index the shards even when the cache looks current (and refresh it).

        Raises:
            DatasetError: no shards; a problem in a shard that ``exclude`` does not cover
                (named by shard and key); a label outside ``classes``, or without ``classes``
                one that would make more than a million classes.
        """
        root = Path(split_dir).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"dataset split not found: {root} is not a directory")
        shards = list_shards(root)
        if not shards:
            raise DatasetError(f"no tar shards (*.tar) in {root}: expected <split>/<name>-NNNN.tar")
        cache = _cache_file(root, cache_dir)
        loaded = None if rescan else _load_cache(cache, root, shards)
        if loaded is None:
            why = "data.rescan" if rescan else f"no current index cache in {cache}"
            log.info("indexing %d tar shards in %s (%s)", len(shards), root, why)
            started_ns = time.time_ns()
            try:
                stamps = [file_stamp(root / s) for s in shards]
            except OSError as e:
                raise DatasetError(f"cannot stat a shard of {root}: {e}") from None
            found = index_shards([str(root / s) for s in shards], workers)
            index = _assemble(root, shards, found, [st[1] // NS for st in stamps])
            problems = [(s, *p) for s, f in zip(shards, found) for p in f.problems]
            _save_cache(cache, index, problems, file_stamp(root), stamps, started_ns)
        else:
            index, problems = loaded
        drop = relative_entries(root, exclude) if exclude is not None else set()
        left = [p for p in problems if not is_covered(exclusion_entry(p[0], p[1]), drop)]
        if left:
            shard, member, reason, detail = left[0]
            where = f"{root / shard}, key {printable(sample_key(member)[0])}" if member else str(root / shard)
            more = f" (and {len(left) - 1} more problems)" if len(left) > 1 else ""
            raise DatasetError(
                printable(f"{where}: {reason}: {detail}{more}. List them with 'orderdp-dali check-data {root.parent}"
                          " --output bad.txt' and pass the list as data.exclude_file, or fix the shard")
            )
        if drop:
            index = index.without(drop)
        if not len(index):
            raise DatasetError(f"no samples left in the tar shards of {root}")
        return index.with_classes(read_shard_classes(root) if classes is None else tuple(classes))

    def with_classes(self, classes: Optional[Sequence[str]]) -> "TarIndex":
        """A copy with class names ``classes`` (None: ``"0" .. str(max label)``); every label must fit."""
        top = int(self.labels.max()) if len(self) else -1
        if classes is None:
            if top >= MAX_UNNAMED_CLASSES:
                i = int(np.argmax(self.labels))
                raise DatasetError(
                    f"{self.describe(i)}: label {top} with no {CLASSES_FILE} would make {top + 1} classes "
                    f"'0'..'{top}' (at most {MAX_UNNAMED_CLASSES} without class names): fix the .{LABEL_EXT} "
                    f"member, name the classes in {CLASSES_FILE} (one a line) beside the shards, or exclude the "
                    "sample with check-data's list"
                )
            classes = tuple(str(k) for k in range(top + 1))
        if top >= len(classes):
            i = int(np.argmax(self.labels))
            raise DatasetError(
                f"{self.describe(i)}: label {top} is outside the {len(classes)} classes of {self.root} "
                f"(from {CLASSES_FILE} or the training split)"
            )
        return TarIndex(self.root, tuple(classes), self.shards, self.shard_ids, self.offsets, self.sizes,
                        self.members, self.labels, self.shard_mtimes)

    def without(self, files: Iterable[PathLike]) -> "TarIndex":
        """A copy without the samples ``files`` names (``<shard>.tar/<member>`` or ``<shard>.tar``)."""
        drop = relative_entries(self.root, files)
        if not drop:
            return self
        labels = [d for d in drop if d.endswith(f".{LABEL_EXT}")]
        if labels:  # a .cls member names its sample as well as the image member does
            ids = self.ids
            by_key = {key_id(i): i for i in ids}
            drop |= {by_key.get(key_id(d), d) for d in labels}
        else:
            ids = self.ids
        keep = np.array([not is_covered(i, drop) for i in ids], dtype=bool)
        log.warning("excluding %d of %d samples of %s listed as bad", int((~keep).sum()), len(self), self.root)
        return TarIndex(self.root, self.classes, self.shards, self.shard_ids[keep], self.offsets[keep],
                        self.sizes[keep], self.members[keep], self.labels[keep], self.shard_mtimes)


def _assemble(root: Path, shards: Sequence[str], found: Sequence[ShardListing], mtimes: Sequence[int]) -> TarIndex:
    counts = [len(f.members) for f in found]
    return TarIndex(
        root,
        (),
        tuple(shards),
        np.repeat(np.arange(len(shards), dtype=np.int32), counts),
        np.array([o for f in found for o in f.offsets], dtype=np.int64),
        np.array([s for f in found for s in f.sizes], dtype=np.int64),
        np.array([m for f in found for m in f.members], dtype=np.str_),
        np.array([label for f in found for label in f.labels], dtype=np.int64),
        tuple(int(m) for m in mtimes),
    )


def read_shard_classes(root: Path) -> Optional[Tuple[str, ...]]:
    """Class names from ``classes.txt`` in ``root`` or its parent, or None: the classes-file
    format of ``data.classes_file`` (:func:`~orderdp_dali.data.file_lists.read_classes_file`)."""
    for folder in (root, root.parent):
        path = folder / CLASSES_FILE
        if path.is_file():
            return read_classes_file(path)
    return None


def _cache_file(root: Path, cache_dir: Optional[PathLike]) -> Path:
    return cache_path(root, cache_dir, "tar-index")


def _load_cache(cache: Path, root: Path, shards: List[str]) -> Optional[Tuple[TarIndex, List[Tuple[str, ...]]]]:
    """The cached index and problems when the folder and every shard are unchanged; else None."""

    def load(meta: Dict[str, Any], z: Any) -> Optional[Tuple[TarIndex, List[Tuple[str, ...]]]]:
        if meta["shards"] != shards:
            return None
        racy = int(meta["started_ns"]) - RACY_NS
        stamps = [tuple(s) for s in z["stamps"].tolist()]
        try:
            now = [file_stamp(root)] + [file_stamp(root / s) for s in shards]
        except OSError:
            return None  # a shard vanished: re-index (which names it)
        for (name, old, new) in zip(["."] + shards, stamps, now):
            if old[1] >= racy or old != new:
                log.info("tar index cache %s is out of date: %s changed", cache, root / name)
                return None
        index = TarIndex(root, (), tuple(shards), z["shard_ids"], z["offsets"], z["sizes"], z["members"],
                         z["labels"], tuple(int(st[1]) // NS for st in stamps[1:]))
        return index, [tuple(p) for p in meta["problems"]]

    return read_cache(cache, "tar index cache", CACHE_VERSION, root, load)


def _save_cache(cache: Path, index: TarIndex, problems: List[Tuple[str, ...]], folder: Tuple[int, int, int, int],
                stamps: List[Tuple[int, int, int, int]], started_ns: int) -> None:
    meta = {"version": CACHE_VERSION, "root": str(index.root), "shards": list(index.shards),
            "problems": problems, "started_ns": started_ns}
    write_cache(cache, "tar index cache", meta, {
        "stamps": np.array([folder] + stamps, dtype=np.int64).reshape(-1, 4), "shard_ids": index.shard_ids,
        "offsets": index.offsets, "sizes": index.sizes, "members": index.members, "labels": index.labels,
    })


class TarSamples:
    """The pipeline source's samples for a :class:`TarIndex`: each sample's encoded bytes.

    Every shard is memory-mapped once, on first use; a batch is a list of uint8 views into
    the maps (no copy here: DALI's ``external_source`` copies them into its own buffers).
    Shard writers should replace a shard by renaming a new file over it (the old one stays
    mapped), never truncate it in place: reading a mapped page past a shortened file's end
    is a bus error, not an exception.
    """

    def __init__(self, index: TarIndex) -> None:
        self.index = index
        self.labels = np.ascontiguousarray(index.labels, dtype=np.int64)
        self._ends = index.offsets + index.sizes
        self._maps: List[Optional[np.ndarray]] = [None] * len(index.shards)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _open(self, k: int) -> np.ndarray:
        path = self.index.root / self.index.shards[k]
        with open(path, "rb") as f:
            self._maps[k] = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        return self._maps[k]

    def fetch(self, indices: np.ndarray) -> List[np.ndarray]:
        """The encoded images of ``indices``: views into the shards' memory maps."""
        maps = self._maps
        out = []
        for k, lo, hi in zip(self.index.shard_ids[indices].tolist(), self.index.offsets[indices].tolist(),
                             self._ends[indices].tolist()):
            m = maps[k]
            if m is None:
                m = self._open(k)
            out.append(m[lo:hi])
        return out

    def find_broken(self, indices: np.ndarray) -> Optional[Tuple[int, str, str]]:
        """The first of ``indices`` whose bytes cannot be decoded: (index, "<shard>, key <key>", reason),
        else the first too large for PIL (see :func:`~orderdp_dali.data.images.first_broken`)."""
        def check(i: int) -> Tuple[str, Optional[Tuple[str, str]]]:
            where = self.index.describe(i)
            try:
                size = os.stat(self.index.shard_path(i)).st_size
            except OSError as e:
                return where, ("unreadable", e.strerror or str(e))
            if self._ends[i] > size:  # shortened since it was indexed: reading it would be a bus error
                return where, ("truncated", f"the shard now ends at byte {size}, before the sample's end")
            return where, check_bytes(self.fetch(np.array([i]))[0], str(self.index.members[i]), deep=True)

        return first_broken(indices, check)
