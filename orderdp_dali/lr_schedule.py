"""Learning-rate schedules as pure functions of training progress, measured in epochs.

Progress is ``p = epoch + step / steps_this_epoch`` (see :func:`progress`), a float in
``[0, num_epochs]``. With dynamic pruning every epoch can have a different number of steps
(OrderDP keeps ~60%, InfoBatch switches to full data near the end), so a schedule built
for a fixed ``steps_per_epoch x epochs`` (torch's ``OneCycleLR``) would drift, end early
or run past its end. A function of ``p`` stays exact whatever each epoch's plan length is,
needs no state in checkpoints, and is the same on every rank.

The training loop calls ``set_lr(optimizer, lr_at(cfg.schedule, cfg.optim.lr, epochs, p))``
before each step.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Sequence

__all__ = [
    "constant_lr",
    "cosine_lr",
    "lr_at",
    "onecycle_lr",
    "progress",
    "set_lr",
    "step_lr",
]


def progress(epoch: int, step: int, steps: int) -> float:
    """``epoch + step / steps``: where step ``step`` (0-based) of ``epoch`` starts, in epochs."""
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps!r} (need >= 1)")
    return epoch + step / steps


def _cos_anneal(start: float, end: float, frac: float) -> float:
    """From ``start`` (frac 0) to ``end`` (frac 1) along half a cosine."""
    frac = min(max(frac, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


def _warmup(p: float, warmup: float, lr: float) -> float:
    """Linear warm-up from 0 at ``p = 0`` to ``lr`` at ``p = warmup``."""
    return lr * p / warmup if warmup > 0 and p < warmup else lr


def onecycle_lr(
    p: float,
    total: float,
    max_lr: float,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """Two-phase one-cycle (the shape of torch's ``OneCycleLR`` with cosine annealing).

    Rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of
    training, then falls to ``max_lr / div_factor / final_div_factor`` at ``p = total``.
    """
    initial = max_lr / div_factor
    final = initial / final_div_factor
    peak = pct_start * total
    if p < peak:
        return _cos_anneal(initial, max_lr, p / peak)
    return _cos_anneal(max_lr, final, (p - peak) / max(total - peak, 1e-12))


def cosine_lr(p: float, total: float, base_lr: float, warmup: float = 0.0, min_lr: float = 0.0) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` epochs, then cosine decay to ``min_lr`` at ``total``."""
    if warmup > 0 and p < warmup:
        return _warmup(p, warmup, base_lr)
    return _cos_anneal(base_lr, min_lr, (p - warmup) / max(total - warmup, 1e-12))


def step_lr(p: float, base_lr: float, milestones: Sequence[float], gamma: float = 0.1, warmup: float = 0.0) -> float:
    """``base_lr * gamma ** k`` where ``k`` milestones (in epochs) are ``<= p``; optional linear warm-up."""
    return _warmup(p, warmup, base_lr * gamma ** bisect.bisect_right(list(milestones), p))


def constant_lr(p: float, base_lr: float, warmup: float = 0.0) -> float:
    """``base_lr`` after an optional linear warm-up."""
    return _warmup(p, warmup, base_lr)


def lr_at(schedule: Any, base_lr: float, total_epochs: int, p: float) -> float:
    """The LR at progress ``p`` for a :class:`~orderdp_dali.config.ScheduleConfig` (``base_lr``: the peak)."""
    p = min(max(float(p), 0.0), float(total_epochs))
    name = schedule.name
    if name == "onecycle":
        return onecycle_lr(p, total_epochs, base_lr, schedule.pct_start, schedule.div_factor, schedule.final_div_factor)
    if name == "cosine":
        return cosine_lr(p, total_epochs, base_lr, schedule.warmup_epochs, schedule.min_lr)
    if name == "step":
        return step_lr(p, base_lr, schedule.milestones, schedule.gamma, schedule.warmup_epochs)
    if name == "constant":
        return constant_lr(p, base_lr, schedule.warmup_epochs)
    raise ValueError(f"Unknown LR schedule {name!r}; choose onecycle, cosine, step or constant")


def set_lr(optimizer: Any, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
