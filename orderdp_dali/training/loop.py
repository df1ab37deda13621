"""The training loop: one epoch of weighted per-sample losses fed back to the policy, the
non-finite-loss stop, and evaluation (top-1/top-5, optionally of the EMA weights too)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from orderdp_dali.config import Config
from orderdp_dali.ema import WeightEma
from orderdp_dali.errors import ConfigError, NonFiniteLossError
from orderdp_dali.lr_schedule import schedule_at, set_lr, set_momentum
from orderdp_dali.mixing import BatchMixer, mixed_losses
from orderdp_dali.training.runtime import Runtime, all_reduce_sum, gpu_memory
from orderdp_dali.tta import flip_averaged

if TYPE_CHECKING:  # the iterator pulls in DALI
    from orderdp_dali.iterator import DALIPlanIterator

__all__ = ["evaluate", "forward", "should_evaluate", "stop_on_nonfinite_loss", "sync_buffers", "train_one_epoch"]

_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def forward(model: nn.Module, images: torch.Tensor, cfg: Config, rt: Runtime) -> torch.Tensor:
    """float32 logits of ``images``, in channels-last layout and under autocast as ``cfg`` says."""
    if cfg.model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    dtype = _AMP_DTYPES[cfg.train.amp]
    if dtype is None and images.dtype != torch.float32:
        images = images.float()  # data.dtype=float16 without autocast: the weights are float32
    with torch.autocast(device_type=rt.device.type, dtype=dtype, enabled=dtype is not None):
        return model(images).float()


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
        try:
            lr, momentum = schedule_at(cfg.schedule, cfg.optim.lr, cfg.train.epochs, epoch, step, steps)
        except ValueError as e:  # torch_steps: too few steps for the phases (known only once the plan is)
            raise ConfigError(f"schedule: {e} (schedule.torch_steps={cfg.schedule.torch_steps}, schedule.pct_start="
                              f"{cfg.schedule.pct_start}, {steps} steps in epoch {epoch} of {cfg.train.epochs}): "
                              "train longer, or set schedule.torch_steps=false") from None
        set_lr(optimizer, lr)
        if momentum is not None:  # schedule.cycle_momentum
            set_momentum(optimizer, momentum)
        if mixer is None:
            logits = forward(model, batch["data"], cfg, rt)
            losses = F.cross_entropy(logits, batch["label"], reduction="none",
                                     label_smoothing=cfg.train.label_smoothing)
        else:
            images, targets = mixer(batch["data"], batch["label"])
            losses = mixed_losses(forward(model, images, cfg, rt), targets.to(rt.device))
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
            stop_on_nonfinite_loss(first_bad, epoch, cfg, rt)
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
    w_sum, r_sum, total = all_reduce_sum([weighted_sum.item(), raw_sum.item(), float(count)], rt)
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



def stop_on_nonfinite_loss(first_bad: torch.Tensor, epoch: int, cfg: Config, rt: Runtime) -> None:
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
            run = lambda images, m=m: forward(m, images, cfg, rt)  # noqa: E731
            logits = flip_averaged(run, batch["data"]) if cfg.train.eval_flip else run(batch["data"])
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


def sync_buffers(model: nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's BatchNorm statistics before evaluating (each rank updated its own)."""
    if rt.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def should_evaluate(cfg: Config, epoch: int) -> bool:
    every = cfg.train.eval_every
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs)
