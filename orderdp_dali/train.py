"""Train an image classifier with a dynamic data-pruning policy on a DALI input pipeline.

Single process::

    orderdp-dali train --config configs/cpu_demo.yaml data.root=data/demo train.epochs=3

Distributed (one process per GPU; rank and world size come from torchrun's environment)::

    torchrun --nproc_per_node=8 -m orderdp_dali.train --config configs/imagenet_r50_orderdp.yaml \\
        data.root=$IMAGENET_ROOT [--resume auto]

Every rank computes the same plan (policies are deterministic) and trains on its shard;
the iterator pads shards so all ranks run the same number of steps and merges the score
tables with one all-reduce per epoch. Rank 0 appends one JSON line per epoch to
``<output_dir>/metrics.jsonl`` and writes ``<output_dir>/last.pth`` atomically each epoch.

The benchmark harness drives one :class:`TrainingRun` per policy in-process, epoch by epoch.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

if __name__ == "__main__":  # python -m orderdp_dali.train: torch failing to load is one line, not a traceback
    from orderdp_dali.cli import exit_if_unloadable

    exit_if_unloadable("train", "torch")

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from orderdp_dali import ranking
from orderdp_dali.atomic import remove_stale_temporaries
from orderdp_dali.checkpoint import (
    CHECKPOINT_VERSION,
    CONFIG,
    LAST,
    METRICS,
    another_run,
    check_resumable,
    load_checkpoint,
    peek_checkpoint,
    previous_run_files,
    record_config,
    resolve_resume,
    save_checkpoint,
    trim_metrics,
)
from orderdp_dali.config import Config, load_config
from orderdp_dali.data import DataSource, TarIndex, index_split, load_cifar, load_exclusion_list
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
from orderdp_dali.interrupts import signals_as_interrupts
from orderdp_dali.lr_schedule import schedule_at, set_lr, set_momentum
from orderdp_dali.mixing import BatchMixer, build_mixer, mixed_losses
from orderdp_dali.models import build_model, compile_model, fixed_input_size
from orderdp_dali.optim import build_optimizer
from orderdp_dali.policies import make_policy
from orderdp_dali.tta import flip_averaged

if TYPE_CHECKING:  # the iterator pulls in DALI: imported where one is built
    from orderdp_dali.iterator import DALIPlanIterator

__all__ = ["TrainingRun", "evaluate", "get_args_parser", "main", "run_training", "train_one_epoch"]

log = logging.getLogger(__name__)
PathLike = Union[str, "os.PathLike[str]"]
_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------ set-up
@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank, the world size and its torch device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_runtime(cfg: Config) -> Runtime:
    """Pick the device and join the process group described by torchrun's environment.

    ``WORLD_SIZE > 1`` initialises ``torch.distributed`` (NCCL on GPUs, gloo on the CPU)
    unless the caller already did.
    """
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but CUDA is not available; use train.device=cpu or auto")
    use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    owns = False
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if world > 1:
            if use_cuda:
                torch.cuda.set_device(local_rank)
            timeout = timedelta(seconds=cfg.train.dist_timeout_s)  # a silent peer: error, not a hang
            dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", timeout=timeout)
            owns = True
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    return Runtime(rank, world, local_rank, device, owns)


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    """Seed torch, numpy's and Python's global RNGs per rank (the model is initialised before
    this, identically on all ranks). Our own randomness (plans, augmentation) never uses the
    global RNGs; this is for third-party code that does."""
    per_rank = (seed + rank) % 2**32  # np.random.seed takes 32 bits; train.seed may be 2**32 - 1
    torch.manual_seed(per_rank)
    np.random.seed(per_rank)
    random.seed(per_rank)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class Data:
    """The training and validation splits plus how to iterate them."""

    train: DataSource  # SampleIndex, TarIndex or ArrayDataset
    val: Optional[DataSource]
    num_classes: int
    pipeline_config: Any


def _read_exclude(path: Optional[str], root: Path) -> Optional[List[str]]:
    """The files listed in ``path`` (a ``check-data --output`` report, text or JSON, or absolute
    paths one a line), refused when the list was written for another dataset than ``root``."""
    if not path:
        return None
    try:
        return sorted(load_exclusion_list(Path(path).expanduser(), root))
    except OSError as e:
        raise DatasetError(f"data.exclude_file: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise DatasetError(f"data.exclude_file: {e}") from None


def build_data(cfg: Config) -> Data:
    """Index (or load) the training and validation splits named by ``cfg.data``.

    Raises:
        DatasetError: missing root, split, class folder or CIFAR batch file.
    """
    d = cfg.data
    root = Path(d.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data.root: {root} is not a directory")
    if d.dataset in ("cifar10", "cifar100"):
        from orderdp_dali.pipelines import CifarPipelineConfig

        train = load_cifar(root, d.dataset, "train")
        val = load_cifar(root, d.dataset, "val") if cfg.train.eval_every > 0 else None
        pipe = CifarPipelineConfig(size=int(train.images.shape[1]), dtype=d.dtype)
        return Data(train, val, len(train.classes), pipe)
    from orderdp_dali.pipelines import ImagePipelineConfig

    exclude = _read_exclude(d.exclude_file, root)
    if d.dataset == "tar":  # root/<split>/*.tar shards (orderdp_dali.data.tar)
        train = TarIndex.scan(root / d.train_split, cache_dir=d.cache_dir, exclude=exclude, rescan=d.rescan)
        val = None
        if cfg.train.eval_every > 0:  # shard labels index the training classes
            val = TarIndex.scan(root / d.val_split, cache_dir=d.cache_dir, exclude=exclude, classes=train.classes,
                                rescan=d.rescan)
    else:
        train = index_split(d, "train", exclude=exclude)  # class folders, or data.train_list
        val = None
        if cfg.train.eval_every > 0:  # no evaluation: the validation split need not exist
            val = index_split(d, "val", classes=train.classes, exclude=exclude)  # or data.val_list / val_labels_csv
    if val is not None and val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DatasetError(
            f"class folders differ between {train.root} and {val.root} (only in train: {only_train[:5]}, only in "
            f"val: {only_val[:5]}): labels would not match; give both splits the same class folders"
        )
    pipe = ImagePipelineConfig(crop=d.crop, val_resize=d.val_resize, val_crop=d.val_crop, dtype=d.dtype,
                               hw_decoder_load=d.hw_decoder_load)
    return Data(train, val, len(train.classes), pipe)


def build_iterators(cfg: Config, data: Data, policy: Any, rt: Runtime
                    ) -> Tuple[DALIPlanIterator, Optional[DALIPlanIterator]]:
    """The training iterator (this rank's shard of each plan) and the validation iterator."""
    from orderdp_dali.iterator import DALIPlanIterator

    common = dict(
        device="gpu" if rt.device.type == "cuda" else "cpu",
        device_id=rt.local_rank,
        rank=rt.rank,
        world_size=rt.world_size,
        num_threads=cfg.data.num_threads,
        prefetch_queue_depth=cfg.data.prefetch,
        pipeline_config=data.pipeline_config,
    )
    resolution = None
    if cfg.data.progressive is not None:  # each epoch's crop, decided with its plan (and so resumed with it)
        from orderdp_dali.progressive import resolution_for_epoch

        resolution = functools.partial(resolution_for_epoch, cfg=cfg.data.progressive)
    train_it = DALIPlanIterator(
        data.train,
        policy,
        cfg.train.batch_size,
        train=True,
        augment=cfg.data.augment,
        seed=cfg.train.seed,
        drop_last=cfg.data.drop_last,
        resolution=resolution,
        **common,
    )
    val_it = None
    if cfg.train.eval_every > 0:
        val_it = DALIPlanIterator(data.val, None, cfg.train.batch_size, train=False, seed=cfg.train.seed, **common)
    return train_it, val_it


def build_model_for(cfg: Config, num_classes: int, rt: Runtime) -> Tuple[nn.Module, nn.Module]:
    """(model to train, possibly DDP-wrapped; the bare model for checkpoints and evaluation)."""
    if 0 < cfg.model.num_classes < num_classes:
        raise ConfigError(
            f"model.num_classes: {cfg.model.num_classes} is fewer than the {num_classes} classes of the data"
        )
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    bare = build_model(cfg.model.name, cfg.model.num_classes or num_classes).to(rt.device)
    fixed = fixed_input_size(bare)
    if fixed is not None and cfg.data.progressive is not None:
        raise ConfigError(f"data.progressive: {cfg.model.name} takes only {fixed[0]}x{fixed[1]} inputs, but "
                          "progressive resizing changes the training crop between epochs")
    if fixed is not None and cfg.data.val_crop is not None and fixed != (cfg.data.val_crop, cfg.data.val_crop):
        raise ConfigError(f"data.val_crop: {cfg.model.name} takes only {fixed[0]}x{fixed[1]} inputs, "
                          f"validation would give it {cfg.data.val_crop}x{cfg.data.val_crop}")
    size = cfg.data.crop if cfg.data.dataset == "folder" else 32
    if fixed is not None and fixed != (size, size):
        raise ConfigError(
            f"model.name: {cfg.model.name} takes only {fixed[0]}x{fixed[1]} inputs and the data are {size}x{size}"
            + (f"; set data.crop={fixed[0]} (and data.val_resize >= it)" if cfg.data.dataset == "folder" else "")
        )
    if cfg.model.channels_last:
        bare = bare.to(memory_format=torch.channels_last)
    if cfg.train.compile:  # in place, before DDP wraps it: state_dict keys stay plain
        try:
            compile_model(bare, cfg.train.compile_mode, rt.device)
        except ValueError as e:
            raise ConfigError(f"train.compile: {e}") from None
    if not rt.distributed:
        return bare, bare
    ddp = nn.parallel.DistributedDataParallel(bare, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    return ddp, bare


def _forward(model: nn.Module, images: torch.Tensor, cfg: Config, rt: Runtime) -> torch.Tensor:
    """float32 logits of ``images``, in channels-last layout and under autocast as ``cfg`` says."""
    if cfg.model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = _AMP_DTYPES[cfg.train.amp]
    if dtype is None and images.dtype != torch.float32:
        images = images.float()  # data.dtype=float16 without autocast: the weights are float32
    with torch.autocast(device_type=rt.device.type, dtype=dtype, enabled=dtype is not None):
        return model(images).float()


def _all_reduce_sum(values: List[float], rt: Runtime) -> List[float]:
    """Sum ``values`` over ranks with one collective (a no-op on one process)."""
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


# ------------------------------------------------------------------ epochs
def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    it: DALIPlanIterator,
    epoch: int,
    cfg: Config,
    rt: Runtime,
    *,
    ema: Optional[WeightEma] = None,
    mixer: Optional[BatchMixer] = None,
    log_step: Optional[Callable[[int, torch.Tensor, float], None]] = None,
) -> Dict[str, Any]:
    """One pass over this rank's shard of the epoch's plan; returns the epoch's training metrics.

    Per-sample losses (``reduction="none"``) weighted by the plan's weights give the loss
    to back-propagate; the unweighted losses go to the policy (``it.update``). With a
    ``mixer`` each sample's loss is against its own mixed target (:mod:`orderdp_dali.mixing`).
    ``ema`` counts every optimizer step; ``log_step(step, loss, lr)`` is called every
    ``train.print_freq`` steps.
    """
    from tqdm import tqdm

    model.train()
    bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if mixer is not None:
        mixer.begin_epoch(epoch)
    steps = len(it)  # known before the epoch runs: the schedule below uses it
    planned = len(it.plan)
    resolution = it.resolution  # this epoch's training crop with progressive resizing
    weighted_sum = torch.zeros((), device=rt.device)
    step_t = torch.zeros((), dtype=torch.long, device=rt.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)
    raw_sum = torch.zeros((), device=rt.device)
    count = 0
    data_time = 0.0
    lr = optimizer.param_groups[0]["lr"]
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not (rt.is_main and cfg.train.progress), leave=False)
    start = time.perf_counter()
    try:
        batches = iter(it)
    except ValueError as e:  # drop_last with a shard smaller than a batch: name the settings
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} with data.drop_last=true: {e}") from None
    step = 0
    while True:
        t = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            break
        data_time += time.perf_counter() - t
        lr, momentum = schedule_at(cfg.schedule, cfg.optim.lr, cfg.train.epochs, epoch, step, steps)
        set_lr(optimizer, lr)
        if momentum is not None:  # schedule.cycle_momentum
            set_momentum(optimizer, momentum)
        if mixer is None:
            logits = _forward(model, batch["data"], cfg, rt)
            losses = F.cross_entropy(logits, batch["label"], reduction="none",
                                     label_smoothing=cfg.train.label_smoothing)
        else:
            images, targets = mixer(batch["data"], batch["label"])
            losses = mixed_losses(_forward(model, images, cfg, rt), targets.to(rt.device))
        loss = (losses * batch["weight"]).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.max_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.step(bare)
        it.update(batch["index"], losses)
        n = int(batch["index"].shape[0])  # host tensor: no device sync
        weighted_sum += loss.detach() * n
        raw_sum += losses.detach().sum()
        count += n
        # Remember on the device the first step whose loss is not finite (no host wait here);
        # every print_freq steps and before the epoch ends, all ranks look at it together.
        step_t += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step_t - 1, first_bad)
        step += 1
        if step % cfg.train.print_freq == 0 or step == steps:
            _stop_on_nonfinite_loss(first_bad, epoch, cfg, rt)
        if log_step is not None and step % cfg.train.print_freq == 0:
            log_step(step, loss.detach(), lr)
        bar.update(1)
        if bar.disable is False and (step % cfg.train.print_freq == 0 or step == steps):
            # .item() waits for the device: only every print_freq steps, never per step.
            bar.set_postfix(loss=f"{weighted_sum.item() / max(count, 1):.4f}", lr=f"{lr:.4g}")
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    elapsed = time.perf_counter() - start
    bar.close()
    memory = gpu_memory(rt.device)
    w_sum, r_sum, total = _all_reduce_sum([weighted_sum.item(), raw_sum.item(), float(count)], rt)
    return {
        "planned": planned,
        "steps": steps,
        "samples": int(total),
        "train_loss": w_sum / max(total, 1.0),
        "train_loss_unweighted": r_sum / max(total, 1.0),
        "lr": lr,
        "epoch_time": elapsed,
        "data_time": data_time,
        "images_per_s": total / elapsed if elapsed > 0 else 0.0,
        # this rank's start of the epoch's pass (reset and first scheduling, plus a build when
        # one was needed); "prestarted": done when the previous epoch ended (or at start-up),
        # outside this epoch's time
        "pipeline_start_s": it.last_pass.get("start_s"),
        "pipeline_prestarted": it.last_pass.get("prestarted"),
        "pipeline_built": it.last_pass.get("built"),
        **({"resolution": resolution} if resolution is not None else {}),
        **({"gpu_memory": memory} if memory is not None else {}),
    }


def gpu_memory(device: torch.device) -> Optional[Dict[str, float]]:
    """This GPU's memory in MiB (``None`` off CUDA): free and total as the driver sees them (DALI's
    pools included), and torch's own peak allocation and current reservation."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    mib = 2.0**20
    return {"free_mib": free / mib, "used_mib": (total - free) / mib, "total_mib": total / mib,
            "torch_max_allocated_mib": torch.cuda.max_memory_allocated(device) / mib,
            "torch_reserved_mib": torch.cuda.memory_reserved(device) / mib}


def _stop_on_nonfinite_loss(first_bad: torch.Tensor, epoch: int, cfg: Config, rt: Runtime) -> None:
    """Raise NonFiniteLossError on every rank if any rank's loss stopped being finite.

    Checked every print_freq steps, before the iterator ends the epoch, so the score table
    never receives a NaN and the last checkpoint is never overwritten with a broken model.
    """
    never = torch.iinfo(torch.long).max
    earliest = torch.where(first_bad >= 0, first_bad, torch.full_like(first_bad, never)).reshape(1)
    if rt.distributed:
        dist.all_reduce(earliest, op=dist.ReduceOp.MIN)  # one collective: every rank decides alike
    step = int(earliest.item())
    if step != never:
        raise NonFiniteLossError(
            f"epoch {epoch}, step {step}: the training loss is not finite (NaN or infinity); likely a learning "
            f"rate too high (optim.lr={cfg.optim.lr:g}), an fp16 overflow (train.amp={cfg.train.amp}) or broken "
            "inputs. The run stopped before the score table or the last checkpoint took it"
        )


@torch.no_grad()
def evaluate(
    model: nn.Module, it: DALIPlanIterator, cfg: Config, rt: Runtime, ema: Optional[nn.Module] = None
) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean loss over the whole validation split, summed over ranks.

    ``model`` is the bare (non-DDP) model: validation shards are unpadded, so ranks may run
    different step counts, which a DDP forward (it broadcasts buffers) would not survive.
    ``ema`` (the averaged weights) is validated on the same decoded batches, as ``val_*_ema``.
    With ``train.eval_flip`` the logits are those of each image and its mirror, averaged.
    """
    models = {"": model} if ema is None else {"": model, "_ema": ema}
    sums = torch.zeros(len(models), 4, dtype=torch.float64, device=rt.device)  # top1, top5, loss, count
    for m in models.values():
        m.eval()
    for batch in it:
        labels = batch["label"]
        for row, m in zip(sums, models.values()):
            forward = lambda images, m=m: _forward(m, images, cfg, rt)  # noqa: E731
            logits = flip_averaged(forward, batch["data"]) if cfg.train.eval_flip else forward(batch["data"])
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == labels[:, None]
            row[0] += hits[:, 0].sum()
            row[1] += hits.any(dim=1).sum()
            row[2] += F.cross_entropy(logits, labels, reduction="sum")
            row[3] += labels.shape[0]
    if rt.distributed:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    metrics: Dict[str, float] = {}
    for suffix, (top1, top5, loss, count) in zip(models, sums.tolist()):
        metrics.update({
            f"val_top1{suffix}": 100.0 * top1 / max(count, 1.0),
            f"val_top5{suffix}": 100.0 * top5 / max(count, 1.0),
            f"val_loss{suffix}": loss / max(count, 1.0),
        })
    metrics["val_samples"] = int(sums[0, 3].item())
    return metrics


def _sync_buffers(model: nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's BatchNorm statistics before evaluating (each rank updated its own)."""
    if rt.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def _should_evaluate(cfg: Config, epoch: int) -> bool:
    every = cfg.train.eval_every
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs)


# -------------------------------------------------------------- checkpoints
def _gather_iterator_state(it: DALIPlanIterator, rt: Runtime) -> Dict[str, Any]:
    """The iterator's state with every rank's DALI pipeline state in ``"pipelines"`` (on rank 0;
    a collective: every rank calls it). Each rank's pipeline has its own random state, and a
    resumed rank restores its own."""
    state = it.state_dict()
    if rt.distributed:
        gathered: Optional[List[Any]] = [None] * rt.world_size if rt.is_main else None
        dist.gather_object(state["pipelines"][rt.rank], gathered, dst=0)
        state["pipelines"] = gathered
    return state


def _checkpoint_state(epoch: int, model: nn.Module, optimizer: Any, scaler: Any, iterator_state: Dict[str, Any],
                      cfg: Config, fingerprint: str, planned: List[int], record: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,  # the next epoch to run
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "iterator": iterator_state,  # plain data and tensors: loads with weights_only=True
        "config": cfg.to_dict(),
        "dataset": fingerprint,
        "planned": list(planned),
        # The finished epoch's metrics line before validation: logged from here on resume if
        # the run stopped between this checkpoint and the line (e.g. during validation).
        "record": json.dumps(record),
    }


def _save(state: Dict[str, Any], out: Path, epoch_done: int, cfg: Config) -> None:
    last = out / LAST
    save_checkpoint(state, last)
    every = cfg.train.save_every
    if every and epoch_done % every == 0:
        keep = out / f"epoch_{epoch_done:04d}.pth"
        try:
            if keep.exists():
                keep.unlink()
            os.link(last, keep)  # same bytes, no second write; last.pth is replaced, not modified
        except OSError:
            save_checkpoint(state, keep)


class Resumed(NamedTuple):
    """What :func:`_resume` restored: the next epoch, the plan sizes so far, the metrics line of
    the epoch before it as the checkpoint recorded it (if any), the checkpoint's config, and the
    recipe changes ``--allow-changes`` let through (``key -> (old, new)``)."""

    epoch: int
    planned: List[int]
    record: Optional[Dict[str, Any]]
    config: Dict[str, Any]
    changes: Dict[str, Tuple[Any, Any]]
    steps_done: int = 0


def _resume(
    path: Path, model: nn.Module, optimizer: Any, scaler: Any, it: DALIPlanIterator, fingerprint: str, cfg: Config,
    allow_changes: bool = False, ema: Optional[WeightEma] = None,
) -> Resumed:
    """Load ``path`` into the training objects after checking that this run may continue it
    (:func:`~orderdp_dali.checkpoint.check_resumable`: a changed recipe only with ``allow_changes``).
    An EMA the checkpoint lacks (switched on at this resume) starts from the resumed weights."""
    state = load_checkpoint(path)
    changes = check_resumable(state, path, fingerprint, it.policy, cfg.to_dict(), allow_changes)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        it.load_state_dict(state["iterator"])
        if ema is not None:
            if state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            else:
                ema.reset(model)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {first_line(e) or type(e).__name__}") from e
    epoch = int(state["epoch"])
    if it.epoch != epoch:
        raise CheckpointError(f"{path}: iterator is at epoch {it.epoch} but the checkpoint says {epoch}")
    record = json.loads(state["record"]) if isinstance(state.get("record"), str) else None
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    return Resumed(epoch, [int(p) for p in state.get("planned", [])], record, saved, changes,
                   int(state.get("steps_done", 0)))


def _config_changes_record(epoch: int, changes: Dict[str, Tuple[Any, Any]]) -> Dict[str, Any]:
    """The metrics line that records recipe changes let through on resume. Its ``kind`` tells it
    apart from the epochs' lines (readers of epochs skip it); its ``epoch`` is the first epoch
    trained with them, so a resume before that epoch drops it with the epochs' lines."""
    return {"kind": "config_changes", "epoch": epoch, "config": f"config.{epoch}.json",
            "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}


# --------------------------------------------------------------------- run
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
            start, self.planned, last_record, resumed = 0, [], None, None
            ckpt = resolve_resume(self.resume, out)
            peeked = peek_checkpoint(ckpt) if ckpt is not None else None
            other = another_run(ckpt, peeked, out) if ckpt is not None and rt.is_main else None
            if other is not None and not self.overwrite:
                _refuse_other_run(out, ckpt, other)
            if ckpt is not None:
                resumed = _resume(ckpt, self.bare, self.optimizer, self.scaler, self.train_it, self.fingerprint,
                                  cfg, self.allow_changes, self.ema)
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
                if other is not None:
                    _drop_config_records(out)
                # config.json describes the run's first epochs; a resume with other settings adds config.<start>.json
                record_config(out, cfg.to_dict(), start, None if resumed is None else resumed.config)
                logged = any(r.get("epoch") == start - 1 and "kind" not in r for r in kept)
                if cfg.train.tensorboard:  # drops what the interrupted run logged after its checkpoint
                    from orderdp_dali.tensorboard_log import TensorBoardLog

                    self.tensorboard = TensorBoardLog(out / "tensorboard", purge_step=self.steps_done)
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
            # the plan was chosen, copied before training and compared after it, outside the timed epoch.
            policy = self.train_it.policy
            before = (ranking.snapshot(self.train_it.plan.indices, policy.scores.values, policy.scores.seen)
                      if policy.ranks_by_loss else None)
            cpu = time.process_time()  # every thread of this process, DALI's included
            record.update(train_one_epoch(self.model, self.optimizer, self.scaler, self.train_it, epoch, cfg, rt,
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
                iterator_state = _gather_iterator_state(self.train_it, rt)  # every rank's pipeline state
                if rt.is_main:
                    state = _checkpoint_state(epoch + 1, self.bare, self.optimizer, self.scaler, iterator_state, cfg,
                                              self.fingerprint, self.planned, record)
                    state["run_id"] = self.run_id  # which run this is: a resume into another folder compares it
                    state["steps_done"] = self.steps_done
                    state["ema"] = None if self.ema is None else self.ema.state_dict()
                    _save(state, out, epoch + 1, cfg)
            if self.val_it is not None and _should_evaluate(cfg, epoch):
                self.phase = f"epoch {epoch} (validation)"
                _sync_buffers(self.bare, rt)
                if self.ema is not None:
                    _sync_buffers(self.ema.module, rt)
                t = time.perf_counter()
                record.update(evaluate(self.bare, self.val_it, cfg, rt, None if self.ema is None else self.ema.module))
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


# --------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderdp-dali train",
        description="Train a classifier with a data-pruning policy on a DALI pipeline (DDP via torchrun).",
    )
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5 policy.name=orderdp"
    )
    parser.add_argument(
        "--resume", metavar="PATH|auto", help="checkpoint to continue, or 'auto' (output dir's last.pth)"
    )
    parser.add_argument("--output-dir", help="override train.output_dir")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    parser.add_argument(
        "--overwrite", action="store_true", help="start afresh in an output dir that holds a run, replacing it"
    )
    parser.add_argument(
        "--allow-changes", action="store_true",
        help="with --resume: continue with a recipe other than the checkpoint's (lr, batch size, ...); the change is "
             "recorded in metrics.jsonl and config.<epoch>.json",
    )
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback too (or set ORDERDP_DALI_DEBUG=1)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``orderdp-dali train`` command: 0 when the run ends, 2 for bad settings, data or checkpoints,
    1 for other errors, 130 after Ctrl-C and 143 after SIGTERM (:mod:`orderdp_dali.interrupts`: the
    run unwinds as on an error, leaving its last checkpoint and no temporary file; a second signal
    exits at once, without a traceback)."""
    parser = get_args_parser()
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = args.debug or os.environ.get("ORDERDP_DALI_DEBUG", "") not in ("", "0")
    with signals_as_interrupts("orderdp-dali train") as signalled:
        try:
            cfg = load_config(args.config, args.overrides)
            if args.print_config:
                print(json.dumps(cfg.to_dict(), indent=2))
                return 0
            run_training(cfg, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite,
                         allow_changes=args.allow_changes)
        except KeyboardInterrupt:
            print(f"orderdp-dali train: interrupted ({signalled.name})", file=sys.stderr)
            return signalled.exit_code
        except Exception as e:
            if signalled.signum is not None and not debug:  # the signal surfaced inside a library's error
                print(f"orderdp-dali train: interrupted ({signalled.name})", file=sys.stderr)
                return signalled.exit_code
            if debug:
                raise
            code, message = describe_error(e)
            print(f"orderdp-dali train: error: {message}", file=sys.stderr)
            return code
    return 0


def describe_error(error: BaseException) -> Tuple[int, str]:
    """(exit code, one line naming the cause and the remedy) for an error that ends a run.

    Bad settings, data and checkpoints exit 2; everything else 1. Errors we do not know get
    their type and first line, and the hint that ``--debug`` shows the traceback.
    """
    if isinstance(error, (ConfigError, DatasetError, CheckpointError)):
        return 2, str(error)
    if isinstance(error, (DecodeError, DistributedError, NonFiniteLossError)):
        return 1, str(error)
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        if error.errno == errno.ENOSPC:
            return 1, f"no space left on the device{where}: free some, or choose another --output-dir"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return 1, f"cannot write{where}: {error.strerror}; choose a writable --output-dir"
        return 1, f"{error.strerror or error}{where}"
    if isinstance(error, ImportError):  # torch or DALI loading lazily (e.g. under ulimit -v)
        from orderdp_dali.cli import describe_import_error

        return 1, describe_import_error(error)
    if "bad_alloc" in str(error) or isinstance(error, MemoryError):
        return 1, (
            "out of memory (std::bad_alloc): lower train.batch_size, data.crop or data.num_threads "
            "(run with --debug for the traceback)"
        )
    return 1, f"{type(error).__name__}: {first_line(error)} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
