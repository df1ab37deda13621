"""A training run's checkpoints: one saver holding the objects it saves, in the spirit of timm's
``CheckpointSaver``.

Each epoch it gathers every rank's pipeline state (a collective), and rank 0 writes the state
dict to ``last.pth`` atomically, hard-linking ``epoch_NNNN.pth`` beside it every
``train.save_every`` epochs. On resume it loads a checkpoint into the same objects after
:func:`~orderdp_dali.checkpoint.check_resumable` agreed that this run may continue it. The
file format itself (versions, atomic writes, checks) is :mod:`orderdp_dali.checkpoint`'s.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Tuple

import torch.distributed as dist
from torch import nn

from orderdp_dali.checkpoint import CHECKPOINT_VERSION, LAST, check_resumable, load_checkpoint, save_checkpoint
from orderdp_dali.config import Config
from orderdp_dali.ema import WeightEma
from orderdp_dali.errors import CheckpointError, first_line
from orderdp_dali.training.runtime import Runtime

if TYPE_CHECKING:  # the iterator pulls in DALI
    from orderdp_dali.iterator import DALIPlanIterator

__all__ = ["Resumed", "RunCheckpoints"]


class Resumed(NamedTuple):
    """What :meth:`RunCheckpoints.resume` restored: the next epoch, the plan sizes so far, the metrics
    line of the epoch before it as the checkpoint recorded it (if any), the checkpoint's config, and
    the recipe changes ``--allow-changes`` let through (``key -> (old, new)``)."""

    epoch: int
    planned: List[int]
    record: Optional[Dict[str, Any]]
    config: Dict[str, Any]
    changes: Dict[str, Tuple[Any, Any]]
    steps_done: int = 0


class RunCheckpoints:
    """Saves and restores one run's training state: the bare model, optimizer, grad scaler,
    training iterator (every rank's pipeline) and EMA weights, in ``out``.

    Args:
        out: the run's output folder (rank 0 writes there).
        cfg: the run's config (stored in each checkpoint; ``train.save_every``).
        rt: this process's rank and world size.
        fingerprint: the training set's fingerprint, stored and checked on resume.
        model, optimizer, scaler, iterator, ema: the objects whose ``state_dict`` is saved.
    """

    def __init__(self, out: Path, cfg: Config, rt: Runtime, fingerprint: str, model: nn.Module, optimizer: Any,
                 scaler: Any, iterator: DALIPlanIterator, ema: Optional[WeightEma] = None) -> None:
        self.out, self.cfg, self.rt, self.fingerprint = out, cfg, rt, fingerprint
        self.model, self.optimizer, self.scaler, self.iterator, self.ema = model, optimizer, scaler, iterator, ema

    @property
    def last(self) -> Path:
        return self.out / LAST

    def iterator_state(self) -> Dict[str, Any]:
        """The iterator's state with every rank's DALI pipeline state in ``"pipelines"`` (on rank 0;
        a collective: every rank calls it). Each rank's pipeline has its own random state, and a
        resumed rank restores its own."""
        state = self.iterator.state_dict()
        if self.rt.distributed:
            gathered: Optional[List[Any]] = [None] * self.rt.world_size if self.rt.is_main else None
            dist.gather_object(state["pipelines"][self.rt.rank], gathered, dst=0)
            state["pipelines"] = gathered
        return state

    def state_dict(self, epoch: int, iterator_state: Dict[str, Any], planned: List[int], record: Dict[str, Any],
                   run_id: Optional[str], steps_done: int) -> Dict[str, Any]:
        """The checkpoint of a run about to start epoch ``epoch``: plain data and tensors (loads with
        ``weights_only=True``)."""
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,  # the next epoch to run
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iterator": iterator_state,
            "config": self.cfg.to_dict(),
            "dataset": self.fingerprint,
            "planned": list(planned),
            # The finished epoch's metrics line before validation: logged from here on resume if
            # the run stopped between this checkpoint and the line (e.g. during validation).
            "record": json.dumps(record),
            "run_id": run_id,  # which run this is: a resume into another folder compares it
            "steps_done": steps_done,
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def save(self, epoch_done: int, planned: List[int], record: Dict[str, Any], run_id: Optional[str],
             steps_done: int) -> None:
        """Checkpoint the run after ``epoch_done`` epochs (a collective: every rank calls it; rank 0 writes)."""
        iterator_state = self.iterator_state()
        if not self.rt.is_main:
            return
        state = self.state_dict(epoch_done, iterator_state, planned, record, run_id, steps_done)
        save_checkpoint(state, self.last)
        every = self.cfg.train.save_every
        if every and epoch_done % every == 0:
            keep = self.out / f"epoch_{epoch_done:04d}.pth"
            try:
                if keep.exists():
                    keep.unlink()
                os.link(self.last, keep)  # same bytes, no second write; last.pth is replaced, not modified
            except OSError:
                save_checkpoint(state, keep)

    def resume(self, path: Path, allow_changes: bool = False) -> Resumed:
        """Load ``path`` into the training objects after checking that this run may continue it
        (:func:`~orderdp_dali.checkpoint.check_resumable`: a changed recipe only with ``allow_changes``).
        An EMA the checkpoint lacks (switched on at this resume) starts from the resumed weights."""
        it = self.iterator
        state = load_checkpoint(path)
        changes = check_resumable(state, path, self.fingerprint, it.policy, self.cfg.to_dict(), allow_changes)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            it.load_state_dict(state["iterator"])
            if self.ema is not None:
                if state.get("ema") is not None:
                    self.ema.load_state_dict(state["ema"])
                else:
                    self.ema.reset(self.model)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot resume from {path}: {first_line(e) or type(e).__name__}") from e
        epoch = int(state["epoch"])
        if it.epoch != epoch:
            raise CheckpointError(f"{path}: iterator is at epoch {it.epoch} but the checkpoint says {epoch}")
        record = json.loads(state["record"]) if isinstance(state.get("record"), str) else None
        saved = state.get("config") if isinstance(state.get("config"), dict) else {}
        return Resumed(epoch, [int(p) for p in state.get("planned", [])], record, saved, changes,
                       int(state.get("steps_done", 0)))
