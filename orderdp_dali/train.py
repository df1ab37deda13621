"""``python -m orderdp_dali.train``: the ``orderdp-dali train`` command, as torchrun launches it.

::

    torchrun --nproc_per_node=8 -m orderdp_dali.train --config configs/imagenet_r50_orderdp.yaml \\
        data.root=$IMAGENET_ROOT [--resume auto]

The training library is :mod:`orderdp_dali.training` (re-exported here, so that
``from orderdp_dali.train import run_training`` keeps working); the command line is
:mod:`orderdp_dali.cli.train`.
"""
import sys

if __name__ == "__main__":  # torch failing to load is one line, not a traceback
    from orderdp_dali.cli import exit_if_unloadable

    exit_if_unloadable("train", "torch")

from orderdp_dali.cli.train import get_args_parser, main  # noqa: E402
from orderdp_dali.training import (  # noqa: E402
    Data,
    Runtime,
    TrainingRun,
    build_data,
    build_iterators,
    build_model_for,
    evaluate,
    gpu_memory,
    init_runtime,
    run_training,
    seed_everything,
    train_one_epoch,
)

__all__ = [
    "Data",
    "Runtime",
    "TrainingRun",
    "build_data",
    "build_iterators",
    "build_model_for",
    "evaluate",
    "get_args_parser",
    "gpu_memory",
    "init_runtime",
    "main",
    "run_training",
    "seed_everything",
    "train_one_epoch",
]

if __name__ == "__main__":
    sys.exit(main())
