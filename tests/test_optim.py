"""The optimizers of a config; the release's LARS rule checked against steps computed by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from orderdp_dali.config import load_config
from orderdp_dali.lars import ReleaseLars
from orderdp_dali.optim import build_optimizer


def _params(*values):
    return [nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in values]


def test_release_lars_matches_a_step_computed_by_hand_bn_and_bias_included():
    """A conv-like weight, a BatchNorm weight and a zero bias, lr 2, wd 0.01, eeta 1e-3, momentum 0.9.

    weight w = [3, 4] (|w| = 5), g = [0.6, 0.8] (|g| = 1):
        trust = 1e-3 * 5 / (1 + 0.01 * 5) = 0.0047619...; decayed g = g + 0.01 w = [0.63, 0.84]
    BatchNorm weight w = [1, 1] (|w| = sqrt 2), g = [30, -40] (|g| = 50):
        trust = 1e-3 * sqrt2 / (50 + 0.01 sqrt2); decayed = [30.01, -39.99], clamped to [10, -10]
    bias w = [0, 0]: |w| = 0, so trust = 1; g = [0.5, -0.25] stays (0.01 * 0 added).
    Step 1 copies the decayed gradient into the buffer; step 2 uses buf = 0.9 buf + decayed and
    the *current* trust ratio scales the whole step (timm scales the gradient before the buffer).
    """
    weight, bn, bias = _params([3.0, 4.0], [1.0, 1.0], [0.0, 0.0])
    grads = {weight: [0.6, 0.8], bn: [30.0, -40.0], bias: [0.5, -0.25]}
    opt = ReleaseLars([weight, bn, bias], lr=2.0, momentum=0.9, weight_decay=0.01)

    def run_step():
        for p, g in grads.items():
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()

    run_step()
    t_w = 1e-3 * 5 / (1 + 0.05)
    w1 = [3 - 2 * t_w * 0.63, 4 - 2 * t_w * 0.84]
    t_bn = 1e-3 * math.sqrt(2) / (50 + 0.01 * math.sqrt(2))
    bn1 = [1 - 2 * t_bn * 10, 1 - 2 * t_bn * -10]
    bias1 = [0 - 2 * 1 * 0.5, 0 - 2 * 1 * -0.25]
    assert weight.tolist() == pytest.approx(w1, rel=1e-12)
    assert bn.tolist() == pytest.approx(bn1, rel=1e-12)
    assert bias.tolist() == pytest.approx(bias1, rel=1e-12)

    run_step()  # second step: buffers and the new weights' trust ratios
    nw = math.hypot(*w1)
    d_w = [0.6 + 0.01 * w1[0], 0.8 + 0.01 * w1[1]]
    buf_w = [0.9 * 0.63 + d_w[0], 0.9 * 0.84 + d_w[1]]
    t_w2 = 1e-3 * nw / (1 + 0.01 * nw)
    assert weight.tolist() == pytest.approx([w1[i] - 2 * t_w2 * buf_w[i] for i in range(2)], rel=1e-12)
    nb = math.hypot(*bias1)  # the bias is no longer 0: now adapted and decayed
    d_b = [0.5 + 0.01 * bias1[0], -0.25 + 0.01 * bias1[1]]
    t_b2 = 1e-3 * nb / (math.hypot(0.5, 0.25) + 0.01 * nb)
    expect = [bias1[i] - 2 * t_b2 * (0.9 * [0.5, -0.25][i] + d_b[i]) for i in range(2)]
    assert bias.tolist() == pytest.approx(expect, rel=1e-12)


def test_release_lars_clamps_the_trust_ratio_at_50():
    (w,) = _params([1000.0, 0.0])
    w.grad = torch.tensor([1e-3, 0.0], dtype=torch.float64)  # trust 1e-3 * 1000 / 1e-3 = 1000 -> 50
    ReleaseLars([w], lr=0.1).step()
    assert w.tolist() == pytest.approx([1000.0 - 0.1 * 50 * 1e-3, 0.0], rel=1e-12)


def test_a_group_without_lars_is_neither_adapted_nor_decayed_but_clamped():
    weight, bn = _params([3.0, 4.0], [1.0, 2.0])
    weight.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    bn.grad = torch.tensor([20.0, 0.5], dtype=torch.float64)
    ReleaseLars([{"params": [weight]}, {"params": [bn], "lars": False, "weight_decay": 0.0}],
                lr=0.5, weight_decay=0.01).step()
    assert bn.tolist() == pytest.approx([1.0 - 0.5 * 10.0, 2.0 - 0.5 * 0.5], rel=1e-12)


def test_timm_lars_is_a_different_rule():
    """Why the release needs its own optimizer: on the same two steps timm's Lars lands elsewhere."""
    import timm.optim

    out = []
    for make in (lambda ps: ReleaseLars(ps, lr=2.0, momentum=0.9, weight_decay=0.01),
                 lambda ps: timm.optim.Lars(ps, lr=2.0, momentum=0.9, weight_decay=0.01, eps=0.0)):
        (w,) = _params([3.0, 4.0])
        opt = make([w])
        for g in ([0.6, 0.8], [-0.3, 0.2]):
            w.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        out.append(w.tolist())
    assert max(abs(a - b) for a, b in zip(*out)) > 1e-4


@pytest.mark.parametrize("kwargs, name", [
    ({"lr": -1.0}, "lr"), ({"momentum": 1.0}, "momentum"), ({"weight_decay": -1e-5}, "weight_decay"),
    ({"trust_coeff": 0.0}, "trust_coeff"), ({"eps": -1.0}, "eps"), ({"grad_clamp": 0.0}, "grad_clamp"),
])
def test_release_lars_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        ReleaseLars(_params([1.0]), **kwargs)


def test_build_optimizer_lars_release_groups(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cfg = load_config(None, [f"data.root={tmp_path}", "optim.name=lars_release", "optim.eps=0"])
    every = build_optimizer(cfg, model)
    assert isinstance(every, ReleaseLars) and [g["lars"] for g in every.param_groups] == [True]
    split = build_optimizer(load_config(None, [f"data.root={tmp_path}", "optim.name=lars_release",
                                               "optim.decay_norm_and_bias=false", "optim.weight_decay=0.01"]), model)
    assert [(g["lars"], g["weight_decay"]) for g in split.param_groups] == [(True, 0.01), (False, 0.0)]
    assert all(p.ndim <= 1 for p in split.param_groups[1]["params"])
