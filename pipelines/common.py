"""What every plan-fed pipeline shares: backend checks, the ``pipeline_def`` settings, the source.

The image (JPEG files) and CIFAR (array rows) pipelines differ only in their graphs; both
take each planned batch from a batch-mode ``fn.external_source`` whose callback
(:class:`~orderdp_dali.plan_source.BatchFeed`) runs in the training process, and both
emit (images, labels, indices, weights), labels and weights on the images' device.
"""
from __future__ import annotations

from typing import Callable, Optional

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

__all__ = ["DTYPES", "batch_source", "plan_pipeline", "plan_pipeline_def", "to_device"]

DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}


def plan_pipeline_def(
    *,
    batch_size: int,
    device: str,
    device_id: Optional[int],
    num_threads: int,
    seed: int,
    prefetch_queue_depth: int,
) -> Callable:
    """Check the backend arguments and return the ``pipeline_def`` decorator for them.

    Checkpointing is on (DALI: no cost to the pipeline's speed), so the one pipeline of a
    run can be saved between epochs and rebuilt exactly (``checkpoint=`` at construction).

    Raises:
        ValueError: ``device`` not ``"cpu"``/``"gpu"``, or ``"gpu"`` without ``device_id``.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"Invalid device: {device!r} (choose 'cpu' or 'gpu')")
    if device == "gpu" and device_id is None:
        raise ValueError("device='gpu' needs a device_id")
    return pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if device == "gpu" else None,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
        enable_checkpointing=True,
    )


def batch_source(feed: Callable, sample_layout: Optional[str] = None, sized: bool = False):
    """The feed's batch outputs: (uint8 samples, int64 labels, int64 indices, float weights),
    plus float ``[height, width]`` output sizes per sample when ``sized`` (progressive resizing).

    ``feed(batch_info)`` runs in the training process (no worker processes) and returns
    whole batches; the last one of a pass may be smaller than the batch size.
    """
    dtypes = [types.UINT8, types.INT64, types.INT64, types.FLOAT] + ([types.FLOAT] if sized else [])
    kwargs = {} if sample_layout is None else {"layout": [sample_layout] + [""] * (len(dtypes) - 1)}
    return fn.external_source(
        source=feed,
        num_outputs=len(dtypes),
        batch=True,
        batch_info=True,
        parallel=False,
        dtype=dtypes,
        **kwargs,
    )


def to_device(device: str, *outputs):
    """``outputs`` on the GPU for ``device="gpu"`` (DALI copies them), else unchanged."""
    return tuple(o.gpu() for o in outputs) if device == "gpu" else outputs


def plan_pipeline(
    source: Callable,
    transform: Callable,
    *,
    batch_size: int,
    device: str = "cpu",
    device_id: Optional[int] = None,
    num_threads: int = 2,
    seed: int = 0,
    prefetch_queue_depth: int = 2,
    sample_layout: Optional[str] = None,
    checkpoint: Optional[bytes] = None,
    sized: bool = False,
) -> Pipeline:
    """Build (not start) a plan-fed pipeline whose outputs are (images, labels, indices, weights).

    Args:
        source: the batch callback (see :class:`~orderdp_dali.plan_source.BatchFeed`); it runs
            in the training process.
        transform: ``transform(samples) -> images`` inside the pipeline definition: what
            makes normalised CHW images of the source's samples (decoding, augmentation).
        batch_size, device, device_id, num_threads, seed, prefetch_queue_depth: the
            pipeline's settings (see :func:`plan_pipeline_def`).
        sample_layout: the layout of the source's samples (e.g. ``"HWC"`` for arrays).
        checkpoint: DALI's serialized checkpoint (``Pipeline.checkpoint()``) to build from:
            the random operators' state and the source's epoch and iteration are restored.
        sized: the source yields each sample's output size too (progressive resizing), and
            the pipeline calls ``transform(samples, sizes)``.

    Labels and weights come out on the images' device, sample indices on the CPU.
    """

    @plan_pipeline_def(
        batch_size=batch_size,
        device=device,
        device_id=device_id,
        num_threads=num_threads,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
    )
    def _pipeline():
        if sized:
            samples, labels, indices, weights, sizes = batch_source(source, sample_layout, sized=True)
            images = transform(samples, sizes)
        else:
            samples, labels, indices, weights = batch_source(source, sample_layout)
            images = transform(samples)
        labels, weights = to_device(device, labels, weights)
        return images, labels, indices, weights

    return _pipeline() if checkpoint is None else _pipeline(checkpoint=checkpoint)
