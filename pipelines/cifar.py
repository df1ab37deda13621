"""Train and validation pipelines for small in-memory images (CIFAR-10/100, 32x32 RGB).

The batch source yields already-decoded ``HWC`` uint8 images (plus labels, sample indices
and loss weights), so there is no decoder: training applies the CIFAR recipe's
pad-by-4 random crop (a random window of the original size, anchored up to ``pad`` pixels
outside the image, zero-filled) and a horizontal flip, then normalises to ``CHW``.
Evaluation (and ``train=False``) only normalises. Both run on the CPU or the GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Tuple

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from orderdp_dali.pipelines.common import DTYPES, plan_pipeline

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CifarPipelineConfig", "cifar_pipeline"]

# Per-channel statistics of the CIFAR-10 training set, in the 0-255 range of the uint8 images.
CIFAR10_MEAN = (0.4914 * 255, 0.4822 * 255, 0.4465 * 255)
CIFAR10_STD = (0.2470 * 255, 0.2435 * 255, 0.2616 * 255)

@dataclass(frozen=True)
class CifarPipelineConfig:
    """Augmentation and output settings (CIFAR defaults: 32x32, pad 4, flip 0.5)."""

    size: int = 32
    pad: int = 4
    mean: Tuple[float, ...] = CIFAR10_MEAN
    std: Tuple[float, ...] = CIFAR10_STD
    dtype: str = "float32"
    flip_probability: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"Invalid size: {self.size!r} (need an int >= 1)")
        if not isinstance(self.pad, int) or self.pad < 0:
            raise ValueError(f"Invalid pad: {self.pad!r} (need an int >= 0)")
        if self.dtype not in DTYPES:
            raise ValueError(f"Invalid dtype: {self.dtype!r} (choose one of {sorted(DTYPES)})")
        if not 0 <= self.flip_probability <= 1:
            raise ValueError(f"Invalid flip_probability: {self.flip_probability!r}")


def cifar_pipeline(
    source: Callable,
    *,
    train: bool,
    device: str = "cpu",
    config: CifarPipelineConfig = CifarPipelineConfig(),
    **settings: Any,
) -> Pipeline:
    """Build (not start) a pipeline whose outputs are (images, labels, indices, weights).

    Args:
        source: batch callback ``source(BatchInfo) -> (images NHWC uint8, labels, indices,
            weights)`` (see :class:`~orderdp_dali.plan_source.BatchFeed`), run in the
            training process.
        train: random pad-and-crop + flip (True) or normalisation only (False).
        device: ``"gpu"`` (augment on the GPU, needs ``device_id``) or ``"cpu"``.
        settings: ``batch_size`` and the other pipeline settings of
            :func:`~orderdp_dali.pipelines.common.plan_pipeline`.

    Images come out normalised, CHW, ``config.dtype``; labels and weights on the images'
    device, sample indices on the CPU.
    """

    def augment(images):
        if device == "gpu":
            images = images.gpu()
        mirror = 0
        if train:
            if config.pad > 0:
                # Integer anchors are absolute: a size x size window starting up to `pad`
                # pixels before (or after) the image, the outside filled with zeros.
                anchor = fn.random.uniform(values=list(range(-config.pad, config.pad + 1)), shape=[2])
                anchor = fn.cast(anchor, dtype=types.INT32)
                shape = np.array([config.size, config.size], dtype=np.int32)
                images = fn.slice(images, anchor, types.Constant(shape), axis_names="WH", out_of_bounds_policy="pad")
            mirror = fn.random.coin_flip(probability=config.flip_probability)
        return fn.crop_mirror_normalize(
            images,
            mirror=mirror,
            mean=list(config.mean),
            std=list(config.std),
            dtype=DTYPES[config.dtype],
            output_layout="CHW",
        )

    return plan_pipeline(source, augment, device=device, sample_layout="HWC", **settings)
