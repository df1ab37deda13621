"""Mixup / CutMix of training batches (timm's :class:`~timm.data.Mixup`) and the per-sample loss
that feeds the pruning scores.

**The per-sample loss with mixing.** timm pairs sample ``i`` of a batch of B with sample
``j = B - 1 - i`` (the batch reversed). Sample ``i``'s input becomes ``lam_i * x_i + (1 - lam_i)
* x_j`` (Mixup) or ``x_i`` with a box of ``x_j`` pasted in (CutMix, ``lam_i`` = the share of
``x_i`` left), and its target ``t_i = lam_i * s(y_i) + (1 - lam_i) * s(y_j)``, where ``s`` is the
one-hot label smoothed by ``train.label_smoothing``. Sample ``i``'s loss is the cross-entropy
against its own mixed target::

    l_i = -sum_c t_ic * log softmax(z_i)_c = lam_i * CE_s(z_i, y_i) + (1 - lam_i) * CE_s(z_i, y_j)

That one number is used twice, as without mixing: weighted by the plan's ``weight_i`` in the
mean that is back-propagated, and recorded unweighted as sample ``i``'s score (its "most recent
loss" for OrderDP and InfoBatch). It is the loss the model was trained on for the input that
carries sample ``i``'s index; where the input was not mixed (``lam_i = 1``) it is exactly the
label-smoothed cross-entropy of an unmixed run. Its price: a mixed score also depends on the
partner and on ``lam_i``, so it is noisier than an unmixed one, and higher on average (a
mixed input is harder), which score-ranking policies see as more "hard" samples while
mixing is on.

**Randomness.** timm draws lambda, the Mixup/CutMix switch and the boxes from numpy's global
RNG. :class:`BatchMixer` gives it a private stream instead (numpy's global state is swapped in
and out around each call, through ``np.random.get_state``/``set_state``), seeded from
``(seed, rank, epoch)`` at each epoch's start: the mixing of an epoch is the same whether the
run was resumed or not, and code that uses the global RNG neither disturbs it nor is disturbed.

**Odd batches.** timm mixes batches of even size only. A batch of odd size (a plan's last,
shorter batch) mixes its first B - 1 samples and trains the last one unmixed (``lam = 1``).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BatchMixer", "build_mixer", "mixed_losses"]


class BatchMixer:
    """Mixes each training batch in place and returns its soft targets (see the module docstring).

    Args:
        num_classes: the model's output width (the targets' width).
        mixup_alpha, cutmix_alpha, prob, switch_prob, mode, correct_lam: as timm's ``Mixup``.
        label_smoothing: smoothing of the mixed targets.
        seed, rank: seed the private RNG per epoch with ``(seed, rank, epoch)``.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, mode: str = "batch", correct_lam: bool = True,
                 label_smoothing: float = 0.0, seed: int = 0, rank: int = 0) -> None:
        from timm.data import Mixup

        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("Invalid mixing: mixup_alpha or cutmix_alpha must be > 0")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self._mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                            mode=mode, correct_lam=correct_lam, label_smoothing=label_smoothing,
                            num_classes=num_classes)
        self._seed, self._rank = int(seed), int(rank)
        self._rng_state: Any = None
        self.begin_epoch(0)

    def begin_epoch(self, epoch: int) -> None:
        """Seed this epoch's mixing from ``(seed, rank, epoch)``: a resumed epoch mixes as the original."""
        self._rng_state = np.random.RandomState([self._seed % 2**32, self._rank, int(epoch)]).get_state()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``images`` (N, C, H, W) mixed in place, and the (N, num_classes) float32 mixed targets."""
        even = images.shape[0] - images.shape[0] % 2
        targets = _smoothed_one_hot(labels, self.num_classes, self.label_smoothing)
        if even == 0:
            return images, targets
        outer = np.random.get_state()
        np.random.set_state(self._rng_state)
        try:
            _, mixed = self._mixup(images[:even], labels[:even])  # mixes the view, so `images`, in place
        finally:
            self._rng_state = np.random.get_state()
            np.random.set_state(outer)
        targets[:even] = mixed.to(targets.dtype)
        return images, targets


def _smoothed_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """The unmixed targets: one-hot labels smoothed as timm (and ``F.cross_entropy``) smooth them."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def mixed_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of ``logits`` against soft ``targets`` (each row a distribution): the
    loss of each sample against its own mixed target, shape (N,)."""
    return F.cross_entropy(logits, targets, reduction="none")


def build_mixer(cfg: Any, num_classes: int, rank: int) -> Optional[BatchMixer]:
    """The mixer ``cfg.train.mixup`` asks for, or None while both alphas are 0 (mixing off)."""
    m = cfg.train.mixup
    if m.mixup_alpha <= 0 and m.cutmix_alpha <= 0:
        return None
    return BatchMixer(num_classes, mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob,
                      switch_prob=m.switch_prob, mode=m.mode, correct_lam=m.correct_lam,
                      label_smoothing=cfg.train.label_smoothing, seed=cfg.train.seed, rank=rank)
