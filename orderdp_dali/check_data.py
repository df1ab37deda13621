"""Find the files of an ImageNet-layout folder that would break or silently hurt training.

One bad JPEG among 1.28M crashes a DALI pipeline hours into a run; this finds them up front
and writes a list that :meth:`orderdp_dali.data.folder.SampleIndex.scan` can exclude
(``exclude=load_exclusion_list(...)``). A file list, or a flat validation folder with Kaggle's
labels CSV, is checked the same way (``--file-list``, ``--val-labels-csv``; see
:mod:`orderdp_dali.data.file_lists`): its listed files, absent ones reported as ``missing``.

Which files are images follows torchvision's ``ImageFolder``: class folders are the
(symlink-followed) sub-folders of a split, searched recursively; a file is an image when its
name ends with one of :data:`~orderdp_dali.data.images.IMG_EXTENSIONS` (any case). Other files are ignored, as there.
The walk is :func:`orderdp_dali.data.walk.walk_split`, the one training's ``SampleIndex``
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
report's ``root`` is resolved too, so
:func:`~orderdp_dali.data.exclusions.load_exclusion_list` can tell whether a list
belongs to the dataset a training run reads.

Each file is checked by :mod:`orderdp_dali.data.images` (the check the indexes use to name a
sample that broke a pipeline); tar shards are checked member by member (:func:`check_tar_dataset`).
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import re
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    Dict,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from tqdm import tqdm

from orderdp_dali.atomic import write_text_atomic
from orderdp_dali.data.file_lists import missing_files
from orderdp_dali.data.folder import MAX_UNNAMED_CLASSES
from orderdp_dali.data.images import (
    BAD_REASONS,
    check_bytes,
    check_file,
    is_utf8,
)
from orderdp_dali.data.tar import read_shard_classes
from orderdp_dali.data.tar_format import (
    CLASSES_FILE,
    POOL_MIN_SHARDS,
    Problem,
    exclusion_entry,
    index_shard,
    is_tar_split,
    list_shards,
)
from orderdp_dali.data.walk import walk_split
from orderdp_dali.errors import DatasetError
from orderdp_dali.processes import process_pool

__all__ = [
    "CheckReport",
    "Finding",
    "check_dataset",
    "check_tar_dataset",
    "write_report",
]


log = logging.getLogger(__name__)


PathLike = Union[str, "os.PathLike[str]"]


KNOWN_SPLITS = ("train", "val")


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


def _check_chunk(paths: Sequence[str], deep: bool) -> List[Tuple[int, str, str]]:
    """Check a chunk of files; returns (position in chunk, reason, detail) for the bad ones only."""
    out = []
    for i, path in enumerate(paths):
        result = check_file(path, deep)
        if result is not None:
            out.append((i, result[0], result[1]))
    return out


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
        index: check the files of this :class:`~orderdp_dali.data.folder.SampleIndex` (a file
            list's or labels CSV's, see :func:`orderdp_dali.data.file_lists.index_for_check`) instead
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


def _check_shard(path: str, deep: bool) -> Tuple[int, List[Tuple[str, int]], List[Problem]]:
    """(samples, (member, label) of each, problems) of one shard: indexing problems, then every image checked."""
    found = index_shard(path)
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
        classes = read_shard_classes(Path(report.splits[name]))
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
        rel = exclusion_entry(shard, member)
        finding = Finding(os.path.join(report.splits[split], rel), rel, split, reason, detail)
        (report.bad if reason in BAD_REASONS or strict else report.warnings).append(finding)
    report.bad.sort(key=lambda f: f.path)
    report.warnings.sort(key=lambda f: f.path)
    report.seconds = time.perf_counter() - t0
    return report
