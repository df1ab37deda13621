"""LR schedules as pure functions of progress p = epoch + step / steps_this_epoch."""
from __future__ import annotations

import dataclasses
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


# ------------------------------------------------- the release's OneCycle, exactly
def _release_onecycle(steps_per_epoch, epochs, max_lr, *, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    """(lr, momentum) at every step, as the OrderDP release drives torch's OneCycleLR: a scheduler
    rebuilt at each epoch with ``steps_per_epoch=len(loader)`` and ``last_epoch=e * len(loader) - 1``,
    stepped after each optimizer step."""
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr, momentum=0.9)
    kw = dict(epochs=epochs, pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, steps_per_epoch=steps_per_epoch[0], **kw)
    out = []
    for e, steps in enumerate(steps_per_epoch):
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr, steps_per_epoch=steps, last_epoch=e * steps - 1, **kw)
        for _ in range(steps):
            group = opt.param_groups[0]
            out.append((group["lr"], group["momentum"]))
            opt.step()
            sched.step()
    return out


@pytest.mark.parametrize("config", ["imagenet_r50_orderdp", "imagenet_r18_orderdp", "cifar100_r50_infobatch"])
@pytest.mark.parametrize("steps_per_epoch", [(1251, 1251, 1251), (1251, 1001, 1100)])
def test_reference_schedule_equals_torch_onecycle_for_three_epochs(config, steps_per_epoch, tmp_path):
    """LR and momentum of the reference configs equal torch's OneCycleLR to 1e-9 at every step of epochs 0-2.

    "Equal" for a plan whose length changes between epochs: step i of epoch e, whose plan has L_e
    steps, matches torch's scheduler built as the release builds one at every epoch start,
    OneCycleLR(steps_per_epoch=L_e, epochs=E, last_epoch=e * L_e - 1), i.e. torch's step
    e * L_e + i of a cycle of E * L_e steps. Our L_e is this epoch's true length (known before the
    epoch); the release's len(loader) is the previous epoch's where the sampler changes size, which
    we do not reproduce.
    """
    from pathlib import Path

    from orderdp_dali.config import load_config
    from orderdp_dali.lr_schedule import schedule_at

    cfg = load_config(Path(__file__).parent.parent / "configs" / "reference" / f"{config}.yaml",
                      [f"data.root={tmp_path}"])
    expected = _release_onecycle(steps_per_epoch, cfg.train.epochs, cfg.optim.lr)
    got = [schedule_at(cfg.schedule, cfg.optim.lr, cfg.train.epochs, e, i, steps)
           for e, steps in enumerate(steps_per_epoch) for i in range(steps)]
    assert len(got) == len(expected)
    assert max(abs(g[0] - x[0]) for g, x in zip(got, expected)) < 1e-9
    assert max(abs(g[1] - x[1]) for g, x in zip(got, expected)) < 1e-9
    # progress-based OneCycle (our default arithmetic) is close to torch's but not equal: torch_steps matters
    progress_based = dataclasses.replace(cfg.schedule, torch_steps=False)
    loose = [schedule_at(progress_based, cfg.optim.lr, cfg.train.epochs, e, i, steps)
             for e, steps in enumerate(steps_per_epoch) for i in range(steps)]
    assert max(abs(g[0] - x[0]) for g, x in zip(loose, expected)) > 1e-9


def test_torch_onecycle_whole_cycle_and_momentum_ends():
    from orderdp_dali.lr_schedule import onecycle_torch

    expected = _release_onecycle((8,) * 5, 5, 0.5)
    got = [onecycle_torch(e * 8 + i, 40, 0.5) for e in range(5) for i in range(8)]  # warm-up ends at step 11
    assert max(abs(a - b) for g, x in zip(got, expected) for a, b in zip(g, x)) < 1e-12
    assert got[0] == pytest.approx((0.5 / 25, 0.95)) and got[-1] == pytest.approx((0.5 / 25 / 1e4, 0.95))
    assert min(m for _, m in got) == pytest.approx(0.85)
    with pytest.raises(ValueError, match="no warm-up step"):
        onecycle_torch(0, 3, 0.5, pct_start=0.3)


def test_cycle_momentum_follows_progress_without_torch_steps_and_sets_betas():
    import torch

    from orderdp_dali.config import ScheduleConfig
    from orderdp_dali.lr_schedule import schedule_at, set_momentum

    sched = ScheduleConfig(name="onecycle", pct_start=0.25, cycle_momentum=True)
    assert schedule_at(sched, 1.0, 4, 0, 0, 10)[1] == pytest.approx(0.95)
    assert schedule_at(sched, 1.0, 4, 1, 0, 10)[1] == pytest.approx(0.85)  # the LR's peak
    expect = 0.85 + 0.1 * 0.5 * (1 - math.cos(math.pi * 2.5 / 3))  # 2.5 of the 3 falling epochs
    assert schedule_at(sched, 1.0, 4, 3, 5, 10)[1] == pytest.approx(expect)
    assert schedule_at(ScheduleConfig(name="onecycle"), 1.0, 4, 1, 0, 10)[1] is None  # off by default
    lamb = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], betas=(0.9, 0.999))
    set_momentum(lamb, 0.88)
    assert lamb.param_groups[0]["betas"] == (0.88, 0.999)
