"""LR schedules as pure functions of progress p = epoch + step / steps_this_epoch."""
from __future__ import annotations

import math

import pytest
import torch

from orderdp_dali.config import ScheduleConfig
from orderdp_dali.lr_schedule import constant_lr, cosine_lr, lr_at, onecycle_lr, progress, set_lr, step_lr


def test_onecycle_endpoints_and_shape():
    lrs = [onecycle_lr(p / 10, 10, 1.0, pct_start=0.3) for p in range(101)]
    assert lrs[0] == pytest.approx(1 / 25)
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 30
    assert lrs[-1] == pytest.approx(1 / 25 / 1e4)
    assert all(a <= b for a, b in zip(lrs[:30], lrs[1:31]))
    assert all(a >= b for a, b in zip(lrs[30:], lrs[31:]))


def torch_onecycle_lrs(epochs, steps, max_lr, pct_start, div_factor, final_div_factor):
    """torch's ``OneCycleLR`` (cosine) LR before each of the ``epochs * steps`` steps, and after the last.

    Ours is a function of progress p = step / steps: it rises over ``[0, pct_start * epochs]``
    and ends at ``p = epochs`` (after the last step). torch ends its first phase at step
    ``pct_start * total_steps - 1`` and reaches its final LR at step ``total_steps - 1``.
    With ``total_steps = T + 1`` and ``pct_start * (T + 1) - 1 = pct_start_ours * T`` the two
    are the same curve, so the comparison below is exact, not "within a step's change".
    """
    total = epochs * steps
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=total + 1, pct_start=(pct_start * total + 1) / (total + 1),
        div_factor=div_factor, final_div_factor=final_div_factor, anneal_strategy="cos", cycle_momentum=False,
    )
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        if len(lrs) <= total:
            opt.step()
            sched.step()
    return lrs


@pytest.mark.parametrize(
    "epochs, steps, pct_start, div_factor, final_div_factor",
    [(4, 250, 0.25, 25.0, 1e4), (3, 40, 0.3, 10.0, 100.0), (5, 7, 0.2, 4.0, 3.0)],
)
def test_onecycle_equals_torch_onecycle_step_by_step(epochs, steps, pct_start, div_factor, final_div_factor):
    expected = torch_onecycle_lrs(epochs, steps, 0.1, pct_start, div_factor, final_div_factor)
    ours = [
        onecycle_lr(progress(i // steps, i % steps, steps), epochs, 0.1, pct_start, div_factor, final_div_factor)
        for i in range(epochs * steps)
    ] + [onecycle_lr(float(epochs), epochs, 0.1, pct_start, div_factor, final_div_factor)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # the comparison has teeth: both curves really go up, then down to max_lr / div / final_div
    assert max(expected) == pytest.approx(0.1) and expected[-1] == pytest.approx(0.1 / div_factor / final_div_factor)
    # and through lr_at, which must pass the schedule's settings on
    cfg = ScheduleConfig(name="onecycle", pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor)
    via_cfg = [lr_at(cfg, 0.1, epochs, i / steps) for i in range(epochs * steps + 1)]
    assert via_cfg == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_cosine_with_warmup():
    assert cosine_lr(0.0, 10, 1.0, warmup=2) == 0.0
    assert cosine_lr(1.0, 10, 1.0, warmup=2) == pytest.approx(0.5)
    assert cosine_lr(2.0, 10, 1.0, warmup=2) == pytest.approx(1.0)
    assert cosine_lr(6.0, 10, 1.0, warmup=2, min_lr=0.1) == pytest.approx(0.55)
    assert cosine_lr(10.0, 10, 1.0, warmup=2, min_lr=0.1) == pytest.approx(0.1)
    assert cosine_lr(0.0, 10, 1.0) == pytest.approx(1.0)


def test_step_and_constant():
    assert [step_lr(p, 1.0, [3, 6], 0.1) for p in (0, 2.99, 3, 5.5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert step_lr(0.5, 1.0, [3], warmup=1) == pytest.approx(0.5)
    assert constant_lr(0.25, 2.0, warmup=1.0) == pytest.approx(0.5)
    assert constant_lr(7.0, 2.0) == 2.0


def test_progress_is_continuous_across_epochs_of_different_lengths():
    """Pruned epochs have different step counts; the schedule must not jump at their borders."""
    cfg = ScheduleConfig(name="onecycle", pct_start=0.25)
    steps_per_epoch = [100, 37, 60, 100]  # e.g. full, pruned, pruned, annealed full
    lrs = [lr_at(cfg, 1.0, 4, progress(e, s, n)) for e, n in enumerate(steps_per_epoch) for s in range(n)]
    jumps = [abs(b - a) for a, b in zip(lrs, lrs[1:])]
    assert max(jumps) < 0.05
    assert lr_at(cfg, 1.0, 4, 4.0) == pytest.approx(1 / 25 / 1e4)
    assert lr_at(cfg, 1.0, 4, 5.0) == lr_at(cfg, 1.0, 4, 4.0)  # clamped past the end


def closed_form(name, base, total, p, warmup, min_lr, milestones, gamma):
    """Each schedule written out directly (independent of the module's helpers)."""
    ramp = p / warmup if warmup > 0 and p < warmup else 1.0
    if name == "cosine":
        if p < warmup:
            return base * ramp
        return min_lr + (base - min_lr) * (1 + math.cos(math.pi * (p - warmup) / (total - warmup))) / 2
    if name == "step":
        return base * gamma ** sum(m <= p for m in milestones) * ramp
    assert name == "constant"
    return base * ramp


@pytest.mark.parametrize("name", ["cosine", "step", "constant"])
def test_lr_at_equals_the_closed_form(name):
    # settings away from the defaults, so a setting that is not passed on changes the result
    warmup, min_lr, milestones, gamma = 1.5, 0.02, (2.0, 5.0), 0.3
    cfg = ScheduleConfig(name=name, warmup_epochs=warmup, min_lr=min_lr, milestones=milestones, gamma=gamma)
    base, total = 0.5, 8
    grid = [i / 8 for i in range(8 * total + 1)]
    got = [lr_at(cfg, base, total, p) for p in grid]
    want = [closed_form(name, base, total, p, warmup, min_lr, milestones, gamma) for p in grid]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert lr_at(cfg, base, total, -1.0) == got[0] and lr_at(cfg, base, total, total + 3) == got[-1]  # clamped


def test_lr_at_spot_values():
    """A few values worked out by hand, one per schedule (base 0.5, 4 epochs, p = 1.5)."""
    def at(name, **kw):
        return lr_at(ScheduleConfig(name=name, **kw), 0.5, 4, 1.5)

    # onecycle, pct_start 0.25: peak at p = 1; p = 1.5 is 1/6 of the way down to 0.5 / 25 / 1e4
    final = 0.5 / 25 / 1e4
    assert at("onecycle") == pytest.approx(final + (0.5 - final) * (1 + math.cos(math.pi / 6)) / 2)
    assert at("onecycle") == pytest.approx(0.466506, abs=1e-6)
    # cosine after 1 warm-up epoch: a sixth of the way down from 0.5 to 0
    assert at("cosine", warmup_epochs=1.0) == pytest.approx(0.25 * (1 + math.cos(math.pi / 6)))
    assert at("cosine", warmup_epochs=2.0) == pytest.approx(0.375)  # still warming up: 0.5 * 1.5 / 2
    assert at("step", milestones=(1.0, 3.0), gamma=0.5) == pytest.approx(0.25)
    assert at("step", milestones=(2.0,)) == pytest.approx(0.5)
    assert at("constant", warmup_epochs=3.0) == pytest.approx(0.25)
    assert at("constant") == 0.5


def test_errors_and_set_lr():
    with pytest.raises(ValueError, match="steps"):
        progress(0, 0, 0)
    with pytest.raises(ValueError, match="Unknown LR schedule"):
        lr_at(type("S", (), {"name": "poly"})(), 1.0, 2, 0.5)
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
