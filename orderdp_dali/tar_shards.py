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
it (what :func:`folder_to_shards` writes), else the classes are ``"0" .. str(max label)``.

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

Writing: :func:`folder_to_shards` converts class-folder splits into shards in ImageFolder
order, so a folder dataset and its tar copy index identically (``orderdp-dali make-shards``,
``orderdp-dali make-data --format tar``).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import mmap
import os
import re
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from orderdp_dali.atomic import write_atomic, write_text_atomic
from orderdp_dali.errors import DatasetError
from orderdp_dali.processes import process_pool
from orderdp_dali.sample_index import (
    IMG_EXTENSIONS,
    MAX_LABEL,
    MAX_UNNAMED_CLASSES,
    NS,
    RACY_NS,
    SampleIndex,
    _covered,
    _is_dir,
    _relative,
    content_fingerprint,
    dataset_fingerprint,
    is_utf8,
    printable,
)

__all__ = [
    "CLASSES_FILE",
    "TarIndex",
    "TarSamples",
    "check_tar_dataset",
    "folder_to_shards",
    "is_tar_split",
    "list_shards",
    "main",
    "member_id",
    "sample_key",
    "split_member_name",
    "write_shards",
]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]

CLASSES_FILE = "classes.txt"
LABEL_EXT = "cls"
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMG_EXTENSIONS)
CACHE_VERSION = 2  # 2: ctimes in the stamps
BLOCK = tarfile.BLOCKSIZE
# Shard lists at least this long are indexed by a pool of processes (tarfile parsing holds the GIL).
POOL_MIN_SHARDS = 16
_DIGITS = re.compile(rb"\s*\d+\s*")

# A problem in a shard: (member name, or "" for the whole shard; reason; detail). Reasons are
# keys of check_data.BAD_REASONS, so check-data's lists of them load back.
Problem = Tuple[str, str, str]


def split_member_name(name: str) -> Tuple[str, str]:
    """``(key, extension)`` of a tar member: webdataset's rule, the name up to the first dot of its
    file name is the key, the rest (lower-cased) the extension; ``("", "")`` for names without one."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:  # no extension, or a hidden file such as macOS's "._x.jpg"
        return "", ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _known(ext: str) -> bool:
    return ext in IMAGE_EXTS or ext == LABEL_EXT


def sample_key(name: str) -> Tuple[str, str]:
    """``(key, extension)`` by which a member joins its sample.

    :func:`split_member_name` (webdataset's first-dot rule) when that gives an image extension
    or ``cls``; else, for a file name with several dots whose last extension is one of them,
    the full name before the last dot and that extension (``img.v2.jpg`` -> ``("img.v2",
    "jpg")``); else the first-dot result (another webdataset field, not ours).
    """
    key, ext = split_member_name(name)
    if _known(ext) or "." not in ext:
        return key, ext
    stem, _, last = name.rpartition(".")
    return (stem, last.lower()) if _known(last.lower()) else (key, ext)


def member_id(name: str) -> str:
    """A member's name as a path component of check-data's entries (``<shard>.tar/<member id>``).

    The name itself, unless a path normalisation would change it (absolute, or an empty,
    ``.`` or ``..`` component, as in ``../evil.jpg``): such an entry would then name another
    path, or leave the shard. Those names are spelled with ``%`` as ``%25`` and ``/`` as
    ``%2F``, which no normalisation touches.
    """
    if name and all(part not in ("", ".", "..") for part in name.split("/")):
        return name
    return name.replace("%", "%25").replace("/", "%2F")


def list_shards(split_dir: PathLike) -> List[str]:
    """The ``*.tar`` files directly in ``split_dir`` (symlinks followed), sorted by name."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.name.endswith(".tar") and _is_file(e))


def is_tar_split(folder: PathLike) -> bool:
    """Whether ``folder`` is a split of tar shards: ``*.tar`` files and no sub-folder (a stray
    archive beside class folders does not make a folder split a tar split)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return False
    return any(e.name.endswith(".tar") and _is_file(e) for e in entries) and not any(_is_dir(e) for e in entries)


def _is_file(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


# ----------------------------------------------------------------------------- indexing one shard


@dataclass
class _Shard:
    """What indexing one shard found: its samples (image member, offset, size, label) and problems."""

    members: List[str] = field(default_factory=list)
    offsets: List[int] = field(default_factory=list)
    sizes: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)


def _list_members(path: str, file_size: int) -> Tuple[List[Tuple[str, int, int]], List[Problem]]:
    """Regular members ``(name, data offset, size)`` in tar order, cut before a truncation (a problem)."""
    members: List[Tuple[str, int, int]] = []
    problems: List[Problem] = []
    end = 0  # where the last member's (padded) data ends: the end-of-archive block must follow
    try:
        tf = tarfile.open(path, "r:")
    except OSError as e:
        return [], [("", "unreadable", e.strerror or str(e))]
    except tarfile.ReadError as e:
        return [], [("", "not_a_tar", f"{e} (an uncompressed tar is needed: memory-mapped reads)")]
    with tf:
        while True:
            try:
                m = tf.next()
            except tarfile.ReadError as e:  # the data of the last member runs past the end, or a torn header
                problems.append(_cut_after(members, f"tarfile: {e}"))
                break
            if m is None:
                break
            end = m.offset_data + -(-m.size // BLOCK) * BLOCK
            if m.offset_data + m.size > file_size:
                detail = f"its {m.size} bytes run past the end of the {file_size}-byte file"
                problems.append((m.name, "truncated", detail))
                break
            if m.isreg():
                members.append((m.name, m.offset_data, m.size))
    if not problems:
        with open(path, "rb") as f:
            f.seek(end)
            tail = f.read(BLOCK)
        if len(tail) < BLOCK or tail.count(0) != BLOCK:
            problems.append(_cut_after(members, f"no end-of-archive block after byte {end} of {file_size}"))
    return members, problems


def _cut_after(members: Sequence[Tuple[str, int, int]], detail: str) -> Problem:
    after = f"the shard ends inside the member after {members[-1][0]}" if members else "the shard ends early"
    return ((members[-1][0] if members else ""), "truncated", f"{after}: {detail}")


def _index_shard(path: str) -> _Shard:
    """Index one shard: pair images with their ``.cls`` labels; everything odd becomes a problem."""
    out = _Shard()
    if not is_utf8(os.path.basename(path)):
        detail = f"the shard name '{printable(os.path.basename(path))}' is not valid UTF-8; rename it"
        out.problems.append(("", "bad_name", detail))
        return out
    try:
        file_size = os.stat(path).st_size
    except OSError as e:
        out.problems.append(("", "unreadable", e.strerror or str(e)))
        return out
    members, out.problems = _list_members(path, file_size)
    cut = {sample_key(m)[0] for m, reason, _ in out.problems if reason == "truncated" and m}
    images: Dict[str, Tuple[str, int, int]] = {}
    labels: Dict[str, Tuple[str, int, int]] = {}
    for name, offset, size in members:
        key, ext = sample_key(name)
        table = images if ext in IMAGE_EXTS else labels if ext == LABEL_EXT else None
        if table is None:
            continue  # other webdataset fields (.json, .txt, ...) are not ours
        if not is_utf8(name):
            out.problems.append((name, "bad_name", f"the member name '{printable(name)}' is not valid UTF-8; "
                                                   "rebuild the shard with UTF-8 names"))
            continue
        if key in table:
            out.problems.append((name, "duplicate_key", f"key {key!r} already has {table[key][0]} in this shard"))
            continue
        table[key] = (name, offset, size)
    if not images and not labels:
        return out
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if file_size else b""
        try:
            for key, (name, offset, size) in images.items():
                if key not in labels:
                    if key not in cut and not _extra_field(name, images, labels):
                        # else its label was cut off (the truncation is the problem), or it is another field
                        out.problems.append((name, "missing_label", f"no {key}.{LABEL_EXT} member for key {key!r}"))
                    continue
                lname, loffset, lsize = labels[key]
                label = _parse_label(key, data[loffset : loffset + lsize])
                if isinstance(label, str):
                    out.problems.append((lname, "bad_label", label))
                    continue
                out.members.append(name)
                out.offsets.append(offset)
                out.sizes.append(size)
                out.labels.append(label)
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
    for key, (lname, _, _) in labels.items():
        if key not in images and key not in cut:
            out.problems.append((lname, "missing_image", f"no image member for key {key!r}"))
    return out


def _extra_field(name: str, images: Dict[str, Any], labels: Dict[str, Any]) -> bool:
    """Whether an image keyed by its last dot (``a.seg.png``) is an extra field of the sample its
    first-dot key (``a``) forms with an image and a label."""
    first, _ = split_member_name(name)
    return sample_key(name)[0] != first and first in images and first in labels


def _parse_label(key: str, text: Any) -> Union[int, str]:
    """The class index in a ``.cls`` member's bytes, or why it is none (a problem's detail)."""
    if len(text) > 32 or not _DIGITS.fullmatch(text):
        return f"key {key!r}: {bytes(text[:32])!r} is no non-negative class index"
    value = int(text)
    if value > MAX_LABEL:
        return f"key {key!r}: label {value} is too large for a class index (at most {MAX_LABEL})"
    return value


def _index_shards(paths: Sequence[str], workers: Optional[int] = None) -> List[_Shard]:
    """:func:`_index_shard` of each path, in a pool of spawned processes when there are many."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < POOL_MIN_SHARDS:
        return [_index_shard(p) for p in paths]
    # spawn, not fork: the caller may already run DALI or torch threads
    with process_pool(workers) as pool:
        return list(pool.map(_index_shard, paths, chunksize=max(1, len(paths) // (4 * workers))))


# ----------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class TarIndex:
    """Samples of one tar split: sample ``i`` is ``sizes[i]`` bytes at ``offsets[i]`` of shard
    ``shards[shard_ids[i]]`` (member ``members[i]``), class ``labels[i]``.

    Used like :class:`~orderdp_dali.sample_index.SampleIndex` (``len``, ``labels``,
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
        (:func:`~orderdp_dali.sample_index.content_fingerprint`): identifies the dataset in checkpoints."""
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
                stamps = [_stamp(root / s) for s in shards]
            except OSError as e:
                raise DatasetError(f"cannot stat a shard of {root}: {e}") from None
            found = _index_shards([str(root / s) for s in shards], workers)
            index = _assemble(root, shards, found, [st[1] // NS for st in stamps])
            problems = [(s, *p) for s, f in zip(shards, found) for p in f.problems]
            _save_cache(cache, index, problems, _stamp(root), stamps, started_ns)
        else:
            index, problems = loaded
        drop = _relative(root, exclude) if exclude is not None else set()
        left = [p for p in problems if not _covered(_entry(p[0], p[1]), drop)]
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
        return index.with_classes(_read_classes(root) if classes is None else tuple(classes))

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
        drop = _relative(self.root, files)
        if not drop:
            return self
        labels = [d for d in drop if d.endswith(f".{LABEL_EXT}")]
        if labels:  # a .cls member names its sample as well as the image member does
            ids = self.ids
            by_key = {_key_id(i): i for i in ids}
            drop |= {by_key.get(_key_id(d), d) for d in labels}
        else:
            ids = self.ids
        keep = np.array([not _covered(i, drop) for i in ids], dtype=bool)
        log.warning("excluding %d of %d samples of %s listed as bad", int((~keep).sum()), len(self), self.root)
        return TarIndex(self.root, self.classes, self.shards, self.shard_ids[keep], self.offsets[keep],
                        self.sizes[keep], self.members[keep], self.labels[keep], self.shard_mtimes)


def _key_id(sample_id: str) -> str:
    """``<shard>/<member id>`` -> ``<shard>/<key>``."""
    shard, _, member = sample_id.partition("/")
    return f"{shard}/{sample_key(member)[0]}"


def _entry(shard: str, member: str) -> str:
    """A problem's entry in check-data's lists, relative to the split: ``<shard>/<member id>`` or ``<shard>``."""
    return f"{shard}/{member_id(member)}" if member else shard


def _assemble(root: Path, shards: Sequence[str], found: Sequence[_Shard], mtimes: Sequence[int]) -> TarIndex:
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


def _read_classes(root: Path) -> Optional[Tuple[str, ...]]:
    """Class names from ``classes.txt`` in ``root`` or its parent, or None: the classes-file
    format of ``data.classes_file`` (:func:`~orderdp_dali.file_lists.read_classes_file`)."""
    from orderdp_dali.file_lists import read_classes_file

    for folder in (root, root.parent):
        path = folder / CLASSES_FILE
        if path.is_file():
            return read_classes_file(path)
    return None


def _stamp(path: Path) -> Tuple[int, int, int, int]:
    """(size, mtime, inode, ctime): what tells the cache a shard or the folder changed. The ctime
    changes with any write and when an mtime is set back (tar x, rsync -a), and cannot be set."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _cache_file(root: Path, cache_dir: Optional[PathLike]) -> Path:
    base = Path(cache_dir or os.environ.get("ORDERDP_DALI_CACHE", "~/.cache/orderdp_dali")).expanduser()
    return base / f"tar-index-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.npz"


def _load_cache(cache: Path, root: Path, shards: List[str]) -> Optional[Tuple[TarIndex, List[Tuple[str, ...]]]]:
    """The cached index and problems when the folder and every shard are unchanged; else None."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION or meta.get("root") != str(root) or meta["shards"] != shards:
                return None
            racy = int(meta["started_ns"]) - RACY_NS
            stamps = [tuple(s) for s in z["stamps"].tolist()]
            try:
                now = [_stamp(root)] + [_stamp(root / s) for s in shards]
            except OSError:
                return None  # a shard vanished: re-index (which names it)
            for (name, old, new) in zip(["."] + shards, stamps, now):
                if old[1] >= racy or old != new:
                    log.info("tar index cache %s is out of date: %s changed", cache, root / name)
                    return None
            index = TarIndex(root, (), tuple(shards), z["shard_ids"], z["offsets"], z["sizes"], z["members"],
                             z["labels"], tuple(int(st[1]) // NS for st in stamps[1:]))
            return index, [tuple(p) for p in meta["problems"]]
    except FileNotFoundError:
        return None
    except Exception as e:  # a torn or foreign file: re-index, never fail
        log.warning("ignoring the unreadable tar index cache %s (%s: %s)", cache, type(e).__name__, e)
        return None


def _save_cache(cache: Path, index: TarIndex, problems: List[Tuple[str, ...]], folder: Tuple[int, int, int, int],
                stamps: List[Tuple[int, int, int, int]], started_ns: int) -> None:
    meta = {"version": CACHE_VERSION, "root": str(index.root), "shards": list(index.shards),
            "problems": problems, "started_ns": started_ns}
    stamp_rows = np.array([folder] + stamps, dtype=np.int64).reshape(-1, 4)

    def write(f: Any) -> None:
        np.savez(f, meta=np.array(json.dumps(meta)), stamps=stamp_rows, shard_ids=index.shard_ids,
                 offsets=index.offsets, sizes=index.sizes, members=index.members, labels=index.labels)

    try:
        write_atomic(cache, write)
    except OSError as e:
        log.warning("could not write the tar index cache %s: %s", cache, e)


# ----------------------------------------------------------------------------- the batch source


class TarSamples:
    """The pipeline source's samples for a :class:`TarIndex`: each sample's encoded bytes.

    Every shard is memory-mapped once, on first use; a batch is a list of uint8 views into
    the maps (no copy here: DALI's ``external_source`` copies them into its own buffers).
    Shard writers should replace a shard by renaming a new file over it (the old one stays
    mapped), never truncate it in place: reading a mapped page past a shortened file's end
    is a bus error, not an exception.
    """

    encoded = True  # the source yields encoded images, not file paths: no fn.io.file.read

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
        else the first too large for PIL (see :func:`~orderdp_dali.samples.first_broken`)."""
        from orderdp_dali.check_data import check_bytes
        from orderdp_dali.samples import first_broken

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


# ----------------------------------------------------------------------------- writing


def _shard_key(rel: str) -> str:
    """A relative image path as a webdataset key: without its extension, dots of the file name as ``_``."""
    folder, _, base = rel.replace(os.sep, "/").rpartition("/")
    stem = os.path.splitext(base)[0].replace(".", "_")
    return f"{folder}/{stem}" if folder else stem


def write_shards(
    samples: Sequence[Tuple[str, str, Union[bytes, PathLike], int]],
    out_dir: PathLike,
    prefix: str,
    split: str,
    shard_size: int = 1000,
) -> List[Path]:
    """Write ``samples`` ``(key, image extension, bytes or file path, label)`` in order as shards
    ``out_dir/<prefix>-<split>-NNNN.tar`` of ``shard_size`` samples, each written atomically;
    shards of that name pattern left from an earlier, longer run are removed."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"--shard-size must be an integer >= 1, got {shard_size!r}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"Invalid shard prefix {prefix!r}: need a file name part without slashes")
    keys = [s[0] for s in samples]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DatasetError(f"two samples would share the shard key {dup!r} (file names differing only in dots?)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, lo in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[lo : lo + shard_size]
        path = out / f"{prefix}-{split}-{n:04d}.tar"
        write_atomic(path, lambda f, chunk=chunk: _write_tar(f, chunk))
        written.append(path)
    pattern = re.compile(rf"{re.escape(prefix)}-{re.escape(split)}-\d{{4,}}\.tar")
    for name in os.listdir(out):
        if pattern.fullmatch(name) and out / name not in written:
            (out / name).unlink()
    return written


def _write_tar(f: Any, chunk: Sequence[Tuple[str, str, Union[bytes, PathLike], int]]) -> None:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for key, ext, image, label in chunk:
            if not isinstance(image, bytes):
                with open(image, "rb") as src:
                    image = src.read()
            label_bytes = str(int(label)).encode()
            for name, data in ((f"{key}.{ext.lstrip('.').lower()}", image), (f"{key}.{LABEL_EXT}", label_bytes)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # same input, same bytes
                tf.addfile(info, io.BytesIO(data))


def folder_to_shards(
    src_root: PathLike,
    out_root: PathLike,
    shard_size: int = 1000,
    prefix: Optional[str] = None,
    splits: Optional[Sequence[str]] = None,
    cache_dir: Optional[PathLike] = None,
    rescan: bool = False,
) -> Dict[str, List[Path]]:
    """Convert class-folder splits ``src_root/<split>/<class>/<image>`` into tar shards.

    Writes ``out_root/<split>/<prefix>-<split>-NNNN.tar`` (samples in ImageFolder order:
    classes sorted, files as :class:`SampleIndex` lists them, so the folder and its tar copy
    index identically) and ``out_root/classes.txt`` (the class folder names).

    Args:
        splits: split folders to convert (default: those of ``train``, ``val`` present).
        prefix: shard name prefix (default: the name of ``src_root``).
        cache_dir: the folder splits' index cache (see :meth:`SampleIndex.scan`).
        rescan: walk the splits even when their index cache looks current.

    Returns:
        split -> the shards written.
    """
    src = Path(src_root).expanduser().resolve()
    names = list(splits) if splits else [s for s in ("train", "val") if (src / s).is_dir()]
    if not names:
        raise DatasetError(f"no train/ or val/ split folder in {src}; name the split folders to convert")
    prefix = prefix or src.name
    out = Path(out_root).expanduser().absolute()
    written: Dict[str, List[Path]] = {}
    classes: Optional[Tuple[str, ...]] = None
    for split in names:
        index = SampleIndex.scan(src / split, cache_dir=cache_dir, rescan=rescan)
        if classes is not None and index.classes != classes:
            raise DatasetError(f"class folders differ between the splits of {src}: labels would not match")
        classes = index.classes
        samples = [
            (_shard_key(rel), os.path.splitext(rel)[1].lstrip(".").lower(), str(index.root / rel), int(label))
            for rel, label in zip(index.paths.tolist(), index.labels.tolist())
        ]
        written[split] = write_shards(samples, out / split, prefix, split, shard_size)
        log.info("wrote %d samples of %s as %d shards", len(samples), index.root, len(written[split]))
    write_text_atomic(out / CLASSES_FILE, "\n".join(classes or ()) + "\n")
    return written


# ----------------------------------------------------------------------------- check-data


def _check_shard(path: str, deep: bool) -> Tuple[int, List[Tuple[str, int]], List[Problem]]:
    """(samples, (member, label) of each, problems) of one shard: indexing problems, then every image checked."""
    from orderdp_dali.check_data import check_bytes

    found = _index_shard(path)
    problems = list(found.problems)
    if found.members:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for name, offset, size in zip(found.members, found.offsets, found.sizes):
                view = memoryview(data)[offset : offset + size]
                try:
                    result = check_bytes(view, name, deep)
                finally:
                    view.release()
                if result is not None:
                    problems.append((name, *result))
    return len(found.members), list(zip(found.members, found.labels)), problems


def check_tar_dataset(root: Path, splits: Dict[str, Path], *, deep: bool, workers: int, progress: bool,
                      strict: bool) -> Any:
    """``orderdp-dali check-data`` of tar splits: a :class:`~orderdp_dali.check_data.CheckReport`
    whose findings are ``<split>/<shard>.tar/<member>`` (or a whole shard)."""
    from tqdm import tqdm

    from orderdp_dali.check_data import BAD_REASONS, CheckReport, Finding

    t0 = time.perf_counter()
    mixed = [name or "." for name, folder in splits.items() if not is_tar_split(folder)]
    if mixed:
        raise DatasetError(
            f"{root}: split(s) {', '.join(mixed)} hold no tar shards while others do; check one at a time (--split)"
        )
    report = CheckReport(root=os.path.realpath(root), splits={s: os.path.realpath(f) for s, f in splits.items()},
                         deep=deep)
    jobs = [(s, os.path.join(report.splits[s], shard)) for s in splits for shard in list_shards(report.splits[s])]
    findings: List[Tuple[str, str, str, str, str]] = []  # split, shard, member, reason, detail
    results: List[Any] = []
    with tqdm(total=len(jobs), unit="shard", desc="check-data (tar)", file=sys.stderr, disable=not progress) as bar:
        if workers <= 1 or len(jobs) <= 1 or not (deep or len(jobs) >= POOL_MIN_SHARDS):
            for _, path in jobs:
                results.append(_check_shard(path, deep))
                bar.update(1)
        else:
            with process_pool(workers) as pool:
                for r in pool.map(_check_shard, [p for _, p in jobs], [deep] * len(jobs)):
                    results.append(r)
                    bar.update(1)
    for name in splits:
        classes = _read_classes(Path(report.splits[name]))
        for (split, path), (count, labels, problems) in zip(jobs, results):
            if split != name:
                continue
            report.num_files += count
            shard = os.path.basename(path)
            findings += [(split, shard, *p) for p in problems]
            if classes is not None:
                findings += [(split, shard, m, "bad_label", f"label {lab} is outside the {len(classes)} classes "
                              f"of {CLASSES_FILE}") for m, lab in labels if lab >= len(classes)]
            else:  # the classes are 0..max label: a stray huge label would make millions of them
                findings += [(split, shard, m, "bad_label", f"label {lab} with no {CLASSES_FILE} would make "
                              f"{lab + 1} classes (at most {MAX_UNNAMED_CLASSES} without class names)")
                             for m, lab in labels if lab >= MAX_UNNAMED_CLASSES]
    for split, shard, member, reason, detail in findings:
        rel = _entry(shard, member)
        finding = Finding(os.path.join(report.splits[split], rel), rel, split, reason, detail)
        (report.bad if reason in BAD_REASONS or strict else report.warnings).append(finding)
    report.bad.sort(key=lambda f: f.path)
    report.warnings.sort(key=lambda f: f.path)
    report.seconds = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali make-shards",
        description="Convert class-folder splits (SRC/{train,val}/<class>/<image>) into webdataset-style tar "
                    "shards OUT/<split>/<prefix>-<split>-NNNN.tar ({key}.jpeg + {key}.cls) and OUT/classes.txt.",
    )
    p.add_argument("src", metavar="SRC", help="dataset root holding split folders of class folders")
    p.add_argument("out", metavar="OUT", help="output root (gets <split>/*.tar and classes.txt)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--prefix", default=None, help="shard name prefix (default: SRC's folder name)")
    p.add_argument("--split", nargs="+", metavar="NAME", help="split folders to convert (default: train val present)")
    p.add_argument("--rescan", action="store_true",
                   help="walk SRC's splits even when their index cache looks current (e.g. after restoring mtimes "
                        "on a file system without reliable ctimes)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        written = folder_to_shards(args.src, args.out, args.shard_size, args.prefix, args.split, rescan=args.rescan)
    except (ValueError, OSError) as e:  # DatasetError is a ValueError
        print(f"orderdp-dali make-shards: error: {e}", file=sys.stderr)
        return 2
    for split, shards in written.items():
        print(f"{split}: {len(shards)} shards in {Path(args.out) / split}")
    print(f"train with: data.dataset=tar data.root={Path(args.out).absolute()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
