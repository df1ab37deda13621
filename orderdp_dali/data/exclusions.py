"""The exclusion list: check-data's list of bad files, read back to leave them out of an index.

:func:`load_exclusion_list` reads a list (check-data's JSON or text report, or absolute paths
one a line) and refuses one written for another dataset; :func:`relative_entries` and
:func:`is_covered` are how every index matches its entries (a file, or a folder above it).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Dict,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from orderdp_dali.data.images import BAD_REASONS, IMG_EXTENSIONS, WARNING_REASONS
from orderdp_dali.errors import DatasetError

__all__ = [
    "is_covered",
    "load_exclusion_list",
    "relative_entries",
]


PathLike = Union[str, "os.PathLike[str]"]
_LIST_FORMATS = (
    "expected the list 'orderdp-dali check-data --output' writes (.json, or '<reason>\\t<path>' lines) "
    "or absolute image paths, one a line"
)


_TEXT_HEADER = re.compile(r"# orderdp-dali check-data: \d+ bad of \d+ files under (.+)")


def relative_entries(root: Path, files: Iterable[PathLike]) -> Set[str]:
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


def is_covered(rel: str, drop: Set[str]) -> bool:
    """Whether ``rel`` or a folder above it is in ``drop``."""
    parts = rel.split(os.sep)
    return any(os.sep.join(parts[: k + 1]) in drop for k in range(len(parts)))


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
