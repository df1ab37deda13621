"""The optimizer of a training config: SGD (torch), LARS and LAMB (timm), or the release's LARS.

One place decides how parameters are grouped (``optim.decay_norm_and_bias``) and which
implementation a name means, so the training loop and the tests build the same thing.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from orderdp_dali.config import Config
from orderdp_dali.lars import ReleaseLars

__all__ = ["build_optimizer"]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD, LARS, LAMB or the release's LARS (``lars_release``) over ``model``'s parameters.

    With ``decay_norm_and_bias=false`` 1-D parameters (norm weights, biases) get no weight
    decay and no LARS adaptation; with ``true`` (the release's rule) every parameter gets both.
    """
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.decay_norm_and_bias:
        groups: List[Dict[str, Any]] = [{"params": params, "weight_decay": o.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "lars_release":
        if not o.decay_norm_and_bias:
            groups[1]["lars"] = False  # the release's bn_bias_separately: neither adapted nor decayed
        return ReleaseLars(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           trust_coeff=o.trust_coeff, eps=o.eps)
    import timm.optim

    if o.name == "lars":
        return timm.optim.Lars(
            groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, trust_coeff=o.trust_coeff, eps=o.eps
        )
    # LAMB: gradient clipping is the loop's job (optim.max_grad_norm), not done twice.
    return timm.optim.Lamb(
        groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, max_grad_norm=None
    )
