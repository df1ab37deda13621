"""Full-data training: every sample once per epoch, in a fresh random order (the baseline)."""
from __future__ import annotations

import numpy as np

from orderdp_dali.plan import EpochPlan, unit_weights
from orderdp_dali.policies.base import Policy, check_epoch, register_policy

__all__ = ["FullData", "full_plan"]


def full_plan(epoch: int, num_samples: int, rng: np.random.Generator) -> EpochPlan:
    """All ``num_samples`` samples in a random order drawn from ``rng``, weights 1."""
    return EpochPlan(epoch, rng.permutation(num_samples), unit_weights(num_samples))


@register_policy
class FullData(Policy):
    """No pruning: all samples in a fresh random order each epoch; the baseline on the same code path.

    Scores are still recorded by :meth:`update` (cheap), so a run can switch policy later
    or log loss statistics, but they never influence the plan.
    """

    name = "full"

    def prunes(self, epoch: int) -> bool:
        """Never: every epoch trains on all samples."""
        check_epoch(epoch)
        return False

    def select(self, epoch: int) -> EpochPlan:
        """All samples, shuffled by the epoch's generator; weights 1."""
        return full_plan(epoch, self.num_samples, self.rng(epoch))

    def expected_size(self, epoch: int) -> int:
        """Always ``num_samples``."""
        check_epoch(epoch)
        return self.num_samples
