"""The tar-shard format: how members pair into samples, and one shard's listing.

Webdataset's rule, with the cases it leaves open settled (see :mod:`orderdp_dali.data.tar`
for the format): :func:`sample_key` pairs members, :func:`member_id` spells a member in
exclusion lists, :func:`index_shards` lists the samples (offset, size, label) and problems of
each shard with stdlib ``tarfile``, in a process pool for long shard lists.
"""
from __future__ import annotations

import mmap
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from orderdp_dali.data.folder import MAX_LABEL
from orderdp_dali.data.images import IMG_EXTENSIONS, is_utf8, printable
from orderdp_dali.data.walk import is_dir_entry
from orderdp_dali.processes import process_pool

__all__ = [
    "CLASSES_FILE",
    "LABEL_EXT",
    "POOL_MIN_SHARDS",
    "Problem",
    "ShardListing",
    "exclusion_entry",
    "index_shard",
    "index_shards",
    "is_tar_split",
    "key_id",
    "list_shards",
    "member_id",
    "sample_key",
    "split_member_name",
]


PathLike = Union[str, "os.PathLike[str]"]


CLASSES_FILE = "classes.txt"


LABEL_EXT = "cls"


IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMG_EXTENSIONS)


BLOCK = tarfile.BLOCKSIZE


# Shard lists at least this long are indexed by a pool of processes (tarfile parsing holds the GIL).
POOL_MIN_SHARDS = 16


_DIGITS = re.compile(rb"\s*\d+\s*")


# A problem in a shard: (member name, or "" for the whole shard; reason; detail). Reasons are
# keys of orderdp_dali.data.images.BAD_REASONS, so check-data's lists of them load back.
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
    return any(e.name.endswith(".tar") and _is_file(e) for e in entries) and not any(is_dir_entry(e) for e in entries)


def _is_file(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


@dataclass
class ShardListing:
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


def index_shard(path: str) -> ShardListing:
    """Index one shard: pair images with their ``.cls`` labels; everything odd becomes a problem."""
    out = ShardListing()
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


def index_shards(paths: Sequence[str], workers: Optional[int] = None) -> List[ShardListing]:
    """:func:`index_shard` of each path, in a pool of spawned processes when there are many."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) < POOL_MIN_SHARDS:
        return [index_shard(p) for p in paths]
    # spawn, not fork: the caller may already run DALI or torch threads
    with process_pool(workers) as pool:
        return list(pool.map(index_shard, paths, chunksize=max(1, len(paths) // (4 * workers))))


def key_id(sample_id: str) -> str:
    """``<shard>/<member id>`` -> ``<shard>/<key>``."""
    shard, _, member = sample_id.partition("/")
    return f"{shard}/{sample_key(member)[0]}"


def exclusion_entry(shard: str, member: str) -> str:
    """A problem's entry in check-data's lists, relative to the split: ``<shard>/<member id>`` or ``<shard>``."""
    return f"{shard}/{member_id(member)}" if member else shard
