"""Dataset fingerprints: what checkpoints compare on resume to know they continue on the same data.

A fingerprint covers class names, sample names, labels and each sample's size and mtime in
whole seconds: a file replaced under its name is another dataset, while a moved copy that
kept its mtimes (``mv``, ``cp -a``, ``rsync -a``, ``tar``) is the same one.
"""
from __future__ import annotations

import hashlib
import re
from typing import (
    Any,
    Iterable,
    Sequence,
)

import numpy as np

__all__ = [
    "FINGERPRINT_TAG",
    "NS",
    "compare_fingerprints",
    "content_fingerprint",
    "dataset_fingerprint",
]


FINGERPRINT_TAG = "v2"  # fingerprints of names, labels, sizes and mtimes; untagged ones cover names and labels


NS = 10**9


def _encoded(parts: Iterable[str]) -> bytes:
    # surrogateescape: a name with undecodable bytes fingerprints as its bytes on disk (no crash)
    return "\n".join(parts).encode("utf-8", "surrogateescape")


def dataset_fingerprint(classes: Sequence[str], names: Sequence[str], labels: np.ndarray) -> str:
    """SHA-256 of class names, sample names and labels: the names part of a fingerprint, and the
    whole fingerprint of checkpoints written before sizes and mtimes were covered."""
    h = hashlib.sha256()
    h.update(_encoded(classes))
    h.update(b"\0")
    h.update(_encoded(names))
    h.update(b"\0")
    h.update(np.asarray(labels).astype("<i8").tobytes())
    return h.hexdigest()


def content_fingerprint(names_fingerprint: str, sizes: np.ndarray, mtimes: np.ndarray) -> str:
    """``"v2:<names fingerprint>:<SHA-256 of it, the sizes and the mtimes>"``.

    The names part stays readable in the string, so a mismatch can tell "other files or labels"
    from "the same files, other contents" (:func:`compare_fingerprints`). ``mtimes`` are whole
    seconds: tar and most copies keep seconds, not always nanoseconds.
    """
    h = hashlib.sha256()
    h.update(names_fingerprint.encode())
    h.update(np.asarray(sizes).astype("<i8").tobytes())
    h.update(b"\0")
    h.update(np.asarray(mtimes).astype("<i8").tobytes())
    return f"{FINGERPRINT_TAG}:{names_fingerprint}:{h.hexdigest()}"


_LEGACY = re.compile(r"[0-9a-f]{64}")


def compare_fingerprints(saved: Any, now: str) -> str:
    """How a checkpoint's dataset fingerprint ``saved`` relates to this run's ``now``.

    Returns:
        ``"same"``; ``"legacy"`` (``saved`` predates content fingerprints and names the same
        files and labels: accept it, with a note that replaced files cannot be told);
        ``"content"`` (the same files and labels, but some file's size or mtime differs:
        replaced or rewritten under its name, or copied without its mtimes); ``"other"``.
    """
    if saved == now:
        return "same"
    if not isinstance(saved, str) or not isinstance(now, str):
        return "other"
    names_now = now.split(":")[1] if now.startswith(f"{FINGERPRINT_TAG}:") else None
    if names_now is not None and _LEGACY.fullmatch(saved):
        return "legacy" if saved == names_now else "other"
    if names_now is not None and saved.startswith(f"{FINGERPRINT_TAG}:"):
        return "content" if saved.split(":")[1] == names_now else "other"
    return "other"
