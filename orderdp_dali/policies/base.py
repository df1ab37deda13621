"""The policy interface: ``select(epoch) -> EpochPlan`` plus a per-sample score table.

One small class per policy, chosen by name from :data:`POLICIES` (or passed as a custom
subclass). Policies are pure numpy: no torch, no DALI. Randomness comes from
``np.random.default_rng([seed, epoch, salt])``, so a plan depends only on (seed, epoch,
scores): every rank computes the same plan, and a restored policy continues the same
sequence of plans.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type

import numpy as np

from orderdp_dali.plan import EpochPlan

__all__ = [
    "Policy",
    "ScoreTable",
    "POLICIES",
    "register_policy",
    "make_policy",
    "check_ratio",
    "check_epoch",
    "floor_times",
    "first_full_epoch",
]

POLICY_STATE_VERSION = 1


def check_ratio(name: str, value: Any) -> float:
    """``value`` as a float in (0, 1], else ``ValueError`` naming the parameter."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: {value!r} (need a number in (0, 1])") from None
    if not 0.0 < f <= 1.0:
        raise ValueError(f"Invalid {name}: {value!r} (need a number in (0, 1])")
    return f


def check_epoch(epoch: Any) -> int:
    """``epoch`` as an int >= 0, else ``TypeError``/``ValueError`` with the bad value."""
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise TypeError(f"Invalid epoch: {epoch!r} (need an int)")
    if epoch < 0:
        raise ValueError(f"Invalid epoch: {epoch!r} (need an int >= 0)")
    return int(epoch)


def floor_times(ratio: float, count: int) -> int:
    """``floor(ratio * count)``, where a product that is an integer up to float rounding counts as it.

    ``0.29 * 100`` is ``28.999999999999996`` in floating point; the sample count a user
    means by that is 29, so a relative slack of 1e-9 is added before flooring.
    """
    x = float(ratio) * int(count)
    return int(math.floor(x + 1e-9 * max(1.0, abs(x))))


def first_full_epoch(anneal_delta: float, num_epochs: int) -> int:
    """The first annealing (full-data) epoch, as the reference computes it: the smallest ``e``
    with ``e + 1 > anneal_delta * num_epochs``, which is ``floor(anneal_delta * num_epochs)``.

    Epochs ``0 .. first_full_epoch - 1`` are pruned, the rest train on all samples. With
    ``num_epochs=90`` and ``anneal_delta=0.875`` (78.75) epochs 0..77 are pruned and 78..89
    are full; ``anneal_delta=1`` never anneals within ``num_epochs``. Float rounding is
    forgiven as in :func:`floor_times` (``0.29 * 100`` gives 29, not 28).
    """
    return floor_times(anneal_delta, num_epochs)


class ScoreTable:
    """Each sample's most recent per-sample loss, plus which samples were updated lately.

    Unseen samples hold ``initial`` (a large value, so score-greedy policies prefer them).
    ``updated`` marks samples written since the last :meth:`clear_updated`; distributed
    training uses it to merge the tables of all ranks at epoch end.
    """

    def __init__(self, num_samples: int, initial: float = 1e4) -> None:
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"Invalid num_samples: {num_samples!r} (need an int >= 1)")
        self.initial = float(initial)
        self.values = np.full(int(num_samples), self.initial, dtype=np.float32)
        self.seen = np.zeros(int(num_samples), dtype=bool)
        self.updated = np.zeros(int(num_samples), dtype=bool)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def update(self, indices: Any, losses: Any) -> None:
        """Record ``losses[k]`` as the score of sample ``indices[k]`` (the last write wins)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        val = np.asarray(losses, dtype=np.float32).reshape(-1)
        if idx.shape != val.shape:
            raise ValueError(f"update() got {idx.size} indices but {val.size} losses")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"sample index out of range [0, {len(self)}): {idx.min()}..{idx.max()}")
        if not np.all(np.isfinite(val)):
            bad = idx[~np.isfinite(val)][:5].tolist()
            raise ValueError(f"non-finite loss for samples {bad}: the score table takes finite losses")
        self.values[idx] = val
        self.seen[idx] = True
        self.updated[idx] = True

    def clear_updated(self) -> None:
        self.updated[:] = False

    def state_dict(self) -> Dict[str, Any]:
        return {"initial": self.initial, "values": self.values.copy(), "seen": self.seen.copy()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["values"], dtype=np.float32)
        if values.shape != self.values.shape:
            raise ValueError(
                f"score table holds {values.shape[0]} samples, this dataset has {len(self)}"
            )
        seen = np.asarray(state["seen"], dtype=bool)
        if seen.shape != values.shape:
            raise ValueError(f"score table 'seen' has shape {seen.shape}, 'values' {values.shape}")
        self.initial = float(state["initial"])
        self.values = values.copy()
        self.seen = seen.copy()
        self.updated = np.zeros_like(self.seen)


class Policy(ABC):
    """Chooses each epoch's samples before the epoch starts.

    Subclasses set ``name``, implement :meth:`select`, and list their hyper-parameters in
    :meth:`config` so ``state_dict`` can refuse a checkpoint made with other settings.
    """

    name: ClassVar[str] = ""
    #: Whether plans depend on the samples' losses (a one-class dataset leaves nothing to rank).
    ranks_by_loss: ClassVar[bool] = False
    #: Fraction of the epochs that prune; later epochs train on all samples. None: every epoch prunes.
    anneal_delta: Optional[float] = None

    def __init__(
        self, num_samples: int, *, seed: int = 0, num_epochs: Optional[int] = None, initial_score: float = 1e4,
        score_lag: int = 0,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"Invalid seed: {seed!r} (need an int)")
        if seed < 0:
            # np.random.default_rng refuses negative entropy: fail here, not at the first epoch.
            raise ValueError(f"Invalid seed: {seed!r} (need an int >= 0)")
        if num_epochs is not None and (not isinstance(num_epochs, (int, np.integer)) or num_epochs < 1):
            raise ValueError(f"Invalid num_epochs: {num_epochs!r} (need an int >= 1)")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.num_epochs = None if num_epochs is None else int(num_epochs)
        try:
            initial = float(initial_score)
        except (TypeError, ValueError):
            raise TypeError(f"Invalid initial_score: {initial_score!r} (need a number)") from None
        if not np.isfinite(initial):
            raise ValueError(f"Invalid initial_score: {initial_score!r} (need a finite number)")
        self.initial_score = initial
        self.scores = ScoreTable(num_samples, initial=initial)
        if isinstance(score_lag, bool) or not isinstance(score_lag, (int, np.integer)) or score_lag < 0:
            raise ValueError(f"Invalid score_lag: {score_lag!r} (need an int >= 0: epochs the scores arrive late)")
        self.score_lag = int(score_lag)
        # score_lag > 0: epoch -> (values, seen) as they stood when that epoch's plan was first chosen
        self._snapshots: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def scores_for(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(values, seen) of the score table that ``epoch``'s plan is chosen from.

        With ``score_lag = 0`` the current table. With ``score_lag = k`` the table as it stood when
        the plan of epoch ``epoch - k`` was first chosen, i.e. the scores up to epoch
        ``epoch - k - 1``: the research release's distributed ImageNet path (k = 1) trains epoch
        e on scores up to e - 2, and epochs 0 and 1 on the initial scores (a random plan). The
        first call for an epoch records the current table for epoch ``epoch + k`` to use; the
        last ``k + 1`` records travel in :meth:`state_dict`, so a resumed run chooses the same plans.

        Raises:
            ValueError: the record this epoch needs is missing (epochs selected out of order).
        """
        epoch = check_epoch(epoch)
        if self.score_lag == 0:
            return self.scores.values, self.scores.seen
        if epoch not in self._snapshots:
            self._snapshots[epoch] = (self.scores.values.copy(), self.scores.seen.copy())
            for old in [e for e in self._snapshots if e < epoch - self.score_lag]:
                del self._snapshots[old]
        return self._lagged(epoch)

    def _lagged(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        source = epoch - self.score_lag
        if source < 0 or (source not in self._snapshots and not self.scores.seen.any()):
            return np.full(self.num_samples, self.initial_score, np.float32), np.zeros(self.num_samples, bool)
        if source not in self._snapshots:
            raise ValueError(
                f"score_lag={self.score_lag}: epoch {epoch}'s plan needs the scores recorded when epoch "
                f"{source}'s plan was chosen, and that epoch was never selected; select the epochs in order"
            )
        return self._snapshots[source]

    def peek_scores_for(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """What :meth:`scores_for` would give, recording nothing (for statistics, not plans)."""
        epoch = check_epoch(epoch)
        if self.score_lag == 0:
            return self.scores.values, self.scores.seen
        return self._lagged(epoch)

    def rng(self, epoch: int, salt: int = 0) -> np.random.Generator:
        """The generator for ``epoch``: a pure function of (seed, epoch, salt)."""
        return np.random.default_rng([self.seed, check_epoch(epoch), int(salt)])

    def _check_anneal_delta(self, anneal_delta: Optional[float]) -> Optional[float]:
        """Validate an optional annealing fraction (full data from ``first_full_epoch`` on)."""
        if anneal_delta is None:
            return None
        checked = check_ratio("anneal_delta", anneal_delta)
        if self.num_epochs is None:
            raise ValueError(f"anneal_delta={anneal_delta!r} needs num_epochs (got None)")
        return checked

    def prunes(self, epoch: int) -> bool:
        """Whether ``epoch`` is pruned: always, unless ``anneal_delta`` makes the last epochs full."""
        epoch = check_epoch(epoch)
        return self.anneal_delta is None or epoch < first_full_epoch(self.anneal_delta, self.num_epochs)

    @abstractmethod
    def select(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch``, from the current scores. Deterministic; does not mutate state."""

    def update(self, indices: Any, losses: Any) -> None:
        """Record the unweighted per-sample losses of a batch."""
        self.scores.update(indices, losses)

    def config(self) -> Dict[str, Any]:
        """The policy's hyper-parameters as plain data (``score_lag`` only when set, so that
        checkpoints of earlier versions still match)."""
        lag = {"score_lag": self.score_lag} if self.score_lag else {}
        return {"num_samples": self.num_samples, "seed": self.seed, "num_epochs": self.num_epochs, **lag}

    def expected_size(self, epoch: int) -> int:
        """Plan length of ``epoch`` when it does not depend on scores, else the current one."""
        return len(self.select(epoch))

    def state_dict(self) -> Dict[str, Any]:
        return {
            "version": POLICY_STATE_VERSION,
            "policy": self.name,
            "config": self.config(),
            "scores": self.scores.state_dict(),
            **({"lagged": [{"epoch": int(e), "values": v.copy(), "seen": m.copy()}
                           for e, (v, m) in sorted(self._snapshots.items())]} if self.score_lag else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("policy") != self.name:
            raise ValueError(f"state_dict is for policy {state.get('policy')!r}, not {self.name!r}")
        if state.get("version") != POLICY_STATE_VERSION:
            raise ValueError(f"unsupported policy state version {state.get('version')!r}")
        conflict = self.settings_conflict(state["config"])
        if conflict is not None:
            raise ValueError(conflict)
        self.scores.load_state_dict(state["scores"])
        self._snapshots = {}
        for snap in state.get("lagged") or () if self.score_lag else ():
            e, values, seen = int(snap["epoch"]), np.asarray(snap["values"], np.float32), np.asarray(snap["seen"], bool)
            if values.shape != self.scores.values.shape or seen.shape != values.shape:
                raise ValueError(f"lagged scores of epoch {e} hold {values.shape[0]} samples, this dataset has "
                                 f"{len(self.scores)}")
            self._snapshots[e] = (values.copy(), seen.copy())

    def settings_conflict(self, saved: Mapping[str, Any]) -> Optional[str]:
        """Why a state saved with the settings ``saved`` cannot continue under this policy's, or None.

        Only the epoch count may differ, and only where no plan depends on it (no annealing):
        a finished 90-epoch run can then be extended to 120.
        """
        saved, now = dict(saved), self.config()
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if not changed or (changed == ["num_epochs"] and self.anneal_delta is None):
            return None
        if changed == ["num_epochs"] and saved.get("num_epochs") is not None and self.num_epochs is not None:
            then = first_full_epoch(self.anneal_delta, int(saved["num_epochs"]))
            return (
                f"changing the epoch count from {saved['num_epochs']} to {self.num_epochs} moves {self.name}'s "
                f"annealing (full data from epoch {then} instead of "
                f"{first_full_epoch(self.anneal_delta, self.num_epochs)}), so the plans would differ from the "
                f"run's; keep {saved['num_epochs']} epochs or start a fresh run"
            )
        return f"policy settings differ: checkpoint has {saved}, this run has {now}"


POLICIES: Dict[str, Type[Policy]] = {}


def register_policy(cls: Type[Policy]) -> Type[Policy]:
    """Class decorator: make ``cls`` available to :func:`make_policy` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty 'name'")
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, num_samples: int, **params: Any) -> Policy:
    """Build the policy registered as ``name`` with its hyper-parameters ``params``."""
    if name not in POLICIES:
        raise ValueError(f"Unknown policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name](num_samples, **params)
