"""Index a split from a file list, or a flat validation folder from Kaggle's label CSV.

Two inputs besides the class-folder layout, both giving the same :class:`SampleIndex`
(split folder, relative paths, labels, class names) so plans, checkpoints' dataset
fingerprint and check-data work unchanged:

* **File list** (DALI's ``file_list`` format, common on clusters): one ``<relative path>
  <label>`` per line, paths relative to the split folder. The label is the *last*
  whitespace-separated field and everything before it (trimmed) is the path, so paths may
  contain spaces, as in DALI. Blank lines and lines whose first non-blank character is
  ``#`` are skipped (so a path cannot start with ``#``). Labels are non-negative integers
  (at most 2^31 - 1); the class names come from an optional classes file (one name per line,
  line i = class i), else they are ``"0"`` .. ``"K-1"`` with K = largest label + 1, at most a
  million (a larger stray label would otherwise make billions of class names).
* **Flat validation folder**: ``<split>/ILSVRC2012_val_00000001.JPEG`` ... with
  ``LOC_val_solution.csv`` (header ``ImageId,PredictionString``; the first token of
  PredictionString is the synset), mapped to the training classes (ImageFolder order).

Samples are put in ImageFolder's order whatever the order of the lines: by label, then
folder, then file name. A list of a class-folder tree therefore indexes exactly as scanning
the tree does, and a list regenerated in another order (``find`` output differs between
machines) still has the same fingerprint, so a checkpoint resumes with it.

Every listed file must exist when the index is built (checked with one directory listing per
folder, not one ``stat`` per file) and be a regular file (a listed FIFO, socket or device
would block or fail the reader); errors name the list file and line, or the image.
"""
from __future__ import annotations

import csv
import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from orderdp_dali.data.folder import MAX_LABEL, MAX_UNNAMED_CLASSES, SampleIndex
from orderdp_dali.data.images import IMG_EXTENSIONS
from orderdp_dali.data.walk import is_dir_entry  # the walk's rule for folders
from orderdp_dali.errors import DatasetError

__all__ = [
    "index_file_list",
    "index_flat_val",
    "index_for_check",
    "index_split",
    "missing_files",
    "parse_classes",
    "parse_file_list",
    "parse_val_solution",
    "read_classes_file",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
SHOWN = 5  # how many offending entries an error names before "and N more"
CSV_HEADER = ["ImageId", "PredictionString"]


# ----------------------------------------------------------------------------- pure parsing


def parse_file_list(text: str, name: str) -> Tuple[List[str], np.ndarray, List[int]]:
    """Parse a file list: (normalised relative paths, int64 labels, 1-based line numbers), in line order.

    Raises:
        DatasetError: naming ``name`` and the line: a line without a label, a label that is not
            a non-negative integer, an absolute path or one leaving the split folder, a path
            listed twice.
    """
    labels: List[int] = []
    first: Dict[str, int] = {}  # path -> its line, in line order
    for lineno, raw in enumerate(text.split("\n"), 1):  # the fast path first: a million lines take seconds
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2 or not (fields[1].isdigit() and fields[1].isascii()):
            raise _line_error(name, lineno, line, fields)
        path = fields[0]
        if len(fields[1]) > 9 and int(fields[1]) > MAX_LABEL:
            raise DatasetError(f"{name} line {lineno}: label {fields[1][:40]} is too large for a class index "
                               f"(at most {MAX_LABEL}); labels are 0, 1, ..., one per class")
        if "/." in path or "//" in path or path[0] in "./" or path[-1] == "/":
            path = _normal_path(name, lineno, path)
        if path in first:
            raise DatasetError(f"{name} line {lineno}: {path[:80]!r} is listed again (first at line {first[path]})")
        first[path] = lineno
        labels.append(int(fields[1]))
    paths = list(first)
    if not paths:
        raise DatasetError(f"{name}: no '<relative path> <label>' lines")
    return paths, np.array(labels, dtype=np.int64), list(first.values())


def _line_error(name: str, lineno: int, line: str, fields: List[str]) -> DatasetError:
    where = f"{name} line {lineno}"
    if len(fields) != 2:
        return DatasetError(f"{where}: {line[:80]!r} is not '<relative path> <label>'")
    label = fields[1]
    what = "a negative label" if re.fullmatch(r"-[0-9]+", label) else "not a non-negative integer label"
    return DatasetError(f"{where}: {label[:40]!r} is {what} (labels are 0, 1, ..., one per class)")


def _normal_path(name: str, lineno: int, path: str) -> str:
    """``path`` normalised (``a/./b`` -> ``a/b``); DatasetError when absolute or leaving the split folder."""
    norm = posixpath.normpath(path)
    if norm.startswith("/"):
        raise DatasetError(f"{name} line {lineno}: {path[:80]!r} is an absolute path; list paths relative to the "
                           "split folder")
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise DatasetError(f"{name} line {lineno}: {path[:80]!r} is not a file inside the split folder")
    return norm


def parse_classes(text: str, name: str) -> Tuple[str, ...]:
    """Class names, one per line (line i = class i; surrounding blanks trimmed, trailing empty lines ignored).

    Raises:
        DatasetError: naming ``name`` and the line: an empty line (it would shift every later
            class), a name given twice, or no names at all.
    """
    names = [line.strip() for line in text.split("\n")]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise DatasetError(f"{name}: no class names (expected one name per line, line i = class i)")
    first: Dict[str, int] = {}
    for lineno, cls in enumerate(names, 1):
        if not cls:
            raise DatasetError(f"{name} line {lineno}: empty; every line names one class (line i = class i)")
        if cls in first:
            raise DatasetError(f"{name} line {lineno}: class {cls!r} again (first at line {first[cls]})")
        first[cls] = lineno
    return tuple(names)


def parse_val_solution(text: str, name: str) -> List[Tuple[str, str, int]]:
    """(ImageId, synset, line) of each row of Kaggle's ``LOC_val_solution.csv``, in file order.

    Raises:
        DatasetError: naming ``name`` and the line: another header, a row without two fields,
            an empty ImageId or PredictionString, an ImageId given twice.
    """
    reader = csv.reader(text.lstrip("\ufeff").splitlines())
    header = next(reader, None)
    if header is None or [h.strip() for h in header] != CSV_HEADER:
        raise DatasetError(
            f"{name} line 1: header {','.join(header or [])!r}; expected {','.join(CSV_HEADER)!r} "
            "(Kaggle's LOC_val_solution.csv)"
        )
    rows: List[Tuple[str, str, int]] = []
    first: Dict[str, int] = {}
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or not any(f.strip() for f in row):
                continue
            where = f"{name} line {lineno}"
            if len(row) != 2:
                raise DatasetError(f"{where}: {len(row)} fields; expected ImageId,PredictionString")
            image, tokens = row[0].strip(), row[1].split()
            if not image or not tokens:
                raise DatasetError(f"{where}: empty {'ImageId' if not image else 'PredictionString'}")
            if image in first:
                raise DatasetError(f"{where}: image {image!r} again (first at line {first[image]})")
            first[image] = lineno
            rows.append((image, tokens[0], lineno))
    except csv.Error as e:
        raise DatasetError(f"{name} line {reader.line_num}: {e}") from None
    if not rows:
        raise DatasetError(f"{name}: no rows after the header")
    return rows


def imagefolder_order(paths: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """The permutation putting samples in ImageFolder's order: by label, then folder, then file name."""
    folders = np.array([posixpath.dirname(p) for p in paths], dtype=np.str_)
    names = np.array([posixpath.basename(p) for p in paths], dtype=np.str_)
    return np.lexsort((names, folders, np.asarray(labels))).astype(np.int64)  # last key sorts first


def _named(items: Sequence[str], total: int) -> str:
    more = f" and {total - len(items)} more" if total > len(items) else ""
    return ", ".join(items) + more


# ----------------------------------------------------------------------------- files


def _read_text(path: Path, what: str) -> str:
    """``path`` as UTF-8 text; DatasetError naming ``what``, the file and (for bad bytes) the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{what}: {path} line {line} is not UTF-8 text") from None


def read_classes_file(path: PathLike) -> Tuple[str, ...]:
    """The class names of a classes file (see :func:`parse_classes`)."""
    p = Path(path)
    return parse_classes(_read_text(p, "classes file"), str(p))


def missing_files(root: PathLike, paths: Iterable[str]) -> List[int]:
    """Positions of ``paths`` (relative to ``root``) that are not files there.

    One directory listing per distinct folder instead of one ``stat`` per file: a million
    ImageNet files live in about a thousand folders, which matters on network storage.
    """
    return _absent_or_special(root, paths)[0]


def _absent_or_special(root: PathLike, paths: Iterable[str]) -> Tuple[List[int], List[int]]:
    """(positions of ``paths`` that do not exist, positions that are no regular file: a FIFO,
    socket or device, or a symlink to one), from one directory listing per folder. A broken
    symlink counts as present and regular, as in the folder walk: reading it names it."""
    root = os.fspath(root)
    listed: Dict[str, Dict[str, bool]] = {}  # folder -> {name: is a regular file (or a broken symlink)}
    absent, special = [], []
    for i, rel in enumerate(paths):
        folder, fname = posixpath.split(rel)
        if folder not in listed:
            try:
                with os.scandir(os.path.join(root, folder)) as it:
                    listed[folder] = {e.name: _regular(e) for e in it if not is_dir_entry(e)}
            except OSError:
                listed[folder] = {}
        kind = listed[folder].get(fname)
        if kind is None:
            absent.append(i)
        elif not kind:
            special.append(i)
    return absent, special


def _regular(entry: "os.DirEntry[str]") -> bool:
    """Whether a (non-folder) entry is a regular file, a symlink to one, or a broken symlink."""
    try:
        if entry.is_file():  # d_type, or a stat for a symlink
            return True
        os.stat(entry.path)  # it exists, and is no regular file
    except OSError:
        return True  # a broken symlink (or one that vanished): kept, as the walk keeps it
    return False


def _refuse_missing(index: SampleIndex, where: Dict[str, str], source: str) -> None:
    """DatasetError naming the first few listed files missing under ``index.root`` (or that are no
    regular files) and their count."""
    missing, special = _absent_or_special(index.root, index.paths.tolist())
    remedy = ("fix the list, or list the files as bad (check-data on the list writes them) and pass that as "
              "data.exclude_file")
    if missing:
        shown = [f"{where[p]} {p!r}" for p in (str(index.paths[i]) for i in missing[:SHOWN])]
        raise DatasetError(
            f"{source}: {len(missing)} of {len(index)} listed files do not exist under {index.root}: "
            f"{_named(shown, len(missing))}; {remedy}"
        )
    if special:
        shown = [f"{where[p]} {p!r}" for p in (str(index.paths[i]) for i in special[:SHOWN])]
        raise DatasetError(
            f"{source}: {len(special)} listed files under {index.root} are no regular files (a FIFO, socket or "
            f"device, which training would block or fail reading): {_named(shown, len(special))}; {remedy}"
        )


def index_file_list(
    list_file: PathLike,
    split_dir: PathLike,
    classes: Optional[Sequence[str]] = None,
    classes_source: str = "the classes file",
    exclude: Optional[Iterable[PathLike]] = None,
    check_exists: bool = True,
) -> SampleIndex:
    """Index a file list whose paths are relative to ``split_dir`` (format: module docstring).

    Args:
        list_file: the list.
        split_dir: the folder the listed paths are relative to.
        classes: class names (label k is ``classes[k]``), e.g. from :func:`read_classes_file`
            or the training index; None names them ``"0"`` .. ``"K-1"``, K = largest label + 1.
        classes_source: what gave ``classes``, for the label-out-of-range error.
        exclude: files to leave out, as :meth:`SampleIndex.without` takes them; a missing file
            that is excluded is no error.
        check_exists: refuse listed files that do not exist (check-data turns it off to report
            them as findings instead).

    Raises:
        DatasetError: the split folder or list is missing; a bad line, label (also one >= the
            number of ``classes``) or duplicate, naming the list and line; listed files that do
            not exist (the first few with their lines, and the count).
    """
    list_path = Path(list_file).expanduser()
    root = Path(split_dir).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{list_path}: the split folder {root} its paths are relative to is not a directory")
    paths, labels, lines = parse_file_list(_read_text(list_path, "file list"), str(list_path))
    if classes is None:
        top = int(labels.max())
        if top >= MAX_UNNAMED_CLASSES:
            i = int(np.argmax(labels))
            raise DatasetError(
                f"{list_path} line {lines[i]}: label {top} without a classes file would make {top + 1} classes "
                f"'0'..'{top}' (at most {MAX_UNNAMED_CLASSES} without class names): fix the label, or name the "
                "classes in data.classes_file (one a line)"
            )
        classes = tuple(str(k) for k in range(top + 1))
    else:
        classes = tuple(classes)
        over = np.flatnonzero(labels >= len(classes))
        if over.size:
            i = int(over[0])
            raise DatasetError(
                f"{list_path} line {lines[i]}: label {int(labels[i])} but {classes_source} names "
                f"{len(classes)} classes (labels 0..{len(classes) - 1})"
            )
    order = imagefolder_order(paths, labels)
    index = SampleIndex(root, classes, np.array(paths, dtype=np.str_)[order], labels[order])
    where = {p: f"line {n}" for p, n in zip(paths, lines)}
    if exclude is not None:
        index = index.without(exclude)
    if check_exists:
        _refuse_missing(index, where, str(list_path))
    return index


def _folder_images(folder: Path) -> Tuple[Set[str], Dict[str, List[str]]]:
    """(image file names, stem -> names) of one folder, not recursive."""
    try:
        with os.scandir(folder) as it:
            names = {e.name for e in it if not is_dir_entry(e) and e.name.lower().endswith(IMG_EXTENSIONS)}
    except OSError as e:
        raise DatasetError(f"cannot list the validation folder {folder}: {e.strerror or e}") from None
    stems: Dict[str, List[str]] = {}
    for n in sorted(names):
        stems.setdefault(os.path.splitext(n)[0], []).append(n)
    return names, stems


def index_flat_val(
    folder: PathLike,
    csv_file: PathLike,
    classes: Sequence[str],
    exclude: Optional[Iterable[PathLike]] = None,
    check_exists: bool = True,
) -> SampleIndex:
    """Index a flat validation folder labelled by Kaggle's ``LOC_val_solution.csv``.

    Each row's ImageId names the file ``<ImageId>.<image extension>`` in ``folder`` (or the
    file named exactly ImageId); its label is the position of its synset in ``classes`` (the
    training classes, ImageFolder order). Samples are sorted by file name. Images in the
    folder that the CSV does not list are left out with a warning naming the count and the
    first few (they have no label to be scored against).

    Raises:
        DatasetError: the CSV is malformed (naming its line); a synset is not a training class
            (naming the image and line, with the count); listed images missing from the folder
            (the first few with their lines, and the count); two files with one ImageId.
    """
    root = Path(folder).expanduser().resolve()
    csv_path = Path(csv_file).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{csv_path}: the validation folder {root} is not a directory")
    rows = parse_val_solution(_read_text(csv_path, "validation labels CSV"), str(csv_path))
    label_of = {c: k for k, c in enumerate(classes)}
    unknown = [(img, syn, n) for img, syn, n in rows if syn not in label_of]
    if unknown:
        shown = [f"{img} (line {n}: {syn!r})" for img, syn, n in unknown[:SHOWN]]
        raise DatasetError(
            f"{csv_path}: {len(unknown)} images have a synset that is not a training class: "
            f"{_named(shown, len(unknown))} (the training classes are {', '.join(map(repr, list(classes)[:3]))}, ...; "
            "a training list names its classes with data.classes_file)"
        )
    names, stems = _folder_images(root)
    paths: List[str] = []
    where: Dict[str, str] = {}
    for img, _, n in rows:
        if img in names:
            name = img
        else:
            found = stems.get(img, [])
            if len(found) > 1:
                raise DatasetError(f"{csv_path} line {n}: image {img!r} matches several files in {root}: {found}")
            name = found[0] if found else img + ".JPEG"  # ImageNet's name, reported if missing
        if name in where:
            raise DatasetError(f"{csv_path} line {n}: image {img!r} is the file {name!r} of {where[name]} again")
        paths.append(name)
        where[name] = f"line {n}"
    labels = np.array([label_of[syn] for _, syn, _ in rows], dtype=np.int64)
    order = np.argsort(np.array(paths, dtype=np.str_), kind="stable")
    index = SampleIndex(root, tuple(classes), np.array(paths, dtype=np.str_)[order], labels[order])
    extra = sorted(names - set(paths))
    if extra:
        log.warning("%s: %d images in %s are not in the CSV and are left out: %s", csv_path, len(extra), root,
                    _named(extra[:SHOWN], len(extra)))
    if exclude is not None:
        index = index.without(exclude)
    if check_exists:
        _refuse_missing(index, where, str(csv_path))
    return index


def index_split(data: Any, split: str, classes: Optional[Sequence[str]] = None,
                exclude: Optional[Iterable[PathLike]] = None) -> SampleIndex:
    """The index of ``split`` (``"train"`` or ``"val"``) as a :class:`~orderdp_dali.config.DataConfig` says.

    ``data.train_list`` / ``data.val_list`` (with ``data.classes_file``), or for validation
    ``data.val_labels_csv``, when set; else the class folders of the split
    (:meth:`SampleIndex.scan`, walked afresh with ``data.rescan``; the training split's files are
    re-stat'ed, so its fingerprint sees a file rewritten in place). The list, classes and CSV files
    are relative to ``data.root``;
    listed images are relative to the split folder ``data.root/data.<split>_split``.
    ``classes``: the training classes, for a validation list or CSV.
    """
    root = Path(data.root).expanduser()
    folder = root / (data.train_split if split == "train" else data.val_split)
    key = f"{split}_list"
    if getattr(data, key):
        listed = _config_file(root, key, getattr(data, key))
        source = "the training index"
        if data.classes_file:
            classes = read_classes_file(_config_file(root, "classes_file", data.classes_file))
            source = f"data.classes_file {data.classes_file}"
        index = index_file_list(listed, folder, classes, source, exclude)
        if split == "train":
            _warn_empty_classes(index, listed)
        return index
    if split == "val" and data.val_labels_csv:
        if classes is None:
            raise ValueError("index_split: a validation CSV needs the training classes")
        return index_flat_val(folder, _config_file(root, "val_labels_csv", data.val_labels_csv), classes, exclude)
    # the training split's files are re-stat'ed: its fingerprint then notices a file rewritten in place
    return SampleIndex.scan(folder, cache_dir=data.cache_dir, exclude=exclude, rescan=data.rescan,
                            verify=split == "train")


def index_for_check(root: PathLike, file_list: Optional[PathLike] = None, classes_file: Optional[PathLike] = None,
                    val_labels_csv: Optional[PathLike] = None) -> SampleIndex:
    """The index check-data checks: a file list's (paths relative to ``root``) or a flat folder's
    labelled by a CSV (``root`` is the folder; classes are the CSV's synsets, sorted). Listed
    files that are absent stay in it, for check-data to report as ``missing``."""
    if (file_list is None) == (val_labels_csv is None):
        raise DatasetError("check-data: give one of --file-list and --val-labels-csv")
    if file_list is not None:
        classes = read_classes_file(classes_file) if classes_file else None
        return index_file_list(file_list, root, classes, f"classes file {classes_file}", check_exists=False)
    csv_path = Path(val_labels_csv).expanduser()
    rows = parse_val_solution(_read_text(csv_path, "validation labels CSV"), str(csv_path))
    return index_flat_val(root, csv_path, sorted({syn for _, syn, _ in rows}), check_exists=False)


def _config_file(root: Path, key: str, value: str) -> Path:
    """``root / value``, or a DatasetError naming ``data.<key>`` when it is no file."""
    path = root / Path(value).expanduser()
    if not path.is_file():
        raise DatasetError(f"data.{key}: {path} is not a file (relative paths are relative to data.root)")
    return path


def _warn_empty_classes(index: SampleIndex, source: Path) -> None:
    counts = np.bincount(index.labels, minlength=len(index.classes))
    empty = [index.classes[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        log.warning("%s: %d of %d classes have no training sample: %s", source, len(empty), len(index.classes),
                    _named([repr(c) for c in empty[:SHOWN]], len(empty)))
