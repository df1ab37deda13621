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


def test_onecycle_matches_torch_for_a_fixed_epoch_length():
    epochs, steps = 4, 250
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, epochs=epochs, steps_per_epoch=steps, pct_start=0.25, cycle_momentum=False
    )
    for e in range(epochs):
        for s in range(steps):
            ours = onecycle_lr(progress(e, s, steps), epochs, 0.1, pct_start=0.25)
            # torch places its phase boundaries one step early; agree to ~one step's change
            assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=0.02, abs=1e-4)
            opt.step()
            sched.step()


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


@pytest.mark.parametrize("name", ["onecycle", "cosine", "step", "constant"])
def test_lr_at_dispatch(name):
    cfg = ScheduleConfig(name=name, warmup_epochs=1.0, milestones=(2.0,))
    lr = lr_at(cfg, 0.5, 4, 1.5)
    assert 0 < lr <= 0.5 and math.isfinite(lr)


def test_errors_and_set_lr():
    with pytest.raises(ValueError, match="steps"):
        progress(0, 0, 0)
    with pytest.raises(ValueError, match="Unknown LR schedule"):
        lr_at(type("S", (), {"name": "poly"})(), 1.0, 2, 0.5)
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "weight_decay": 0.0}], lr=1.0)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
