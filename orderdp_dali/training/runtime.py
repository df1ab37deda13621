"""Where a training process runs: rank, world size and device from torchrun's environment,
the process group, the per-rank seeds, and the device's memory as the metrics report it."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from orderdp_dali.config import Config
from orderdp_dali.errors import ConfigError

__all__ = ["Runtime", "all_reduce_sum", "gpu_memory", "init_runtime", "seed_everything"]


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


def all_reduce_sum(values: List[float], rt: Runtime) -> List[float]:
    """Sum ``values`` over ranks with one collective (a no-op on one process)."""
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
