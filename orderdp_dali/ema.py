"""An exponential moving average (EMA) of a model's weights, counted in optimizer steps and resumable.

timm's :class:`~timm.utils.ModelEmaV3` does the averaging (parameters and buffers, one
``foreach`` lerp per update); :class:`WeightEma` adds what a resumable run needs around it:
an update every ``every`` optimizer steps, counted over the whole run, and a ``state_dict``
holding the averaged weights and that count, so a resumed run's EMA is bit for bit the one an
uninterrupted run would have.

Distributed runs keep an EMA on every rank, built from the same initial weights. DDP keeps the
parameters equal on all ranks, so the averaged parameters stay equal without a collective; the
BatchNorm buffers each rank averages are its own, and before validating the loop gives every
rank rank 0's (as it does for the raw model), which is also the EMA rank 0 checkpoints. Keeping
it only on rank 0 would leave the other ranks nothing to validate their shard of the
validation split with.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

__all__ = ["WeightEma"]

EMA_STATE_VERSION = 1


class WeightEma:
    """EMA of ``model``'s state (weights and buffers), updated every ``every`` optimizer steps.

    ``ema = decay * ema + (1 - decay) * weights`` at each update; the first is made after
    ``every`` steps from weights equal to ``model``'s at construction.

    Args:
        model: the bare (not DDP-wrapped) model; its state is copied.
        decay: the average's decay per update, in [0, 1).
        every: update after every N-th optimizer step, N >= 1.
    """

    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        from timm.utils import ModelEmaV3

        if not 0.0 <= decay < 1.0:
            raise ValueError(f"Invalid EMA decay: {decay} (need 0 <= decay < 1)")
        if every < 1:
            raise ValueError(f"Invalid EMA update interval: {every} (need >= 1)")
        self.every = int(every)
        self.steps = 0  # optimizer steps seen over the whole run (updates made: steps // every)
        self._ema = ModelEmaV3(model, decay=decay)

    @property
    def module(self) -> nn.Module:
        """The averaged model (in eval mode): validate it as the raw model."""
        return self._ema.module

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Count one optimizer step of ``model`` (bare, as at construction); average every ``every``-th."""
        self.steps += 1
        if self.steps % self.every == 0:
            self._ema.update(model)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start the average afresh from ``model``'s weights (an EMA switched on at a resume)."""
        self._ema.set(model)

    def state_dict(self) -> Dict[str, Any]:
        return {"version": EMA_STATE_VERSION, "steps": self.steps, "every": self.every,
                "module": self._ema.module.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the averaged weights and the step count (the interval is the config's: a change
        of ``every`` on resume applies from the next step)."""
        if int(state.get("version", -1)) != EMA_STATE_VERSION:
            raise ValueError(f"EMA state version {state.get('version')!r}, expected {EMA_STATE_VERSION}")
        self._ema.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
