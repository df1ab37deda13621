"""Test-time augmentation for validation: the mean logits of an image and its horizontal mirror.

FFCV's ResNet rungs validate this way (``lr_tta``); it costs a second forward of each
validation batch and usually adds a few tenths of a point of top-1.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["flip_averaged"]


def flip_averaged(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """``(forward(images) + forward(mirrored images)) / 2`` for NCHW ``images`` (mirrored along W).

    Both halves go through ``forward`` as one batch of 2N (one kernel launch per layer on a GPU);
    in eval mode a model's outputs do not depend on what else is in its batch.
    """
    n = images.shape[0]
    logits = forward(torch.cat([images, images.flip(-1)]))
    return (logits[:n] + logits[n:]) / 2
