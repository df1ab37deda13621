"""What the pipeline's source hands DALI for a batch of sample indices.

* :class:`FileSamples`: each sample's absolute file path, UTF-8 encoded as a 1-D uint8
  array, which ``fn.io.file.read`` opens and reads in DALI's own threads. All paths live
  in one byte buffer with offsets (about 60 MB for ImageNet-1K), so a batch is a list of
  views into it: no copy, no per-sample Python work beyond a slice.
* :class:`ArraySamples`: rows of an in-memory uint8 array (CIFAR's ``(N, 32, 32, 3)``),
  gathered into one contiguous batch array.

Both also answer "which of these samples is broken?" after a pipeline failure.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ArraySamples", "FileSamples", "first_broken"]


class FileSamples:
    """Samples that are files: ``root / paths[i]`` with class ``labels[i]``."""

    encoded = False  # the source yields file paths, which the pipeline reads with fn.io.file.read

    def __init__(self, root: Path, paths: Sequence[str], labels: np.ndarray) -> None:
        self.root = Path(root)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        packed = _pack_ascii(self.root, paths)
        if packed is not None:
            self._buffer, self._offsets = packed
            return
        encoded = [os.fsencode(os.path.join(self.root, p)) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> str:
        return os.fsdecode(self._buffer[self._offsets[i] : self._offsets[i + 1]].tobytes())

    def fetch(self, indices: np.ndarray) -> List[np.ndarray]:
        """The encoded paths of ``indices``: views into one buffer."""
        buf = self._buffer
        starts = self._offsets[indices].tolist()
        ends = self._offsets[np.asarray(indices) + 1].tolist()
        return [buf[a:b] for a, b in zip(starts, ends)]

    def find_broken(self, indices: np.ndarray) -> Optional[Tuple[int, str, str]]:
        """The first of ``indices`` whose file cannot be read or decoded: (index, path, reason);
        else the first too large for PIL's decompression-bomb check (a likely cause of a decoder's
        allocation failure); else None."""
        from orderdp_dali.check_data import check_file

        return first_broken(indices, lambda i: (self.path(i), check_file(self.path(i), deep=True)))


def first_broken(indices: np.ndarray, check: Callable[[int], Tuple[str, Optional[Tuple[str, str]]]]
                 ) -> Optional[Tuple[int, str, str]]:
    """``find_broken``'s rule over ``check(i) -> (where, problem or None)``: the first bad sample,
    else the first ``huge_image`` one (a warning for check-data, but the likeliest reason a batch
    that holds it failed), else None."""
    from orderdp_dali.check_data import BAD_REASONS

    suspect = None
    for i in dict.fromkeys(int(s) for s in indices):
        where, problem = check(i)
        if problem is None:
            continue
        if problem[0] in BAD_REASONS:
            return i, where, f"{problem[0]}: {problem[1]}"
        if problem[0] == "huge_image" and suspect is None:
            suspect = i, where, f"{problem[0]}: {problem[1]} ('check-data --strict' lists it)"
    return suspect


def _pack_ascii(root: Path, paths: Sequence[str]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(buffer, offsets) of ``root / paths[i]`` built with array operations, or None to build them per path.

    Only for a numpy unicode array of ASCII relative paths (the sample index's, almost always):
    1.28M paths take a fraction of a second this way instead of seconds of per-path encoding.
    The bytes equal ``os.fsencode(os.path.join(root, p))``.
    """
    if not (isinstance(paths, np.ndarray) and paths.dtype.kind == "U" and paths.ndim == 1 and paths.size):
        return None
    if paths.dtype.itemsize == 0:
        return None
    codes = np.ascontiguousarray(paths).view(np.uint32).reshape(paths.size, -1)  # UCS-4, NUL-padded
    if codes.max() >= 128 or np.any(codes[:, 0] == ord(os.sep)):
        return None
    prefix = np.frombuffer(os.fsencode(os.path.join(root, "")), dtype=np.uint8)
    if not prefix.all():
        return None
    lengths = prefix.size + np.char.str_len(paths)
    offsets = np.zeros(paths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    buffer = np.empty(int(offsets[-1]), dtype=np.uint8)
    # Rows of (prefix, path, NUL padding), a block at a time: the block is reused, so the only
    # large allocation is the buffer itself. NUL never occurs inside a path.
    rows = min(paths.size, 1 << 15)
    table = np.empty((rows, prefix.size + codes.shape[1]), dtype=np.uint8)
    table[:, : prefix.size] = prefix
    for lo in range(0, paths.size, rows):
        block = table[: min(rows, paths.size - lo)]
        block[:, prefix.size :] = codes[lo : lo + rows]
        flat = block.reshape(-1)
        buffer[offsets[lo] : offsets[lo + block.shape[0]]] = flat[flat != 0]
    return buffer, offsets


class ArraySamples:
    """Samples that are rows of a uint8 array: ``images[i]`` with class ``labels[i]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim < 2 or images.shape[0] != len(labels):
            raise ValueError(
                f"ArraySamples needs uint8 images of shape (N, ...) with N = {len(labels)} labels, "
                f"got {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def fetch(self, indices: np.ndarray) -> np.ndarray:
        """``images[indices]`` as one contiguous array."""
        return np.ascontiguousarray(self.images[indices])

    def find_broken(self, indices: np.ndarray) -> Optional[Tuple[int, str, str]]:
        return None  # decoded pixels: nothing per sample can be broken
