"""Progressive resizing: the training crop of each epoch, a pure function of the epoch.

FFCV's rule (``ffcv-imagenet``'s ``get_resolution``): ``start_res`` up to ``start_epoch``,
then a linear ramp to ``end_res`` at ``end_epoch``, rounded to a multiple of ``step``, then
``end_res``. Because the size depends on nothing but the epoch, it is decided together with
the epoch's plan, every rank computes the same one, and a resumed run continues the ramp.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np

__all__ = ["resolution_for_epoch", "resolution_schedule"]


def resolution_for_epoch(epoch: int, cfg: Any) -> int:
    """The training crop (pixels, square) of ``epoch`` under ``cfg`` (a
    :class:`~orderdp_dali.config.ProgressiveConfig`: ``start_res``, ``end_res``, ``start_epoch``,
    ``end_epoch``, ``step``).

    ``np.interp`` clamps outside ``[start_epoch, end_epoch]``, and both ends are multiples of
    ``step`` (the config checks it), so the ends come out exactly. Ties round half to even,
    as FFCV's ``np.round`` does.
    """
    if epoch < 0:
        raise ValueError(f"Invalid epoch: {epoch!r} (need an int >= 0)")
    res = np.interp(epoch, [cfg.start_epoch, cfg.end_epoch], [cfg.start_res, cfg.end_res])
    return int(np.round(res / cfg.step)) * int(cfg.step)


def resolution_schedule(cfg: Any, epochs: int) -> List[int]:
    """The crop of every epoch ``0 .. epochs-1`` (for logs, docs and tests)."""
    return [resolution_for_epoch(e, cfg) for e in range(epochs)]
