"""The pruning bookkeeping of a training loop: buffered per-sample losses, merged once per epoch.

``update()`` keeps each batch's loss tensor where it is (on the GPU during GPU training)
and moves nothing to the host, so the training loop never waits for the device because
of it. At the epoch's end :meth:`ScoreUpdates.end_epoch` moves all of them to the host at
once, writes them into the policy's score table and merges the tables of all ranks with
one all-reduce, so every rank chooses the same next plan.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from orderdp_dali.distributed import all_reduce_scores
from orderdp_dali.policies.base import Policy

__all__ = ["ScoreUpdates"]


class ScoreUpdates:
    """Losses recorded for ``policy`` but not yet written into its score table."""

    def __init__(self, policy: Optional[Policy], sync: bool = True) -> None:
        self.policy = policy
        self.sync = sync
        self._pending: List[Tuple[np.ndarray, torch.Tensor]] = []

    def update(self, indices: Any, losses: Any) -> None:
        """Record a batch's unweighted per-sample losses (no device synchronisation)."""
        if self.policy is None:
            raise RuntimeError("update() needs a policy; this iterator has none (evaluation)")
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy() if indices.device.type != "cpu" else indices.numpy()
        idx = np.array(indices, dtype=np.int64, copy=True).reshape(-1)
        loss = losses.detach() if isinstance(losses, torch.Tensor) else torch.as_tensor(np.asarray(losses))
        if loss.numel() != idx.size:
            raise ValueError(f"update() got {idx.size} indices but {loss.numel()} losses")
        self._pending.append((idx, loss.reshape(-1)))

    def flush(self) -> None:
        """Write the recorded losses into the policy's score table (one device-to-host copy)."""
        if not self._pending or self.policy is None:
            self._pending.clear()
            return
        idx = np.concatenate([i for i, _ in self._pending])
        losses = torch.cat([loss.float() for _, loss in self._pending]).cpu().numpy()
        self._pending.clear()
        self.policy.update(idx, losses)

    def end_epoch(self) -> None:
        """Flush, then merge the score tables of all ranks (one all-reduce when distributed)."""
        self.flush()
        if self.policy is not None and self.sync:
            all_reduce_scores(self.policy.scores)

    def clear(self) -> None:
        """Forget the recorded losses (the run continues from a checkpoint instead)."""
        self._pending.clear()
