"""Find the files of an ImageNet-layout folder that would break or silently hurt training.

One bad JPEG among 1.28M crashes a DALI pipeline hours into a run; this finds them up front
and writes a list that :meth:`orderdp_dali.sample_index.SampleIndex.scan` can exclude
(``exclude=load_exclusion_list(...)``). A file list, or a flat validation folder with Kaggle's
labels CSV, is checked the same way (``--file-list``, ``--val-labels-csv``; see
:mod:`orderdp_dali.file_lists`): its listed files, absent ones reported as ``missing``.

Which files are images follows torchvision's ``ImageFolder``: class folders are the
(symlink-followed) sub-folders of a split, searched recursively; a file is an image when its
name ends with one of :data:`IMG_EXTENSIONS` (any case). Other files are ignored, as there.
The walk is :func:`orderdp_dali.sample_index.walk_split`, the one training's ``SampleIndex``
uses, so both see the same files; a symlink loop is reported (``symlink_loop``) and skipped;
an image-named FIFO, socket or device (``not_a_file``) and a file or folder name that is not
valid UTF-8 (``bad_name``) are reported, never opened, and left out of the index.

Two depths:

* header (default): the first and last bytes of every file. The content must be a known
  image format (magic bytes); a JPEG must start with SOI ``FFD8`` and end with EOI ``FFD9``
  (trailing zero padding allowed), a PNG with its ``IEND`` chunk. A file that fails only the
  end check is decoded to tell a truncated file (bad) from one with trailing data (warning).
  The size a JPEG, PNG, BMP or WebP header declares must stay within
  :data:`MAX_DECODE_PIXELS` (``too_large``): DALI's decoders refuse more, mid-epoch.
* deep (``--deep``): additionally decodes every image fully with PIL, in a process pool.

Findings are *bad* (the file cannot be used: excluded by the written list, exit code 1) or
*warnings* (usable, worth knowing). A decodable image whose content does not match its
extension (a PNG named ``.JPEG``, as ImageNet itself has) is a **warning**, not bad: PIL
and DALI's decoders detect the format from the content, so it trains fine; on the GPU,
DALI decodes such a file on the CPU, which only costs speed. ``--strict`` makes warnings
bad. GIF content is bad: DALI's decoders do not read GIF.

Absolute paths in the report are the *resolved* split folder joined with the path relative
to it (symlinked class folders are not resolved), the convention of ``SampleIndex``; the
report's ``root`` is resolved too, so :func:`load_exclusion_list` can tell whether a list
belongs to the dataset a training run reads.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import stat
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from tqdm import tqdm

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.errors import DatasetError
from orderdp_dali.processes import process_pool
from orderdp_dali.sample_index import IMG_EXTENSIONS, is_utf8, printable, walk_split

__all__ = [
    "IMG_EXTENSIONS",
    "MAX_DECODE_PIXELS",
    "BAD_REASONS",
    "WARNING_REASONS",
    "Finding",
    "CheckReport",
    "check_dataset",
    "check_bytes",
    "check_file",
    "load_exclusion_list",
    "write_report",
    "main",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

KNOWN_SPLITS = ("train", "val")

BAD_REASONS = {
    "broken_symlink": "symlink whose target does not exist",
    "unreadable": "cannot be opened (permissions or I/O error)",
    "unreadable_dir": "folder cannot be listed (permissions or I/O error)",
    "not_a_file": "not a regular file (FIFO, socket, device): never opened, left out of the index",
    "bad_name": "the file or folder name is not valid UTF-8",
    "empty_file": "zero bytes",
    "not_an_image": "content is no known image format",
    "unsupported_format": "an image format DALI cannot decode (GIF)",
    "truncated": "the image data ends early",
    "too_large": "the header declares more pixels than the decoders accept",
    "decode_error": "full decode failed",
    "missing": "named by the file list or labels CSV, but not in the folder",
    # tar shards (orderdp_dali.tar_shards): the path is <shard>.tar/<member>
    "not_a_tar": "not an uncompressed tar file",
    "missing_label": "an image without its .cls member",
    "missing_image": "a .cls member without an image",
    "bad_label": "the .cls member is no class index",
    "duplicate_key": "the same key twice in one shard",
}
WARNING_REASONS = {
    "wrong_extension": "decodable, but the content's format does not match the extension",
    "trailing_data": "decodable, with extra bytes after the end of the image",
    "huge_image": "beyond PIL's decompression-bomb limit; PIL refuses it by default",
    "symlink_loop": "a symlinked folder that contains itself; skipped",
}

# format name -> extensions whose files may hold it
_FORMAT_EXTENSIONS = {
    "jpeg": (".jpg", ".jpeg"),
    "png": (".png",),
    "pnm": (".ppm", ".pgm"),
    "bmp": (".bmp",),
    "tiff": (".tif", ".tiff"),
    "webp": (".webp",),
    "gif": (),
    "jpeg2000": (),
}
_UNSUPPORTED_FORMATS = {"gif"}
_HEAD_BYTES = 1024  # a JPEG's frame header is mostly inside it (after EXIF data it is read on its own)
_TAIL_BYTES = 512
_PNG_END = b"IEND\xaeB`\x82"
# DALI's CPU decoders refuse larger images (OpenCV's CV_IO_MAX_IMAGE_PIXELS is 2^30; libjpeg-turbo
# stops at a few GB of pixels): such a file fails training mid-epoch, and even below that each
# sample would take gigabytes. PIL's own decompression-bomb limit (huge_image, a warning) is lower.
MAX_DECODE_PIXELS = 1 << 30
# JPEG start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8, DAC CC), which carry the image size
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclass(frozen=True)
class Finding:
    """One problem with one file (or folder).

    Attributes:
        path: absolute path (resolved split folder + ``relpath``).
        relpath: path relative to the split folder, e.g. ``n01440764/x.JPEG``.
        split: ``"train"``, ``"val"``, ... or ``""`` when ROOT itself is the split.
        reason: a key of :data:`BAD_REASONS` or :data:`WARNING_REASONS`.
        detail: a human-readable explanation (e.g. PIL's error message).
    """

    path: str
    relpath: str
    split: str
    reason: str
    detail: str = ""

    def to_json(self) -> Dict[str, str]:
        return {
            "path": self.path,
            "relpath": self.relpath,
            "split": self.split,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: the ROOT that was checked, resolved (symlinks followed), as its split folders are.
        splits: split name -> resolved split folder (name ``""`` when ROOT is the split).
        deep: whether every image was decoded.
        num_files: image files checked.
        bad: bad files (and unlistable folders), sorted by path.
        warnings: usable files worth knowing about, sorted by path.
        empty_classes: class folders without any image, as ``"split/class"``.
        class_mismatch: split -> classes other splits have and it lacks. ImageFolder numbers
            classes by sorted name, so a missing class shifts every later label.
        seconds: wall time of the check.
    """

    root: str
    splits: Dict[str, str]
    deep: bool
    num_files: int = 0
    bad: List[Finding] = field(default_factory=list)
    warnings: List[Finding] = field(default_factory=list)
    empty_classes: List[str] = field(default_factory=list)
    class_mismatch: Dict[str, List[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bad_files(self) -> List[Tuple[str, str]]:
        """``(absolute path, reason)`` of every bad file."""
        return [(f.path, f.reason) for f in self.bad]

    @property
    def ok(self) -> bool:
        """True when training on this folder will neither fail nor mislabel."""
        return not (self.bad or self.empty_classes or self.class_mismatch)

    def to_json(self) -> Dict[str, Any]:
        return {
            "version": 1,
            "root": self.root,
            "splits": self.splits,
            "deep": self.deep,
            "num_files": self.num_files,
            "bad_files": [f.to_json() for f in self.bad],
            "warnings": [f.to_json() for f in self.warnings],
            "empty_classes": self.empty_classes,
            "class_mismatch": self.class_mismatch,
            "seconds": round(self.seconds, 3),
        }


# ----------------------------------------------------------------------------- per-file checks

# A check result: None when fine, else (reason, detail).
_Result = Optional[Tuple[str, str]]


def _sniff(head: bytes) -> Optional[str]:
    """The image format of a file from its first bytes, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n#":
        return "pnm"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "jpeg2000"
    return None


# read(offset, count) -> at most count bytes of the image from offset
_Read = Callable[[int, int], bytes]


def _jpeg_size(head: bytes, read: _Read) -> Optional[Tuple[int, int]]:
    """(width, height) from a JPEG's frame header, walking the marker segments before it (in
    ``head`` while they fit, else through ``read``)."""
    pos, size = 2, len(head)  # after SOI
    for _ in range(1024):  # segments before the frame header; bounded against garbage
        seg = head[pos : pos + 9] if pos + 9 <= size else read(pos, 9)
        if len(seg) < 4 or seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        elif marker in _SOF:
            return ((seg[7] << 8) | seg[8], (seg[5] << 8) | seg[6]) if len(seg) == 9 else None
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came
            return None
        else:
            length = (seg[2] << 8) | seg[3]
            if length < 2:
                return None
            pos += 2 + length
    return None


def _image_size(fmt: str, head: bytes, read: _Read) -> Optional[Tuple[int, int]]:
    """(width, height) that an image's header declares, for the formats whose headers say it
    cheaply (JPEG, PNG, BMP, WebP); None when unknown (TIFF and PNM are sized by the deep decode)."""
    if fmt == "jpeg":
        return _jpeg_size(head, read)
    if fmt == "png" and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if fmt == "bmp" and len(head) >= 26:
        if int.from_bytes(head[14:18], "little") == 12:  # OS/2 header: 16-bit sizes
            return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
        return (abs(int.from_bytes(head[18:22], "little", signed=True)),
                abs(int.from_bytes(head[22:26], "little", signed=True)))  # a negative height is top-down
    if fmt == "webp" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _decode(path: Union[str, IO[bytes]]) -> _Result:
    """Fully decode ``path`` (a file name or a binary file) with PIL; None if it decodes, else (reason, message)."""
    from PIL import Image, ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not come back grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette chatter
            with Image.open(path) as im:
                im.load()
    except Image.DecompressionBombError as e:
        return "huge_image", str(e)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        message = f"{type(e).__name__}: {e}"
        return ("truncated" if "truncated" in str(e).lower() else "decode_error"), message
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return None


def check_file(path: str, deep: bool = True) -> _Result:
    """Check one image file; None if fine, else (reason, detail).

    ``deep`` decodes it fully; without it only the header, size and end marker are read.
    The one answer to "can this file be read and decoded?" (the iterator asks it too).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken_symlink", f"points to {os.readlink(path)!r}, which does not exist"
        return "unreadable", "vanished during the check"
    except OSError as e:  # ELOOP, EACCES on a parent, ...
        if os.path.islink(path):
            return "broken_symlink", e.strerror or str(e)
        return "unreadable", e.strerror or str(e)
    if not stat.S_ISREG(st.st_mode):
        return "not_a_file", stat.filemode(st.st_mode)
    if st.st_size == 0:
        return "empty_file", "0 bytes"
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(fd, _HEAD_BYTES, 0)
            tail = os.pread(fd, _TAIL_BYTES, max(0, st.st_size - _TAIL_BYTES))

            size = _image_size(_sniff(head) or "", head, lambda offset, count: os.pread(fd, count, offset))
        finally:
            os.close(fd)
    except OSError as e:
        return "unreadable", e.strerror or str(e)
    return _check_content(head, tail, os.path.splitext(path)[1].lower(), lambda: _decode(path), deep, size)


def check_bytes(data: Union[bytes, memoryview, Any], name: str, deep: bool = True) -> _Result:
    """:func:`check_file` of an image held in memory (e.g. a tar shard member); ``name`` gives the extension."""
    data = memoryview(data).cast("B")
    if len(data) == 0:
        return "empty_file", "0 bytes"
    head, tail = bytes(data[:_HEAD_BYTES]), bytes(data[-_TAIL_BYTES:])
    size = _image_size(_sniff(head) or "", head, lambda offset, count: bytes(data[offset : offset + count]))
    return _check_content(head, tail, os.path.splitext(name)[1].lower(), lambda: _decode(io.BytesIO(data)), deep,
                          size)


def _check_content(head: bytes, tail: bytes, ext: str, decode: Callable[[], _Result], deep: bool,
                   size: Optional[Tuple[int, int]] = None) -> _Result:
    """The format, declared size, end-marker and (``deep``) decode checks of an image's first and last bytes."""
    fmt = _sniff(head)
    if fmt is None:
        return "not_an_image", f"starts with {head[:8].hex(' ')}"
    if fmt in _UNSUPPORTED_FORMATS:
        return "unsupported_format", f"{fmt.upper()} content; DALI's decoders cannot read it"
    if size is not None and size[0] * size[1] > MAX_DECODE_PIXELS:
        return "too_large", (f"the header declares {size[0]}x{size[1]} pixels, more than the {MAX_DECODE_PIXELS} "
                             "DALI's decoders accept; resize or remove it")
    warning: _Result = None
    end = tail.rstrip(b"\x00")
    if fmt == "png" and _PNG_END not in tail:
        # PIL decodes a PNG cut inside its last chunks without complaint; libpng does not.
        return "truncated", "no IEND chunk at the end of the file"
    if (fmt == "jpeg" and not end.endswith(b"\xff\xd9")) or (fmt == "png" and not end.endswith(_PNG_END)):
        # Truncated, or valid with trailing data: only a decode tells them apart (rare, so cheap).
        failure = decode()
        if failure is not None:
            return failure if failure[0] != "decode_error" else ("truncated", failure[1])
        warning = "trailing_data", f"no {fmt.upper()} end marker at the end of the file, but it decodes"
        deep = False  # just decoded
    if deep:
        failure = decode()
        if failure is not None:
            return failure
    if warning is None and ext not in _FORMAT_EXTENSIONS[fmt]:
        warning = "wrong_extension", f"{fmt.upper()} content in a {ext} file"
    return warning


def _check_chunk(paths: Sequence[str], deep: bool) -> List[Tuple[int, str, str]]:
    """Check a chunk of files; returns (position in chunk, reason, detail) for the bad ones only."""
    out = []
    for i, path in enumerate(paths):
        result = check_file(path, deep)
        if result is not None:
            out.append((i, result[0], result[1]))
    return out


# ----------------------------------------------------------------------------- walking


@dataclass
class _Split:
    name: str
    root: str  # resolved
    classes: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)  # relative to root
    empty: List[str] = field(default_factory=list)
    findings: List[Tuple[str, str, str]] = field(default_factory=list)  # (relpath, reason, detail)


def _scan_split(name: str, folder: Path) -> _Split:
    walk = walk_split(folder)  # the walk SampleIndex does: the same files, loops and unreadable folders
    files = [rel for found in walk.files for rel in found]
    return _Split(name, walk.root, walk.classes, files, walk.empty_classes, list(walk.skipped))


def _listed_split(index: Any) -> _Split:
    """The files of a file list's index (ROOT is its split); absent ones are findings, not checked."""
    from orderdp_dali.file_lists import missing_files

    paths = index.paths.tolist()
    missing = set(missing_files(index.root, paths))
    files = [p for i, p in enumerate(paths) if i not in missing]
    findings = [(paths[i], "missing", "no such file") for i in sorted(missing)]
    return _Split("", str(index.root), list(index.classes), files, [], findings)


def _find_splits(root: Path, splits: Optional[Sequence[str]]) -> Dict[str, Path]:
    """split name -> folder; ROOT itself (name ``""``) when it has no split folders."""
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root} is not a directory")
    if splits:
        missing = [s for s in splits if not (root / s).is_dir()]
        if missing:
            raise DatasetError(f"no split folder {', '.join(repr(s) for s in missing)} in {root}")
        return {s: root / s for s in splits}
    present = {s: root / s for s in KNOWN_SPLITS if (root / s).is_dir()}
    return present or {"": root}


# ----------------------------------------------------------------------------- the check


def check_dataset(
    root: PathLike,
    deep: bool = False,
    workers: Optional[int] = None,
    progress: bool = True,
    splits: Optional[Sequence[str]] = None,
    strict: bool = False,
    index: Optional[Any] = None,
) -> CheckReport:
    """Check every image of an ImageNet-layout folder.

    Args:
        root: a folder with split folders (``train/``, ``val/``) of class folders, or a
            single split (a folder of class folders).
        deep: decode every image fully (slow) instead of checking headers and ends.
        workers: parallel workers: processes with ``deep``, threads (for I/O latency on
            network storage) without. Default ``os.cpu_count()``; 1 runs inline.
        progress: show a progress bar on stderr.
        splits: the split folders to check (default: those of train, val that exist).
        strict: count warnings as bad files.
        index: check the files of this :class:`~orderdp_dali.sample_index.SampleIndex` (a file
            list's or labels CSV's, see :func:`orderdp_dali.file_lists.index_for_check`) instead
            of walking ``root``'s class folders; listed files that are absent are ``missing``.

    Returns:
        A :class:`CheckReport`.

    Raises:
        DatasetError: ``root`` (or a requested split) is missing, or holds no class folder.
        ValueError: a bad ``workers``.
    """
    t0 = time.perf_counter()
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    root_path = Path(root).expanduser().absolute()
    if index is not None:
        scanned = [_listed_split(index)]
    else:
        found = _find_splits(root_path, splits)
        from orderdp_dali.tar_shards import check_tar_dataset, is_tar_split

        if any(is_tar_split(folder) for folder in found.values()):  # <split>/*.tar shards
            return check_tar_dataset(root_path, found, deep=deep, workers=workers, progress=progress, strict=strict)
        scanned = [_scan_split(name, folder) for name, folder in found.items()]
    for split in scanned:
        if not split.classes:
            where = f"split {split.name!r} ({split.root})" if split.name else str(root_path)
            raise DatasetError(f"no class folders in {where}: expected <split>/<class>/<image> folders")

    report = CheckReport(root=os.path.realpath(root_path), splits={s.name: s.root for s in scanned}, deep=deep)
    findings: List[Tuple[_Split, str, str, str]] = [(s, *f) for s in scanned for f in s.findings]
    files = [(s, rel) for s in scanned for rel in s.files]
    report.num_files = len(files)
    report.empty_classes = [f"{s.name}/{c}" if s.name else c for s in scanned for c in s.empty]
    if len(scanned) > 1:
        union = set().union(*(s.classes for s in scanned))
        for s in scanned:
            lacking = sorted(union - set(s.classes))
            if lacking:
                report.class_mismatch[s.name] = lacking

    paths = [os.path.join(s.root, rel) for s, rel in files]
    for index, reason, detail in _run_checks(paths, deep, workers, progress):
        split, rel = files[index]
        findings.append((split, rel, reason, detail))
    for split, rel, reason, detail in findings:
        finding = Finding(os.path.join(split.root, rel), rel, split.name, reason, detail)
        is_bad = reason in BAD_REASONS or strict
        (report.bad if is_bad else report.warnings).append(finding)
    report.bad.sort(key=lambda f: f.path)
    report.warnings.sort(key=lambda f: f.path)
    report.seconds = time.perf_counter() - t0
    log.info("checked %d files under %s in %.1f s: %d bad, %d warnings",
             report.num_files, root_path, report.seconds, len(report.bad), len(report.warnings))
    return report


def _run_checks(paths: List[str], deep: bool, workers: int, progress: bool) -> List[Tuple[int, str, str]]:
    """Check all paths in chunks, in parallel; returns (index into paths, reason, detail)."""
    n = len(paths)
    base = 32 if deep else 512
    chunk = max(1, min(base, -(-n // (workers * 4))))  # >= 4 chunks per worker for balance
    starts = range(0, n, chunk)
    out: List[Tuple[int, str, str]] = []
    desc = "check-data (deep)" if deep else "check-data (header)"
    with tqdm(total=n, unit="file", desc=desc, file=sys.stderr, disable=not progress, smoothing=0.1) as bar:
        if workers == 1 or len(starts) <= 1:
            for start in starts:
                out += [(start + i, r, d) for i, r, d in _check_chunk(paths[start : start + chunk], deep)]
                bar.update(min(chunk, n - start))
            return out
        pool: Executor = process_pool(workers) if deep else ThreadPoolExecutor(workers)
        with pool:
            futures = {pool.submit(_check_chunk, paths[s : s + chunk], deep): s for s in starts}
            for future in as_completed(futures):
                start = futures[future]
                out += [(start + i, r, d) for i, r, d in future.result()]
                bar.update(min(chunk, n - start))
    return out


# ----------------------------------------------------------------------------- the bad-file list


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json(value: Any, **kwargs: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``, with the lone surrogates of names that are not
    valid UTF-8 written as ``\\udcXX`` escapes (which read back as the same string), so the
    text can be written as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, **kwargs)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _quoted(path: str) -> str:
    """``path`` for a line of the text list: a JSON string literal when it would not survive as is
    (a line break, or a name that is not valid UTF-8)."""
    return _json(path) if ("\n" in path or "\r" in path or not is_utf8(path)) else path


def write_report(report: CheckReport, path: PathLike) -> Path:
    """Write the bad-file list atomically: JSON if ``path`` ends in ``.json``, else text.

    The text format is one bad file per line, ``<reason>\\t<absolute path>``, after ``#``
    comment lines, the first of which names the (resolved) root that was checked; a path
    containing a line break is written as a JSON string literal.
    JSON holds the whole report (``root``, ``splits``; ``bad_files``: ``path``, ``relpath``,
    ``split``, ``reason``, ``detail``; plus warnings, empty classes, class mismatches).
    """
    out = Path(path)
    if out.suffix.lower() == ".json":
        text = _json(report.to_json(), indent=2) + "\n"
    else:
        lines = [
            f"# orderdp-dali check-data: {len(report.bad)} bad of {report.num_files} files under "
            f"{_quoted(report.root)}",
            "# <reason>\\t<absolute path>",
        ]
        lines += [f"{f.reason}\t{_quoted(f.path)}" for f in report.bad]
        text = "\n".join(lines) + "\n"
    return write_text_atomic(out, text)  # training reads this list: it must survive a crash whole


_LIST_FORMATS = (
    "expected the list 'orderdp-dali check-data --output' writes (.json, or '<reason>\\t<path>' lines) "
    "or absolute image paths, one a line"
)
_TEXT_HEADER = re.compile(r"# orderdp-dali check-data: \d+ bad of \d+ files under (.+)")


@dataclass(frozen=True)
class _Entry:
    path: str  # absolute, as written in the list
    where: str = ""  # "line N" in a text list
    split: Optional[str] = None  # check-data's JSON only
    relpath: Optional[str] = None


def load_exclusion_list(path: PathLike, root: Optional[PathLike] = None, *, rebase: bool = False) -> Set[str]:
    """Read a bad-file list back as a set of absolute paths, checking it belongs to the dataset at ``root``.

    Accepted formats (anything else is a :class:`DatasetError` naming the file, and the line):

    * check-data's JSON (:func:`write_report`); also a bare JSON list of absolute paths or of
      ``{"path": ...}`` objects;
    * check-data's text: ``<reason>\\t<absolute path>`` lines, ``reason`` one of
      :data:`BAD_REASONS` or :data:`WARNING_REASONS`; ``#`` lines are comments;
    * plain lists: one absolute path of an image file (an :data:`IMG_EXTENSIONS` name) a
      line; ``#`` comments and blank lines allowed. Relative paths are refused: whether
      ``c/x.JPEG`` meant ``ROOT/train/c/x.JPEG`` or ``ROOT/c/x.JPEG`` cannot be told, and a
      wrong guess would silently exclude nothing. A path with a line break needs JSON.

    With ``root`` (the dataset root a training run reads, the folder holding its split
    folders, as ``data.root``), the list must be this dataset's: the root check-data recorded
    (JSON ``root``, or the text list's first comment line; lists without one skip this)
    must be ``root`` or one of its split folders (symlinks resolved on both sides, so lists
    written before roots were recorded resolved still load), and every entry must lie under
    ``root`` or one of its (resolved) split folders. A list of a moved or copied dataset, or
    the wrong file, is an error rather than a list that silently excludes nothing.

    Args:
        path: the list.
        root: the dataset root to check the list against; None reads the list unchecked.
        rebase: with ``root``, do not check but re-base check-data's JSON entries onto
            ``root`` (``realpath(root/split)/relpath``): for an identical copy of the checked
            dataset, e.g. on another machine.

    Raises:
        DatasetError: the file is no such list, or (with ``root``) another dataset's.
        OSError: the file cannot be read.
    """
    name = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise DatasetError(f"{name} is not a text file (not UTF-8): {_LIST_FORMATS}") from None
    if Path(path).suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        recorded, entries = _parse_json_list(name, text)
    else:
        recorded, entries = _parse_text_list(name, text)
    if root is None:
        if rebase:
            raise ValueError("load_exclusion_list: rebase=True needs the root to re-base onto")
        return {e.path for e in entries}
    abs_root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    real_root = os.path.realpath(abs_root)
    if rebase:
        out = set()
        for e in entries:
            if e.relpath is None:
                raise DatasetError(f"{name}: rebase needs check-data's JSON list (a relpath and split for each entry)")
            out.add(os.path.join(os.path.realpath(os.path.join(real_root, e.split or "")), e.relpath))
        return out
    splits = _split_folders(real_root)
    remedy = f"re-run 'orderdp-dali check-data {real_root} --output {name}' and pass the new list"
    if recorded is not None and os.path.realpath(recorded) not in {real_root, *splits}:
        raise DatasetError(
            f"{name} was written by check-data for {recorded}, but this run reads {real_root}: {remedy} "
            "(another dataset's list, e.g. of a moved or copied dataset, would exclude nothing here)"
        )
    bases = sorted({abs_root, real_root, *splits})
    dataset = {real_root, *splits}
    memo: Dict[str, str] = {}
    for e in entries:
        p = os.path.normpath(e.path)
        if not any(p == b or p.startswith(b.rstrip(os.sep) + os.sep) for b in bases) and not any(
            _realpath(a, memo) in dataset for a in _ancestors(p)  # spelled through a symlink to the dataset
        ):
            where = f"{name} {e.where}" if e.where else name
            raise DatasetError(f"{where}: {e.path} is outside {real_root}, the dataset this run reads: {remedy}")
    return {e.path for e in entries}


def _ancestors(path: str) -> List[str]:
    """The folders above ``path``, shallowest first (``/a/b/c`` -> ``/``, ``/a``, ``/a/b``)."""
    out = []
    parent = os.path.dirname(path)
    while parent and parent not in out:
        out.append(parent)
        parent = os.path.dirname(parent)
    return out[::-1]


def _realpath(path: str, memo: Dict[str, str]) -> str:
    if path not in memo:
        memo[path] = os.path.realpath(path)
    return memo[path]


def _split_folders(real_root: str) -> List[str]:
    """The resolved sub-folders of a dataset root (its split folders, symlinks followed)."""
    try:
        with os.scandir(real_root) as it:
            names = [e.name for e in it]
    except OSError:
        return []
    folders = [os.path.realpath(os.path.join(real_root, n)) for n in names]
    return [f for f in folders if os.path.isdir(f)]


def _parse_json_list(name: str, text: str) -> Tuple[Optional[str], List[_Entry]]:
    """(recorded root or None, entries) of a JSON list."""
    try:
        data = json.loads(text)
    except ValueError as e:
        where = f" ({e.msg}, line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise DatasetError(f"{name} is not valid JSON{where}: {_LIST_FORMATS}") from None
    recorded = None
    if isinstance(data, dict):
        recorded = data.get("root") if isinstance(data.get("root"), str) else None
        items = data.get("bad_files")
        if not isinstance(items, list):
            raise DatasetError(f"{name}: expected a JSON object with a 'bad_files' list: {_LIST_FORMATS}")
    elif isinstance(data, list):
        items = data
    else:
        raise DatasetError(f"{name}: expected a JSON object with a 'bad_files' list: {_LIST_FORMATS}")
    entries = []
    for item in items:
        if isinstance(item, str):
            entry = _Entry(item)
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            split, rel = item.get("split"), item.get("relpath")
            ok = isinstance(split, (str, type(None))) and isinstance(rel, str)
            entry = _Entry(item["path"], split=split if ok else None, relpath=rel if ok else None)
        else:
            raise DatasetError(f"{name}: bad entry {item!r}; expected {{'path': ..., 'reason': ...}}")
        if not os.path.isabs(entry.path):
            raise DatasetError(f"{name}: {entry.path!r} is not an absolute path: {_LIST_FORMATS}")
        entries.append(entry)
    return recorded, entries


def _parse_text_list(name: str, text: str) -> Tuple[Optional[str], List[_Entry]]:
    """(recorded root or None, entries) of check-data's text list or a plain one."""
    recorded = None
    entries = []
    reasons = {**BAD_REASONS, **WARNING_REASONS}
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        where = f"line {lineno}"
        if line.startswith("#"):
            m = _TEXT_HEADER.fullmatch(line)
            if m and recorded is None:
                recorded = _unquoted(name, where, m.group(1))
            continue
        if not line.strip():
            continue
        if "\t" in line:
            reason, item = line.split("\t", 1)
            if reason not in reasons:
                raise DatasetError(
                    f"{name} {where}: unknown reason {reason!r} in '<reason>\\t<path>' (known: "
                    f"{', '.join(sorted(reasons))}): {_LIST_FORMATS}"
                )
            item = _unquoted(name, where, item)
        else:
            item = line
            if not item.lower().endswith(IMG_EXTENSIONS):
                raise DatasetError(f"{name} {where}: {line[:80]!r} is not an image path: {_LIST_FORMATS}")
        if not os.path.isabs(item):
            raise DatasetError(f"{name} {where}: {item[:80]!r} is not an absolute path: {_LIST_FORMATS}")
        entries.append(_Entry(item, where))
    return recorded, entries


def _unquoted(name: str, where: str, item: str) -> str:
    if not item.startswith('"'):
        return item
    try:
        value = json.loads(item)
    except ValueError:
        value = None
    if not isinstance(value, str):
        raise DatasetError(f"{name} {where}: {item[:80]!r} is not a valid quoted path: {_LIST_FORMATS}")
    return value


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderdp-dali check-data",
        description="Find empty class folders and unreadable, truncated or non-image files in an "
                    "ImageNet-layout folder. Exit code: 0 clean, 1 problems found, 2 usage error.",
    )
    p.add_argument("root", metavar="ROOT", help="dataset root (with train/ val/) or one split folder")
    p.add_argument("--deep", action="store_true", help="decode every image fully (slow; default: header check)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"parallel workers (default: {os.cpu_count()}); processes with --deep, threads without")
    p.add_argument("--output", metavar="FILE",
                   help="write the bad-file list: JSON if FILE ends in .json, else '<reason>\\t<path>' lines")
    p.add_argument("--split", nargs="+", metavar="NAME",
                   help="split folders to check (default: train val, those present)")
    p.add_argument("--file-list", metavar="LIST",
                   help="check the files of this list ('<path> <label>' lines, paths relative to ROOT) instead of "
                        "ROOT's class folders")
    p.add_argument("--classes-file", metavar="FILE", help="with --file-list: its class names, one a line")
    p.add_argument("--val-labels-csv", metavar="CSV",
                   help="ROOT is a flat validation folder: check the images this LOC_val_solution.csv lists")
    p.add_argument("--strict", action="store_true", help="count warnings (e.g. a PNG named .JPEG) as bad files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _say(text: str) -> None:
    """Print a summary line; names that are not valid UTF-8 are shown with \\xNN escapes."""
    print(printable(text))


def _print_summary(report: CheckReport, listed: int = 20) -> None:
    kind = "full decode" if report.deep else "header check"
    splits = ", ".join(s or "." for s in report.splits)
    rate = report.num_files / report.seconds if report.seconds > 0 else float("inf")
    _say(f"check-data: {report.root} (splits: {splits}; {kind})")
    _say(f"  {report.num_files} image files checked in {report.seconds:.1f} s ({rate:.0f} files/s)")
    for title, items in (("bad files", report.bad), ("warnings", report.warnings)):
        counts = Counter(f.reason for f in items)
        _say(
            f"  {title}: {len(items)}"
            + (f" ({', '.join(f'{r} {n}' for r, n in sorted(counts.items()))})" if items else "")
        )
        for f in items[:listed]:
            rel = f"{f.split}/{f.relpath}" if f.split else f.relpath
            _say(f"    {rel}: {f.reason}" + (f" ({f.detail})" if f.detail else ""))
        if len(items) > listed:
            _say(f"    ... and {len(items) - listed} more")
    if report.empty_classes:
        _say(f"  empty class folders: {len(report.empty_classes)}: {', '.join(report.empty_classes[:listed])}")
    for split, lacking in report.class_mismatch.items():
        _say(f"  split {split!r} lacks {len(lacking)} class folder(s) the others have "
             f"(labels would shift): {', '.join(lacking[:listed])}")
    _say("  result: " + ("clean" if report.ok else "PROBLEMS FOUND"))


def _listed_index(args: argparse.Namespace) -> Optional[Any]:
    """The index of ``--file-list`` / ``--val-labels-csv``, or None to walk ROOT's class folders."""
    if not (args.file_list or args.val_labels_csv):
        if args.classes_file:
            raise DatasetError("--classes-file: only with --file-list")
        return None
    if args.split:
        raise DatasetError("--split: not with --file-list or --val-labels-csv (ROOT is the folder they list)")
    from orderdp_dali.file_lists import index_for_check

    return index_for_check(args.root, args.file_list, args.classes_file, args.val_labels_csv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the message (or --help)
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.workers is not None and args.workers < 1:
        print(f"orderdp-dali check-data: error: --workers must be an integer >= 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        index = _listed_index(args)
        report = check_dataset(
            args.root, deep=args.deep, workers=args.workers, progress=not args.no_progress,
            splits=args.split, strict=args.strict, index=index,
        )
    except (DatasetError, ValueError) as e:
        print(f"orderdp-dali check-data: error: {e}", file=sys.stderr)
        return 2
    _print_summary(report)
    if args.output:
        try:
            out = write_report(report, args.output)
        except OSError as e:
            print(f"orderdp-dali check-data: error: cannot write {args.output}: {e}", file=sys.stderr)
            return 2
        print(f"  wrote the bad-file list to {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
