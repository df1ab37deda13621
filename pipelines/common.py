"""What every plan-fed pipeline shares: backend checks, the ``pipeline_def`` settings, the source.

The image (JPEG) and CIFAR (array) pipelines differ only in their augmentation graphs; both
are fed per sample by a plan feeder (see :mod:`orderdp_dali.feeder`) running in spawned
worker processes, and both emit (images, labels, indices, weights).
"""
from __future__ import annotations

from typing import Callable, Optional

from nvidia.dali import fn, pipeline_def, types

__all__ = ["plan_pipeline_def", "plan_source"]


def plan_pipeline_def(
    *,
    batch_size: int,
    device: str,
    device_id: Optional[int],
    num_threads: int,
    py_workers: int,
    seed: int,
    prefetch_queue_depth: int,
) -> Callable:
    """Check the backend arguments and return the ``pipeline_def`` decorator for them.

    Raises:
        ValueError: ``device`` not ``"cpu"``/``"gpu"``, ``"gpu"`` without ``device_id``, or
            ``py_workers < 1``.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"Invalid device: {device!r} (choose 'cpu' or 'gpu')")
    if device == "gpu" and device_id is None:
        raise ValueError("device='gpu' needs a device_id")
    if py_workers < 1:
        raise ValueError(f"Invalid py_workers: {py_workers!r} (need >= 1)")
    return pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        seed=seed,
        py_num_workers=py_workers,
        py_start_method="spawn",
        prefetch_queue_depth=prefetch_queue_depth,
    )


def plan_source(source: Callable, sample_layout: Optional[str] = None):
    """The feeder's four per-sample outputs: (uint8 sample, int64 label, int64 index, float weight)."""
    kwargs = {} if sample_layout is None else {"layout": [sample_layout, "", "", ""]}
    return fn.external_source(
        source=source,
        num_outputs=4,
        batch=False,
        parallel=True,
        dtype=[types.UINT8, types.INT64, types.INT64, types.FLOAT],
        **kwargs,
    )
