"""One training run driven an epoch at a time (:class:`TrainingRun`) and the loop over it
(:func:`run_training`): start-up with its refusals (a previous run in the folder, one class),
the per-epoch record and metrics log, and peer-failure detection for DDP.

The benchmark harness drives one :class:`TrainingRun` per policy in-process, epoch by epoch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from orderdp_dali import ranking
from orderdp_dali.atomic import remove_stale_temporaries
from orderdp_dali.checkpoint import (
    CONFIG,
    LAST,
    METRICS,
    another_run,
    peek_checkpoint,
    previous_run_files,
    record_config,
    resolve_resume,
    trim_metrics,
)
from orderdp_dali.config import Config
from orderdp_dali.ema import WeightEma
from orderdp_dali.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    DecodeError,
    DistributedError,
    NonFiniteLossError,
    first_line,
)
from orderdp_dali.folder_lock import FolderLock
from orderdp_dali.mixing import BatchMixer, build_mixer
from orderdp_dali.optim import build_optimizer
from orderdp_dali.policies import make_policy
from orderdp_dali.tensorboard_log import TENSORBOARD_DIR
from orderdp_dali.training import loop
from orderdp_dali.training.builders import Data, build_data, build_iterators, build_model_for
from orderdp_dali.training.checkpointing import RunCheckpoints
from orderdp_dali.training.runtime import Runtime, gpu_memory, init_runtime, seed_everything

if TYPE_CHECKING:  # the iterator pulls in DALI
    from orderdp_dali.iterator import DALIPlanIterator

__all__ = ["TrainingRun", "run_training"]

PathLike = Union[str, "os.PathLike[str]"]


class TrainingRun:
    """One training run driven an epoch at a time, so several runs can share a process and
    take turns (the benchmark interleaves policies epoch by epoch).

    :meth:`start` builds data, policy, iterators, model and optimizer (and resumes);
    :meth:`run_epoch` trains, checkpoints, validates and logs one epoch; :meth:`close`
    releases the pipelines and the process group. As a context manager it starts on
    entry and closes on exit. :func:`run_training` is the loop over it.
    """

    def __init__(
        self,
        cfg: Config,
        output_dir: Optional[PathLike] = None,
        resume: Optional[str] = None,
        overwrite: bool = False,
        allow_changes: bool = False,
    ) -> None:
        chosen = output_dir if output_dir is not None else cfg.train.output_dir
        if not str(chosen).strip():
            raise ConfigError("train.output_dir (or --output-dir) is empty: name the folder the run writes to")
        self.cfg = cfg
        self.out = Path(chosen).expanduser()
        self.resume = resume
        self.overwrite = overwrite
        self.allow_changes = allow_changes  # resume with another recipe (recorded): see check_resumable
        self.rt: Optional[Runtime] = None
        self.train_it: Optional[DALIPlanIterator] = None
        self.val_it: Optional[DALIPlanIterator] = None
        self.start_epoch = 0  # the first epoch this run trains (later than 0 after a resume)
        self.setup: Dict[str, Any] = {}  # the training pipeline's build time, GPU memory after it
        self.phase = "start-up"  # named in the error if a peer rank dies
        self.run_id: Optional[str] = None  # made at a fresh start, kept by every resume (checkpoint.another_run)
        self._lock: Optional[FolderLock] = None
        self.ema: Optional[WeightEma] = None  # train.ema
        self.mixer: Optional[BatchMixer] = None  # train.mixup
        self.tensorboard: Any = None  # train.tensorboard, rank 0
        self.steps_done = 0  # optimizer steps trained in the run so far (TensorBoard's step axis)

    def __enter__(self) -> "TrainingRun":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self):
        """Turn a peer rank's failure into a DistributedError naming the phase and the checkpoint."""
        try:
            yield
        except Exception as e:
            if self.rt is not None and self.rt.distributed and _is_peer_failure(e):
                raise DistributedError(_peer_failure_message(e, self.rt, self.out, self.phase)) from e
            raise

    def start(self) -> "TrainingRun":
        """Build everything and resume if asked; errors in settings, data or checkpoint raise here."""
        cfg, out = self.cfg, self.out
        self.rt = rt = init_runtime(cfg)
        if rt.is_main:  # the only rank that writes the folder; held until close(), dropped by the kernel on a crash
            self._lock = FolderLock(out).acquire()
            if cfg.train.tensorboard:
                from orderdp_dali.tensorboard_log import require_tensorboard

                require_tensorboard()  # a missing package is an error now, before the data are indexed
        with self._guard():
            data = build_data(cfg)
            _refuse_one_class(data, cfg)
            self.num_samples = n = len(data.train)
            policy = make_policy(cfg.policy.name, n, seed=cfg.train.seed, num_epochs=cfg.train.epochs,
                                 **cfg.policy.params)
            self.train_it, self.val_it = build_iterators(cfg, data, policy, rt)
            self.model, self.bare = build_model_for(cfg, data.num_classes, rt)
            self.optimizer = build_optimizer(cfg, self.bare)
            if cfg.train.ema.decay is not None:  # from the same initial weights on every rank (see orderdp_dali.ema)
                self.ema = WeightEma(self.bare, cfg.train.ema.decay, cfg.train.ema.every)
            self.mixer = build_mixer(cfg, cfg.model.num_classes or data.num_classes, rt.rank)
            self.scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.train.amp == "fp16")
            seed_everything(cfg.train.seed, rt.rank, cfg.train.deterministic)
            self.fingerprint = data.train.fingerprint
            self.checkpoints = RunCheckpoints(out, cfg, rt, self.fingerprint, self.bare, self.optimizer, self.scaler,
                                              self.train_it, self.ema)
            start, self.planned, last_record, resumed = 0, [], None, None
            ckpt = resolve_resume(self.resume, out)
            peeked = peek_checkpoint(ckpt) if ckpt is not None else None
            other = another_run(ckpt, peeked, out) if ckpt is not None and rt.is_main else None
            if other is not None and not self.overwrite:
                _refuse_other_run(out, ckpt, other)
            if ckpt is not None:
                resumed = self.checkpoints.resume(ckpt, self.allow_changes)
                start, self.planned, last_record = resumed.epoch, resumed.planned, resumed.record
                self.steps_done = resumed.steps_done
                if rt.is_main:
                    print(f"resumed from {ckpt}: continuing at epoch {start}", flush=True)
            elif rt.is_main and not self.overwrite:
                _refuse_previous_run(out)
            self.run_id = (peeked or {}).get("run_id") or uuid.uuid4().hex
            if rt.is_main:
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(out)  # a killed run's; safe: this run holds the folder's lock
                # The log first: a damaged line refuses the resume before anything is rewritten. Another
                # run's lines (--overwrite) all go, and so do its config records.
                kept = trim_metrics(out / METRICS, 0 if other is not None else start)
                if other is not None or (self.overwrite and resumed is None):
                    _drop_config_records(out)
                    shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)  # the replaced run's curves
                # config.json describes the run's first epochs; a resume with other settings adds config.<start>.json
                record_config(out, cfg.to_dict(), start, None if resumed is None else resumed.config)
                logged = any(r.get("epoch") == start - 1 and "kind" not in r for r in kept)
                if cfg.train.tensorboard:
                    from orderdp_dali.tensorboard_log import TensorBoardLog

                    # Steps 1..steps_done are the checkpoint's, its last epoch's figures included (logged at
                    # steps_done); what the interrupted run logged after them is dropped.
                    self.tensorboard = TensorBoardLog(out / TENSORBOARD_DIR, purge_step=self.steps_done + 1)
                if last_record is not None and not logged:
                    last_record.setdefault("run_id", self.run_id)
                    _append_metrics(out / METRICS, last_record)  # it stopped after the checkpoint, before the line
                    if self.tensorboard is not None:
                        self.tensorboard.epoch(self.steps_done, last_record)
                if resumed is not None and resumed.changes:
                    _append_metrics(out / METRICS, _config_changes_record(start, resumed.changes))
            self.start_epoch = start
            if start < cfg.train.epochs:
                # Build the run's one training pipeline and let it decode the first epoch's first
                # batches now, so no timed epoch pays for a build.
                self.train_it.start()
            self.setup = {"pipeline_build_s": self.train_it.pipeline_build_s, "gpu_memory": gpu_memory(rt.device)}
        return self

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """Train epoch ``epoch`` (the next one: epochs run in order), checkpoint, validate, log;
        return its record (the metrics line)."""
        cfg, rt, out = self.cfg, self.rt, self.out
        with self._guard():
            self.phase = f"epoch {epoch} (training)"
            record = {"epoch": epoch, "policy": cfg.policy.name, "world_size": rt.world_size,
                      "plan_sha1": _plan_sha1(self.train_it.plan), "run_id": self.run_id}
            # Whether the ranking ranks (orderdp_dali.ranking): the planned samples' stored scores as
            # the plan was chosen (the lagged table under policy.params.score_lag), copied before
            # training and compared after it, outside the timed epoch.
            policy = self.train_it.policy
            before = (ranking.snapshot(self.train_it.plan.indices, *policy.peek_scores_for(epoch))
                      if policy.ranks_by_loss else None)
            cpu = time.process_time()  # every thread of this process, DALI's included
            record.update(loop.train_one_epoch(self.model, self.optimizer, self.scaler, self.train_it, epoch, cfg, rt,
                                          ema=self.ema, mixer=self.mixer, log_step=self._log_step()))
            record["cpu_time"] = time.process_time() - cpu
            self.steps_done += record["steps"]
            # the share of the training set no epoch has trained yet (the merged table, every rank alike)
            record["never_trained"] = 1.0 - int(np.count_nonzero(policy.scores.seen)) / self.num_samples
            if before is not None:  # the iterator merged the epoch's losses into every rank's table at its end
                trained = ranking.trained_count(record["planned"], record["samples"])
                record.update(ranking.epoch_figures(before, policy.scores.values, trained))
            self.planned.append(record["planned"])
            record["fraction_saved"] = 1.0 - sum(self.planned) / (self.num_samples * len(self.planned))
            if cfg.train.checkpoint:
                # Checkpoint before validating, so a validation failure costs no training. The
                # metrics line follows validation; the checkpoint carries it for a resume that
                # finds it missing, so each epoch is logged exactly once either way.
                self.checkpoints.save(epoch + 1, self.planned, record, self.run_id, self.steps_done)
            if self.val_it is not None and loop.should_evaluate(cfg, epoch):
                self.phase = f"epoch {epoch} (validation)"
                loop.sync_buffers(self.bare, rt)
                if self.ema is not None:
                    loop.sync_buffers(self.ema.module, rt)
                t = time.perf_counter()
                ema = None if self.ema is None else self.ema.module
                record.update(loop.evaluate(self.bare, self.val_it, cfg, rt, ema))
                record["val_time"] = time.perf_counter() - t
            record["pipelines_built"] = sum(it.pipelines_built for it in (self.train_it, self.val_it) if it is not None)
            if rt.is_main:
                _append_metrics(out / METRICS, record)
                if self.tensorboard is not None:
                    self.tensorboard.epoch(self.steps_done, record)
        return record

    def _log_step(self) -> Optional[Callable[[int, torch.Tensor, float], None]]:
        """Rank 0's per-step TensorBoard scalars (every train.print_freq steps: ``.item()`` waits for the device)."""
        tb, done = self.tensorboard, self.steps_done
        if tb is None:
            return None
        return lambda step, loss, lr: tb.step(done + step, loss.item(), lr)

    def close(self) -> None:
        """Release the pipelines, the output folder's lock and, if this run joined it, the process
        group (idempotent)."""
        try:
            for it in (self.train_it, self.val_it):
                if it is not None:
                    it.close()
            self.train_it = self.val_it = None
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
            if self.rt is not None and self.rt.owns_process_group and dist.is_initialized():
                dist.destroy_process_group()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def run_training(
    cfg: Config,
    output_dir: Optional[PathLike] = None,
    resume: Optional[str] = None,
    overwrite: bool = False,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
    allow_changes: bool = False,
) -> List[Dict[str, Any]]:
    """Train as ``cfg`` says; return the per-epoch records of the epochs this call ran.

    Args:
        cfg: a validated :class:`~orderdp_dali.config.Config`.
        output_dir: where ``metrics.jsonl``, ``config.json`` and checkpoints go (default
            ``cfg.train.output_dir``).
        resume: a checkpoint path, ``"auto"`` (``output_dir/last.pth`` if present, else a
            fresh start) or ``None``.
        overwrite: start afresh in an ``output_dir`` that holds a previous run (without it,
            such a run is refused and nothing is touched).
        on_epoch: called with each epoch's record once it is logged (progress display).
        allow_changes: resume with a recipe other than the checkpoint's (lr, batch size, ...;
            without it such a resume is refused); the change is recorded in ``metrics.jsonl``
            (a ``"kind": "config_changes"`` line) and ``config.<epoch>.json``.

    Returns:
        One dict per epoch run (the JSON lines of the metrics log), on every rank.

    Raises:
        ConfigError, DatasetError, CheckpointError: bad settings, data or checkpoint,
        raised before training starts.
        DistributedError: another rank died or stopped responding (within
            ``train.dist_timeout_s``); the message names the phase and the last checkpoint.
    """
    with TrainingRun(cfg, output_dir, resume, overwrite, allow_changes) as run:
        records = []
        for epoch in range(run.start_epoch, cfg.train.epochs):
            records.append(run.run_epoch(epoch))
            if on_epoch is not None:
                on_epoch(records[-1])
        return records


def _refuse_one_class(data: Data, cfg: Config) -> None:
    """One class trains to loss 0: a policy that ranks samples by loss would rank noise."""
    from orderdp_dali.policies import POLICIES

    if data.num_classes == 1 and POLICIES[cfg.policy.name].ranks_by_loss:
        raise DatasetError(
            f"{getattr(data.train, 'root', cfg.data.root)} holds a single class: every loss goes to 0 and "
            f"policy {cfg.policy.name!r} would rank noise; add the other class folders (policy.name=full runs "
            "as a pipeline check)"
        )


def _refuse_previous_run(out: Path) -> None:
    """A fresh start must not destroy an earlier run's log and checkpoint without being asked to."""
    found = previous_run_files(out)
    if found:
        raise ConfigError(
            f"train.output_dir: {out} already holds a run ({', '.join(found)}); continue it with --resume auto, "
            "choose another --output-dir, or pass --overwrite to replace it"
        )


def _refuse_other_run(out: Path, ckpt: Path, why: str) -> None:
    """Nor may a resume from a checkpoint of one run (``--resume PATH``) write over another run's folder."""
    raise ConfigError(
        f"train.output_dir: {out} holds another run ({why}) than the one {ckpt} continues; resuming there would "
        "replace its log and checkpoint: choose another --output-dir, or pass --overwrite to replace that run"
    )


def _drop_config_records(out: Path) -> None:
    """Remove another run's ``config.json`` and ``config.<epoch>.json`` (``--overwrite`` replaces that run):
    :func:`~orderdp_dali.checkpoint.record_config` then records the resumed run's own config."""
    for path in [out / CONFIG, *out.glob("config.*.json")]:
        if path.is_file() and (path.name == CONFIG or path.name[len("config."):-len(".json")].isdigit()):
            path.unlink()


def _plan_sha1(plan: Any) -> str:
    """SHA-1 of a plan's indices and weights: the metrics log's fingerprint of what an epoch trained on."""
    h = hashlib.sha1(plan.indices.astype("<i8", copy=False).tobytes())
    h.update(plan.weights.astype("<f4", copy=False).tobytes())
    return h.hexdigest()


# What gloo and NCCL say (lower-cased) when a peer's connection drops or a collective times out,
# e.g. "Connection reset by peer", "Timed out waiting 8000ms for recv", "Application timeout caused pair closure".
_PEER_FAILURE_MARKERS = ("connection reset", "connection closed", "broken pipe", "timed out", "timeout", "gloo", "nccl")


def _is_peer_failure(error: BaseException) -> bool:
    if isinstance(error, (DecodeError, ConfigError, DatasetError, CheckpointError, NonFiniteLossError)):
        return False
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in _PEER_FAILURE_MARKERS)


def _peer_failure_message(error: BaseException, rt: Runtime, out: Path, phase: str) -> str:
    detail = first_line(error, 300)
    last = out / LAST
    saved = (f"the last checkpoint {last} is intact: restart all ranks with --resume auto" if last.is_file()
             else f"no checkpoint in {out} yet")
    return (f"rank {rt.rank}: a peer rank died or stopped responding during {phase} "
            f"({type(error).__name__}: {detail}); {saved}")


def _append_metrics(path: Path, record: Dict[str, Any]) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _config_changes_record(epoch: int, changes: Dict[str, Tuple[Any, Any]]) -> Dict[str, Any]:
    """The metrics line that records recipe changes let through on resume. Its ``kind`` tells it
    apart from the epochs' lines (readers of epochs skip it); its ``epoch`` is the first epoch
    trained with them, so a resume before that epoch drops it with the epochs' lines."""
    return {"kind": "config_changes", "epoch": epoch, "config": f"config.{epoch}.json",
            "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}
