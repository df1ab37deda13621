"""Learning-rate schedules as pure functions of training progress, measured in epochs.

Progress is ``p = epoch + step / steps_this_epoch`` (see :func:`progress`), a float in
``[0, num_epochs]``. With dynamic pruning every epoch can have a different number of steps
(OrderDP keeps ~60%, InfoBatch switches to full data near the end), so a schedule built
for a fixed ``steps_per_epoch x epochs`` (torch's ``OneCycleLR``) would drift, end early
or run past its end. A function of ``p`` stays exact whatever each epoch's plan length is,
needs no state in checkpoints, and is the same on every rank.

The training loop calls :func:`schedule_at` before each step and sets the LR (and, with
``schedule.cycle_momentum``, the momentum) it gives.

Reproducing torch exactly (``schedule.torch_steps``): the research release rebuilds torch's
``OneCycleLR(steps_per_epoch=len(loader), epochs=E, last_epoch=e * len(loader) - 1)`` at
the start of every epoch ``e``, so step ``i`` of an epoch of ``L`` steps runs at torch's
step ``e * L + i`` of a ``E * L``-step cycle, whose warm-up ends at step
``pct_start * E * L - 1``. That is still a pure function of (epoch, step, steps this
epoch); :func:`onecycle_torch` computes it with torch's own arithmetic (a phase boundary one
step earlier than ``p = pct_start * E``).
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Optional, Sequence, Tuple

__all__ = [
    "constant_lr",
    "cosine_lr",
    "lr_at",
    "onecycle_lr",
    "onecycle_momentum",
    "onecycle_torch",
    "progress",
    "schedule_at",
    "set_lr",
    "set_momentum",
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


def onecycle_momentum(p: float, total: float, pct_start: float = 0.25, base: float = 0.85, peak: float = 0.95) -> float:
    """Momentum mirroring :func:`onecycle_lr`: ``peak`` down to ``base`` while the LR rises, back up after."""
    rise = pct_start * total
    if p < rise:
        return _cos_anneal(peak, base, p / rise)
    return _cos_anneal(base, peak, (p - rise) / max(total - rise, 1e-12))


def onecycle_torch(
    step_num: int,
    total_steps: int,
    max_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
) -> Tuple[float, float]:
    """(LR, momentum) of torch's ``OneCycleLR`` (cosine, two phases) at step ``step_num`` of ``total_steps``.

    The same phase arithmetic as torch: the warm-up ends at step ``pct_start * total_steps - 1``,
    the cycle at ``total_steps - 1``; momentum falls from ``max_momentum`` to ``base_momentum``
    while the LR rises and climbs back while it falls.
    """
    if total_steps < 2:
        raise ValueError(f"Invalid total_steps: {total_steps!r} (need >= 2)")
    initial = max_lr / div_factor
    final = initial / final_div_factor
    rise_end = float(pct_start * total_steps) - 1
    if rise_end <= 0:
        raise ValueError(
            f"pct_start={pct_start} of {total_steps} steps leaves no warm-up step (torch's OneCycleLR divides by zero)"
        )
    step_num = min(max(int(step_num), 0), total_steps - 1)
    if step_num <= rise_end:
        frac = step_num / rise_end
        return _cos_anneal(initial, max_lr, frac), _cos_anneal(max_momentum, base_momentum, frac)
    frac = (step_num - rise_end) / (total_steps - 1 - rise_end)
    return _cos_anneal(max_lr, final, frac), _cos_anneal(base_momentum, max_momentum, frac)


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


def schedule_at(
    schedule: Any, base_lr: float, total_epochs: int, epoch: int, step: int, steps: int
) -> Tuple[float, Optional[float]]:
    """(LR, momentum or None) for step ``step`` of ``steps`` in ``epoch``, as ``schedule`` says.

    Momentum is None unless ``schedule.cycle_momentum`` (onecycle only): then the loop sets it
    in place of ``optim.momentum``, as torch's ``OneCycleLR`` does. ``schedule.torch_steps``
    gives torch's step arithmetic for a cycle of ``total_epochs * steps`` steps
    (:func:`onecycle_torch`); otherwise both are functions of ``progress(epoch, step, steps)``.
    """
    p = progress(epoch, step, steps)
    cycle = schedule.name == "onecycle" and schedule.cycle_momentum
    if schedule.name == "onecycle" and schedule.torch_steps:
        lr, momentum = onecycle_torch(
            epoch * steps + step, total_epochs * steps, base_lr, schedule.pct_start, schedule.div_factor,
            schedule.final_div_factor, schedule.base_momentum, schedule.max_momentum,
        )
        return lr, (momentum if cycle else None)
    lr = lr_at(schedule, base_lr, total_epochs, p)
    if not cycle:
        return lr, None
    p = min(max(p, 0.0), float(total_epochs))
    return lr, onecycle_momentum(p, total_epochs, schedule.pct_start, schedule.base_momentum, schedule.max_momentum)


def set_momentum(optimizer: Any, momentum: float) -> None:
    """Set ``momentum`` on every parameter group: ``momentum`` (SGD, LARS) or the first of ``betas`` (LAMB),
    as torch's ``OneCycleLR`` does."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum


def set_lr(optimizer: Any, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
