"""CIFAR-10/100 from their python-pickle batches, and a plan iterator over in-memory images.

The datasets are read from a local folder, never downloaded:

* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
* CIFAR-100: ``<root>/cifar-100-python/{train, test, meta}``

``root`` may also be the ``cifar-10-batches-py`` / ``cifar-100-python`` folder itself.
Images become one ``(N, 32, 32, 3)`` uint8 array; :class:`ArrayPlanIterator` trains on it
with the same epoch, plan, score-update and checkpoint logic as
:class:`~orderdp_dali.iterator.DALIPlanIterator`, through
:func:`orderdp_dali.pipelines.cifar.cifar_pipeline` (no JPEG decoding).
"""
from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from orderdp_dali.errors import DatasetError
from orderdp_dali.iterator import DALIPlanIterator
from orderdp_dali.samples import ArraySamples

__all__ = ["ArrayDataset", "ArrayPlanIterator", "CIFAR_LAYOUTS", "load_cifar"]

# dataset -> (folder, train files, test files, meta file, label key, class-names key)
CIFAR_LAYOUTS: Dict[str, Tuple[str, Tuple[str, ...], Tuple[str, ...], str, bytes, bytes]] = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{k}" for k in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names"),
}


@dataclass(frozen=True)
class ArrayDataset:
    """One split held in memory: ``images[i]`` (HWC uint8) has class ``labels[i]``.

    Attributes:
        root: where it was read from (for messages).
        classes: class names; label ``k`` is ``classes[k]``.
        images: uint8 array of shape (N, H, W, C).
        labels: int64 array of shape (N,).
    """

    root: Path
    classes: Tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    _digest: List[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise DatasetError(
                f"{self.root}: need uint8 images (N, H, W, C) and N labels, got "
                f"{self.images.dtype} {self.images.shape} and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of class names, labels and pixels: identifies the dataset in checkpoints."""
        if not self._digest:
            h = hashlib.sha256()
            h.update("\n".join(self.classes).encode())
            h.update(b"\0")
            h.update(self.labels.astype("<i8").tobytes())
            h.update(np.ascontiguousarray(self.images).data)
            self._digest.append(h.hexdigest())
        return self._digest[0]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays, lists and strings only: a batch file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_batch(path: Path) -> Dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DatasetError(f"cannot read CIFAR batch file {path}: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not a CIFAR batch file (holds a {type(data).__name__})")
    return data


def _find_folder(root: Path, folder: str, needed: Tuple[str, ...]) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds the batch files; else a DatasetError."""
    candidates = [root / folder, root] if root.name != folder else [root]
    for cand in candidates:
        if cand.is_dir() and any((cand / f).is_file() for f in needed):
            missing = [f for f in needed if not (cand / f).is_file()]
            if missing:
                raise DatasetError(f"CIFAR folder {cand} lacks {', '.join(missing)}")
            return cand
    raise DatasetError(
        f"no CIFAR batch files under {root}: expected {root / folder}/ with {', '.join(needed)} "
        "(the python version of the dataset, extracted; nothing is downloaded)"
    )


def load_cifar(root: Union[str, Path], name: str, split: str) -> ArrayDataset:
    """Read CIFAR-10 or CIFAR-100 (``name``: ``"cifar10"``/``"cifar100"``), ``split`` ``"train"``/``"val"``.

    Raises:
        ValueError: unknown ``name`` or ``split``.
        DatasetError: the folder or one of its batch files is missing or unreadable.
    """
    if name not in CIFAR_LAYOUTS:
        raise ValueError(f"Unknown CIFAR dataset {name!r}; choose one of {sorted(CIFAR_LAYOUTS)}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"Invalid split: {split!r} (choose 'train' or 'val')")
    folder, train_files, test_files, meta_file, label_key, names_key = CIFAR_LAYOUTS[name]
    files = train_files if split == "train" else test_files
    base = _find_folder(Path(root).expanduser().resolve(), folder, files + (meta_file,))
    images, labels = [], []
    for f in files:
        batch = _read_batch(base / f)
        if b"data" not in batch or label_key not in batch:
            raise DatasetError(f"{base / f} lacks the keys b'data' and {label_key!r}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    meta = _read_batch(base / meta_file)
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(names_key, []))
    label_array = np.concatenate(labels)
    if not classes:
        classes = tuple(str(k) for k in range(int(label_array.max()) + 1))
    return ArrayDataset(base, classes, np.ascontiguousarray(np.concatenate(images)), label_array)


class ArrayPlanIterator(DALIPlanIterator):
    """:class:`~orderdp_dali.iterator.DALIPlanIterator` over an :class:`ArrayDataset`.

    Same arguments; ``pipeline_config`` is a
    :class:`~orderdp_dali.pipelines.cifar.CifarPipelineConfig`. Each batch's rows of the
    image array are handed to DALI directly (see :class:`~orderdp_dali.samples.ArraySamples`).
    """

    def _default_pipeline_config(self) -> Any:
        from orderdp_dali.pipelines.cifar import CifarPipelineConfig

        return CifarPipelineConfig()

    def _make_samples(self) -> ArraySamples:
        return ArraySamples(self.index.images, self.index.labels)

    def _make_pipeline(self, feed: Any, **kwargs: Any):
        from orderdp_dali.pipelines.cifar import cifar_pipeline

        if feed.sized:
            raise ValueError("progressive resizing (resolution=) needs JPEG samples; CIFAR keeps its 32x32 images")
        return cifar_pipeline(feed, **kwargs)
