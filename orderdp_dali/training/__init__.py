"""Training a classifier with a data-pruning policy on a DALI pipeline, split by job.

:mod:`~orderdp_dali.training.runtime` (rank, device, seeds), :mod:`~orderdp_dali.training.builders`
(data, iterators, model), :mod:`~orderdp_dali.training.loop` (an epoch, evaluation),
:mod:`~orderdp_dali.training.checkpointing` (the run's checkpoint saver) and
:mod:`~orderdp_dali.training.run` (:class:`TrainingRun`, :func:`run_training`). The command
line is :mod:`orderdp_dali.cli.train`.
"""
from orderdp_dali.training.builders import Data, build_data, build_iterators, build_model_for
from orderdp_dali.training.checkpointing import Resumed, RunCheckpoints
from orderdp_dali.training.loop import evaluate, train_one_epoch
from orderdp_dali.training.run import TrainingRun, run_training
from orderdp_dali.training.runtime import Runtime, gpu_memory, init_runtime, seed_everything

__all__ = [
    "Data",
    "Resumed",
    "RunCheckpoints",
    "Runtime",
    "TrainingRun",
    "build_data",
    "build_iterators",
    "build_model_for",
    "evaluate",
    "gpu_memory",
    "init_runtime",
    "run_training",
    "seed_everything",
    "train_one_epoch",
]
