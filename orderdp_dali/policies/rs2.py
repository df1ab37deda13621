"""RS2 without replacement: a random subset per epoch, every sample seen in each cycle of epochs.

RS2 ("repeated sampling of random subsets", Okanovic et al., ICLR 2024) trains each epoch on
a fresh random subset of fixed size, drawn *without replacement across epochs*: a random
permutation of all n samples is consumed ``budget`` samples at a time, and a new one is
drawn when it is used up. Every sample is therefore trained at least once in each cycle of
``m = ceil(n / budget)`` epochs (exactly once when ``budget`` divides ``n``), where
:class:`~orderdp_dali.policies.uniform.UniformRandom` draws every epoch independently (ten
such epochs at 10% leave 0.9^10, about 35%, of the samples untrained). Weights are 1;
scores are recorded but never used.

**The leftover at the end of a permutation** (``n`` not a multiple of ``budget``): the
last epoch of a cycle takes the ``r = n - (m - 1) * budget`` samples left in the
permutation and tops up with the permutation's first ``budget - r`` samples, i.e. it
reads the permutation as a ring; the next epoch starts a new permutation. This is the
rule of the RS2 authors' code (``UniformNoReplacement`` in their DeepCore fork: the
window wraps around to the start of the same shuffled order, then the order is
reshuffled), without its off-by-one: their wrap-around takes ``budget - 1`` samples
(the end index is taken modulo ``n + 1``), ours takes exactly ``budget``, as every plan
of a fixed-budget policy does. We follow the code because the paper's experiment scripts
run it, and because it keeps every plan a function of the epoch number alone (below).
The price: ``budget - r`` samples are trained twice in a cycle (never twice in an epoch).
When ``r`` is small that is most of the last epoch: with ``keep_ratio=0.1`` and n =
1,281,167, ``budget`` = 128,116 and ten epochs use 1,281,160 samples, so every eleventh
epoch trains the 7 left over and 128,109 samples of that cycle's first epoch again. The
alternative, topping up from the *next* permutation without repeating a sample in the
epoch, is not in general a function of the epoch alone: once ``budget > n / 2``, which
samples the next permutation must hold back depends on how the previous one ended, and so
on back to epoch 0.

Worked example, n = 10 samples, ``keep_ratio=0.4`` (budget 4, cycles of m = 3 epochs),
P and Q the permutations of cycles 0 and 1::

    epoch 0: P[0:4]                  epoch 3: Q[0:4]
    epoch 1: P[4:8]                  epoch 4: Q[4:8]
    epoch 2: P[8:10] + P[0:2]        epoch 5: Q[8:10] + Q[0:2]

Epochs 0-2 train every sample, P[0] and P[1] twice. The wrap-around plan is shuffled (the
others are slices of a random permutation, already in random order).

Plans are a pure function of (seed, epoch): epoch e belongs to cycle ``k = e // m`` at
slot ``e % m``, and cycle k's permutation comes from ``np.random.default_rng([seed, k,
1])`` (salt 1, apart from the per-epoch generators of salt 0). Every rank computes the
same plan, ``select(e)`` needs no earlier epoch, and a resumed run continues exactly
without any state beyond the settings. With ``anneal_delta`` the last epochs train on all
samples, as for ``uniform``; the pruned epochs before them are cycles as above.
"""
from __future__ import annotations

import math

import numpy as np

from orderdp_dali.plan import EpochPlan, unit_weights
from orderdp_dali.policies.base import register_policy
from orderdp_dali.policies.full import full_plan
from orderdp_dali.policies.uniform import FixedBudgetPolicy

__all__ = ["RS2", "PERMUTATION_SALT", "cycle_length", "ring_window"]

#: Salt of the generator of cycle k's permutation, ``default_rng([seed, k, PERMUTATION_SALT])``.
PERMUTATION_SALT = 1


def _check_budget(num_samples: int, budget: int) -> None:
    for name, v in (("num_samples", num_samples), ("budget", budget)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"Invalid {name}: {v!r} (need an int)")
    if not 1 <= budget <= num_samples:
        raise ValueError(f"Invalid budget: {budget!r} (need 1 <= budget <= num_samples = {num_samples})")


def cycle_length(num_samples: int, budget: int) -> int:
    """Epochs per permutation, ``ceil(num_samples / budget)``: every sample is trained in each cycle.

    Example: 10 samples at budget 4 give cycles of 3 epochs; 1,281,167 at 128,116 give 11.
    """
    _check_budget(num_samples, budget)
    return math.ceil(int(num_samples) / int(budget))


def ring_window(permutation: np.ndarray, slot: int, budget: int) -> np.ndarray:
    """Positions ``slot * budget`` .. ``slot * budget + budget - 1`` of ``permutation``, modulo its length.

    A window past the end wraps around to the permutation's start (the leftover rule in the
    module docstring). Its ``budget`` entries are distinct, because ``budget <= len``.

    Args:
        permutation: 1-D array, a permutation of ``range(n)``.
        slot: the epoch's place in its cycle, ``0 <= slot < cycle_length(n, budget)``.
        budget: window length, ``1 <= budget <= n``.

    Returns:
        A new int64 array of ``budget`` sample indices (not a view: the permutation can be freed).
    """
    permutation = np.asarray(permutation)
    n = int(permutation.shape[0])
    _check_budget(n, budget)
    m = cycle_length(n, budget)
    if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < m:
        raise ValueError(f"Invalid slot: {slot!r} (need an int in [0, {m}) for n={n}, budget={budget})")
    start = int(slot) * int(budget)
    stop = start + int(budget)
    if stop <= n:
        return permutation[start:stop].astype(np.int64, copy=True)
    return np.concatenate((permutation[start:], permutation[: stop - n])).astype(np.int64, copy=False)


@register_policy
class RS2(FixedBudgetPolicy):
    """RS2 without replacement: ``budget`` samples per epoch from a permutation consumed in order.

    A permutation of all samples is drawn per cycle of ``cycle_length = ceil(n / budget)``
    epochs and read ``budget`` samples at a time; the cycle's last epoch wraps around to the
    permutation's start when ``n`` is not a multiple of ``budget`` (see the module docstring
    for this rule, its source and a worked example). So every sample is trained at least once
    per cycle, exactly once when ``budget`` divides ``n``, and never twice in one epoch.

    The budget's two forms (``keep_ratio``, or OrderDP's ``random_len_ratio`` and
    ``top_q_ratio`` for exactly OrderDP's q), ``anneal_delta`` and the errors are those of
    :class:`~orderdp_dali.policies.uniform.FixedBudgetPolicy`. Weights are 1.

    Example::

        policy = make_policy("rs2", 50_000, keep_ratio=0.3)   # budget 15,000, cycles of 4 epochs
        plan = policy.select(epoch)                            # the same on every rank, any order of calls
    """

    name = "rs2"

    @property
    def cycle_length(self) -> int:
        """Epochs per permutation, ``ceil(n / budget)``."""
        return cycle_length(self.num_samples, self.budget)

    def permutation(self, cycle: int) -> np.ndarray:
        """The permutation of all samples that cycle ``cycle`` consumes."""
        return self.rng(cycle, salt=PERMUTATION_SALT).permutation(self.num_samples)

    def select(self, epoch: int) -> EpochPlan:
        """The epoch's window of its cycle's permutation (shuffled if it wraps); all samples when annealing."""
        if not self.prunes(epoch):
            return full_plan(epoch, self.num_samples, self.rng(epoch))
        cycle, slot = divmod(epoch, self.cycle_length)
        indices = ring_window(self.permutation(cycle), slot, self.budget)
        if (slot + 1) * self.budget > self.num_samples:  # leftover first, then the top-up: mix them
            self.rng(epoch).shuffle(indices)
        return EpochPlan(epoch, indices, unit_weights(self.budget))
