"""Find the files of an ImageNet-layout folder that would break or silently hurt training.

One bad JPEG among 1.28M crashes a DALI pipeline hours into a run; this finds them up front
and writes a list that :meth:`orderdp_dali.sample_index.SampleIndex.scan` can exclude
(``exclude=load_exclusion_list(...)``).

Which files are images follows torchvision's ``ImageFolder``: class folders are the
(symlink-followed) sub-folders of a split, searched recursively; a file is an image when its
name ends with one of :data:`IMG_EXTENSIONS` (any case). Other files are ignored, as there.

Two depths:

* header (default): the first and last bytes of every file. The content must be a known
  image format (magic bytes); a JPEG must start with SOI ``FFD8`` and end with EOI ``FFD9``
  (trailing zero padding allowed), a PNG with its ``IEND`` chunk. A file that fails only the
  end check is decoded to tell a truncated file (bad) from one with trailing data (warning).
* deep (``--deep``): additionally decodes every image fully with PIL, in a process pool.

Findings are *bad* (the file cannot be used: excluded by the written list, exit code 1) or
*warnings* (usable, worth knowing). A decodable image whose content does not match its
extension (a PNG named ``.JPEG``, as ImageNet itself has) is a **warning**, not bad: PIL
and DALI's decoders detect the format from the content, so it trains fine; on the GPU,
DALI decodes such a file on the CPU, which only costs speed. ``--strict`` makes warnings
bad. GIF content is bad: DALI's decoders do not read GIF.

Absolute paths in the report are the *resolved* split folder joined with the path relative
to it (symlinked class folders are not resolved), the convention of ``SampleIndex``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple, Union

from tqdm import tqdm

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.errors import DatasetError

__all__ = [
    "IMG_EXTENSIONS",
    "BAD_REASONS",
    "WARNING_REASONS",
    "Finding",
    "CheckReport",
    "check_dataset",
    "check_file",
    "load_exclusion_list",
    "write_report",
    "main",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Mirrors torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively); kept as a
# copy so that checking data does not import torch.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
KNOWN_SPLITS = ("train", "val")

BAD_REASONS = {
    "broken_symlink": "symlink whose target does not exist",
    "unreadable": "cannot be opened (permissions or I/O error)",
    "unreadable_dir": "folder cannot be listed (permissions or I/O error)",
    "not_a_file": "not a regular file (FIFO, device, ...)",
    "empty_file": "zero bytes",
    "not_an_image": "content is no known image format",
    "unsupported_format": "an image format DALI cannot decode (GIF)",
    "truncated": "the image data ends early",
    "decode_error": "full decode failed",
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
_TAIL_BYTES = 512
_PNG_END = b"IEND\xaeB`\x82"


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
        root: the absolute ROOT that was checked.
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


def _decode(path: str) -> _Result:
    """Fully decode ``path`` with PIL; None if it decodes, else (reason, message)."""
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
            head = os.pread(fd, 16, 0)
            tail = os.pread(fd, _TAIL_BYTES, max(0, st.st_size - _TAIL_BYTES))
        finally:
            os.close(fd)
    except OSError as e:
        return "unreadable", e.strerror or str(e)

    fmt = _sniff(head)
    if fmt is None:
        return "not_an_image", f"starts with {head[:8].hex(' ')}"
    if fmt in _UNSUPPORTED_FORMATS:
        return "unsupported_format", f"{fmt.upper()} content; DALI's decoders cannot read it"
    warning: _Result = None
    end = tail.rstrip(b"\x00")
    if fmt == "png" and _PNG_END not in tail:
        # PIL decodes a PNG cut inside its last chunks without complaint; libpng does not.
        return "truncated", "no IEND chunk at the end of the file"
    if (fmt == "jpeg" and not end.endswith(b"\xff\xd9")) or (fmt == "png" and not end.endswith(_PNG_END)):
        # Truncated, or valid with trailing data: only a decode tells them apart (rare, so cheap).
        failure = _decode(path)
        if failure is not None:
            return failure if failure[0] != "decode_error" else ("truncated", failure[1])
        warning = "trailing_data", f"no {fmt.upper()} end marker at the end of the file, but it decodes"
        deep = False  # just decoded
    if deep:
        failure = _decode(path)
        if failure is not None:
            return failure
    ext = os.path.splitext(path)[1].lower()
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


def _walk_class(split: _Split, rel_dir: str, ancestors: FrozenSet[Tuple[int, int]]) -> int:
    """Collect the image files under one class folder (recursively, symlinks followed)."""
    path = os.path.join(split.root, rel_dir)
    try:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            split.findings.append((rel_dir, "symlink_loop", "this folder contains itself through a symlink"))
            return 0
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        split.findings.append((rel_dir, "unreadable_dir", e.strerror or str(e)))
        return 0
    found = 0
    for entry in entries:
        rel = os.path.join(rel_dir, entry.name)
        try:
            is_dir = entry.is_dir()  # follows symlinks, as os.walk(followlinks=True) does
        except OSError:
            is_dir = False
        if is_dir:
            found += _walk_class(split, rel, ancestors | {key})
        elif entry.name.lower().endswith(IMG_EXTENSIONS):
            split.files.append(rel)
            found += 1
    return found


def _scan_split(name: str, folder: Path) -> _Split:
    split = _Split(name, os.path.realpath(folder))
    try:
        with os.scandir(split.root) as it:
            split.classes = sorted(e.name for e in it if _is_dir(e))
    except OSError as e:
        raise DatasetError(f"cannot list {folder}: {e.strerror or e}") from e
    for cls in split.classes:
        if _walk_class(split, cls, frozenset()) == 0:
            split.empty.append(cls)
    return split


def _is_dir(entry: "os.DirEntry[str]") -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


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
    scanned = [_scan_split(name, folder) for name, folder in _find_splits(root_path, splits).items()]
    for split in scanned:
        if not split.classes:
            where = f"split {split.name!r} ({split.root})" if split.name else str(root_path)
            raise DatasetError(f"no class folders in {where}: expected <split>/<class>/<image> folders")

    report = CheckReport(root=str(root_path), splits={s.name: s.root for s in scanned}, deep=deep)
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
        pool: Executor = ProcessPoolExecutor(workers) if deep else ThreadPoolExecutor(workers)
        with pool:
            futures = {pool.submit(_check_chunk, paths[s : s + chunk], deep): s for s in starts}
            for future in as_completed(futures):
                start = futures[future]
                out += [(start + i, r, d) for i, r, d in future.result()]
                bar.update(min(chunk, n - start))
    return out


# ----------------------------------------------------------------------------- the bad-file list


def write_report(report: CheckReport, path: PathLike) -> Path:
    """Write the bad-file list atomically: JSON if ``path`` ends in ``.json``, else text.

    The text format is one bad file per line, ``<reason>\\t<absolute path>``, after ``#``
    comment lines; a path containing a line break is written as a JSON string literal.
    JSON holds the whole report (``bad_files``: ``path``, ``relpath``, ``split``, ``reason``,
    ``detail``; plus warnings, empty classes, class mismatches).
    """
    out = Path(path)
    if out.suffix.lower() == ".json":
        text = json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    else:
        lines = [
            f"# orderdp-dali check-data: {len(report.bad)} bad of {report.num_files} files under {report.root}",
            "# <reason>\\t<absolute path>",
        ]
        for f in report.bad:
            shown = json.dumps(f.path, ensure_ascii=False) if ("\n" in f.path or "\r" in f.path) else f.path
            lines.append(f"{f.reason}\t{shown}")
        text = "\n".join(lines) + "\n"
    return write_text_atomic(out, text)  # training reads this list: it must survive a crash whole


def load_exclusion_list(path: PathLike, root: Optional[PathLike] = None) -> Set[str]:
    """Read a list written by :func:`write_report` back as a set of absolute paths.

    Args:
        path: the ``.json`` or text file.
        root: re-base the entries onto this dataset root (``root/split/relpath``), e.g. when
            the dataset was checked on another machine or mount point. JSON lists only.

    Raises:
        ValueError: the file is not such a list.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if Path(path).suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        data = json.loads(text)
        entries = data.get("bad_files") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON object with a 'bad_files' list")
        out = set()
        for e in entries:
            if isinstance(e, str):
                out.add(e)
            elif isinstance(e, dict) and "path" in e:
                if root is not None and "relpath" in e:
                    split_root = Path(root).expanduser().resolve() / (e.get("split") or "")
                    out.add(os.path.join(split_root, e["relpath"]))
                else:
                    out.add(e["path"])
            else:
                raise ValueError(f"{path}: bad entry {e!r}; expected {{'path': ..., 'reason': ...}}")
        return out
    if root is not None:
        raise ValueError("root= re-basing needs the JSON format (it holds the relative paths)")
    out = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        item = line.split("\t", 1)[-1]
        out.add(json.loads(item) if item.startswith('"') else item)
    return out


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
    p.add_argument("--strict", action="store_true", help="count warnings (e.g. a PNG named .JPEG) as bad files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _print_summary(report: CheckReport, listed: int = 20) -> None:
    kind = "full decode" if report.deep else "header check"
    splits = ", ".join(s or "." for s in report.splits)
    rate = report.num_files / report.seconds if report.seconds > 0 else float("inf")
    print(f"check-data: {report.root} (splits: {splits}; {kind})")
    print(f"  {report.num_files} image files checked in {report.seconds:.1f} s ({rate:.0f} files/s)")
    for title, items in (("bad files", report.bad), ("warnings", report.warnings)):
        counts = Counter(f.reason for f in items)
        print(
            f"  {title}: {len(items)}"
            + (f" ({', '.join(f'{r} {n}' for r, n in sorted(counts.items()))})" if items else "")
        )
        for f in items[:listed]:
            rel = f"{f.split}/{f.relpath}" if f.split else f.relpath
            print(f"    {rel}: {f.reason}" + (f" ({f.detail})" if f.detail else ""))
        if len(items) > listed:
            print(f"    ... and {len(items) - listed} more")
    if report.empty_classes:
        print(f"  empty class folders: {len(report.empty_classes)}: {', '.join(report.empty_classes[:listed])}")
    for split, lacking in report.class_mismatch.items():
        print(f"  split {split!r} lacks {len(lacking)} class folder(s) the others have "
              f"(labels would shift): {', '.join(lacking[:listed])}")
    print("  result: " + ("clean" if report.ok else "PROBLEMS FOUND"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit as e:  # argparse already printed the message (or --help)
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = check_dataset(
            args.root, deep=args.deep, workers=args.workers, progress=not args.no_progress,
            splits=args.split, strict=args.strict,
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
