"""Write tar shards: class-folder splits converted to webdataset-style shards (``orderdp-dali make-shards``).

:func:`folder_to_shards` writes the samples in ImageFolder order (classes sorted, files as
:class:`~orderdp_dali.data.folder.SampleIndex` lists them), so a folder dataset and its tar
copy index identically; :func:`write_shards` writes any ``(key, extension, image, label)``
samples. The format they write is :mod:`orderdp_dali.data.tar`'s; every shard is written
atomically (a reader's memory map of the old one stays valid).
"""
from __future__ import annotations

import io
import logging
import os
import re
import tarfile
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

from orderdp_dali.atomic import write_atomic, write_text_atomic
from orderdp_dali.data.folder import SampleIndex
from orderdp_dali.data.tar_format import CLASSES_FILE, LABEL_EXT
from orderdp_dali.errors import DatasetError

__all__ = [
    "folder_to_shards",
    "write_shards",
]


log = logging.getLogger(__name__)


PathLike = Union[str, "os.PathLike[str]"]


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
