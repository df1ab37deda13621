"""TensorBoard scalars of a training run (``train.tensorboard: true``; rank 0 only), beside the
JSON-lines metrics log, which stays the record of a run.

Every scalar's step is the number of optimizer steps trained so far in the run. With a
pruning policy the epochs have different lengths, so this axis is one of cost, and the
per-step loss (every ``train.print_freq`` steps) and the per-epoch figures share it. A
resumed run writes into the same folder and drops what the interrupted run logged after its
last checkpoint (``purge_step``), so an epoch trained twice is shown once.

Needs the optional extra: ``pip install 'orderdp-dali[tensorboard]'``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Union

from orderdp_dali.errors import ConfigError

__all__ = ["EPOCH_SCALARS", "TENSORBOARD_DIR", "TensorBoardLog", "require_tensorboard"]

#: The event files' folder in a run's output folder.
TENSORBOARD_DIR = "tensorboard"

#: TensorBoard tag -> the epoch record's field (``metrics.jsonl``) it plots; absent fields are skipped.
EPOCH_SCALARS = {
    "train/loss": "train_loss",
    "train/loss_unweighted": "train_loss_unweighted",
    "train/lr": "lr",
    "val/top1": "val_top1",
    "val/top5": "val_top5",
    "val/loss": "val_loss",
    "val/top1_ema": "val_top1_ema",
    "val/top5_ema": "val_top5_ema",
    "val/loss_ema": "val_loss_ema",
    "data/samples_kept": "planned",
    "data/fraction_saved": "fraction_saved",
    "data/never_trained": "never_trained",
    "time/epoch_s": "epoch_time",
    "time/images_per_s": "images_per_s",
    "epoch": "epoch",
}


_MISSING = ("train.tensorboard: needs the tensorboard package, which is not installed; "
            "pip install 'orderdp-dali[tensorboard]' (or tensorboard), or set train.tensorboard=false")


def require_tensorboard() -> None:
    """Raise ConfigError naming ``train.tensorboard`` unless the tensorboard package can be imported."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(_MISSING) from None


class TensorBoardLog:
    """Writes scalars to ``log_dir`` with ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the event files' folder.
        purge_step: the first step a resumed run logs (its checkpoint's steps + 1); events an
            earlier writer logged at or after it are dropped (0 for a fresh run).

    Raises:
        ConfigError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: Union[str, Path], purge_step: int = 0) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        """One training step's loss (this rank's batch, weighted as back-propagated) and lr."""
        self._writer.add_scalar("step/loss", loss, global_step)
        self._writer.add_scalar("step/lr", lr, global_step)

    def epoch(self, global_step: int, record: Mapping[str, Any]) -> None:
        """An epoch's record (the metrics line) at the step count its end reached."""
        for tag, key in EPOCH_SCALARS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag, value, global_step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
