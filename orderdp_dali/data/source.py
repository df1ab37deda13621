"""The one protocol every data source implements, and what its samples answer.

A :class:`DataSource` is one split of a dataset in any format (class folders or a file list,
:class:`~orderdp_dali.data.folder.SampleIndex`; tar shards,
:class:`~orderdp_dali.data.tar.TarIndex`; CIFAR arrays,
:class:`~orderdp_dali.data.cifar.ArrayDataset`). The plan iterator needs nothing else from
it: how many samples, their labels and classes, a fingerprint for checkpoints, the
:class:`Samples` its batch source hands DALI, and which pipeline transform those need. New
formats implement this protocol; nothing subclasses the iterator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol, Tuple

import numpy as np

__all__ = ["TRANSFORMS", "DataSource", "Samples"]

#: What the pipeline does with what a source's samples yield:
#: ``files``: encoded file paths, read with ``fn.io.file.read``, then decoded and augmented;
#: ``encoded``: the encoded images themselves, decoded and augmented;
#: ``arrays``: decoded HWC uint8 pixels, augmented as they are.
TRANSFORMS = ("files", "encoded", "arrays")


class Samples(Protocol):
    """Turns sample indices into what the pipeline's batch source yields, and names a broken one."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def fetch(self, indices: np.ndarray) -> Any:
        """The batch of samples ``indices`` (a list of uint8 arrays, or one stacked array)."""

    def find_broken(self, indices: np.ndarray) -> Optional[Tuple[int, str, str]]:
        """After a pipeline failure: the first of ``indices`` that cannot be read or decoded, as
        (index, where, reason), or None when none is found."""


class DataSource(Protocol):
    """One split: ``len(source)`` samples, sample ``i`` of class ``labels[i]`` (``classes[k]`` names class k).

    Attributes:
        root: the split's folder (for messages).
        classes: class names.
        labels: int64 array of shape (N,).
        fingerprint: identifies the data in checkpoints
            (:func:`~orderdp_dali.data.fingerprints.compare_fingerprints`).
        transform: one of :data:`TRANSFORMS`: the pipeline the samples need.
    """

    root: Path
    classes: Tuple[str, ...]
    labels: np.ndarray
    transform: str

    def __len__(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def make_samples(self) -> Samples:
        """The batch source's samples (built once per iterator, when its pipeline is first built)."""
