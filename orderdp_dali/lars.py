"""The research release's LARS rule, for recipes that must reproduce its runs exactly.

timm's :class:`timm.optim.Lars` scales the gradient by the trust ratio *before* the momentum
buffer, clamps nothing, and the configs use it with BatchNorm and biases left out. The
release's own ``lars.py`` (both its ``cifar/`` and ``imagenet/`` copies) differs on every
point, so no timm option reproduces it:

* the momentum buffer accumulates the decayed, clamped gradient ``clamp(g + wd * w, -10, 10)``
  (no dampening; the first step copies it), and the *current* trust ratio scales the step:
  ``w -= lr * trust * buf``;
* ``trust = trust_coeff * |w| / (|g| + wd * |w| + eps)``, 1 where ``|w|`` or ``|g|`` is 0,
  clamped to ``[0, 50]``;
* it adapts and decays every parameter, BatchNorm weights and biases included, unless a
  group says ``lars=False`` (then: no trust ratio, no decay, the clamp still applies).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

__all__ = ["ReleaseLars"]


class ReleaseLars(torch.optim.Optimizer):
    """LARS as the OrderDP release implements it (see the module docstring for the rule).

    Args:
        params: parameters or parameter groups; a group may set ``lars=False`` to skip the
            trust ratio and the weight decay (the release's ``bn_bias_separately``).
        lr: learning rate.
        momentum: momentum factor (the release's OneCycle schedule overrides it every step).
        weight_decay: L2 penalty added to the gradient of adapted parameters.
        trust_coeff: the release's ``eeta``.
        eps: added to the trust ratio's denominator (the release: 0).
        trust_clamp: upper bound of the trust ratio (the release: 50).
        grad_clamp: each element of the decayed gradient is clamped to ``[-grad_clamp, grad_clamp]``
            (the release: 10).

    Raises:
        ValueError: an argument out of range, with its value.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        trust_coeff: float = 1e-3,
        eps: float = 0.0,
        trust_clamp: float = 50.0,
        grad_clamp: float = 10.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid lr: {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: {weight_decay}")
        if not trust_coeff > 0.0:
            raise ValueError(f"Invalid trust_coeff: {trust_coeff}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps}")
        if not trust_clamp > 0.0:
            raise ValueError(f"Invalid trust_clamp: {trust_clamp}")
        if not grad_clamp > 0.0:
            raise ValueError(f"Invalid grad_clamp: {grad_clamp}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coeff=trust_coeff, eps=eps,
                        trust_clamp=trust_clamp, grad_clamp=grad_clamp, lars=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One update of every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                scale = group["lr"]
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = group["trust_coeff"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
                    # a tensor, not .item() as the release has it: no device sync per parameter
                    scale = trust.clamp(0.0, group["trust_clamp"]) * group["lr"]
                    if wd != 0:
                        grad = grad.add(p, alpha=wd)
                grad = grad.clamp(-group["grad_clamp"], group["grad_clamp"])
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone().detach()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    grad = state["momentum_buffer"]
                if isinstance(scale, torch.Tensor):
                    p.addcmul_(grad, scale, value=-1.0)
                else:
                    p.add_(grad, alpha=-scale)
        return loss
