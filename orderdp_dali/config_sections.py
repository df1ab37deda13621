"""The training config's schema: one frozen dataclass per section, each field with its allowed values.

Built and checked by :meth:`orderdp_dali.config.Config.from_dict`; the fields are declared with
:func:`~orderdp_dali.config_build.checked_field` (``_opt`` here, for short), the checks across
fields are in :mod:`orderdp_dali.config_checks`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from orderdp_dali.config_build import checked_field as _opt
from orderdp_dali.model_names import COMPILE_MODES

__all__ = ["MAX_SEED", "RETIRED_KEYS", "DataConfig", "EmaConfig", "MixupConfig", "ModelConfig", "OptimConfig",
           "PolicyConfig", "ProgressiveConfig", "ScheduleConfig", "TrainConfig"]

# The largest seed: numpy's global seeding (np.random.seed, done for third-party code) takes 32-bit
# seeds, so a larger one would fail only after the data were indexed. Checked up front instead.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ProgressiveConfig:
    """Progressive resizing (FFCV's rule): the training crop ramps linearly from ``start_res`` at
    ``start_epoch`` to ``end_res`` at ``end_epoch``, rounded to a multiple of ``step``; before the
    ramp it is ``start_res``, after it ``end_res`` (see :func:`orderdp_dali.progressive.resolution_for_epoch`).
    Small images early are cheap to decode, augment and train on; the end of training sees full size."""

    start_res: int = _opt(160, lo=8, hi=4096)
    end_res: int = _opt(192, lo=8, hi=4096)
    start_epoch: int = _opt(0, lo=0)
    end_epoch: int = _opt(0, lo=0)
    step: int = _opt(32, lo=1, hi=4096)


@dataclass(frozen=True)
class DataConfig:
    """Where the samples come from and how DALI reads them.

    ``dataset``: ``folder`` (ImageNet layout: ``root/<train_split>/<class>/*.JPEG`` and
    ``root/<val_split>/...``), ``tar`` (webdataset-style shards ``root/<train_split>/*.tar``,
    see :mod:`orderdp_dali.data.tar`), ``cifar10`` or ``cifar100`` (python pickle batches under
    ``root``). ``augment=false`` trains on deterministic inputs (center crop / no
    pad-crop or flip). One DALI pipeline per rank serves the whole run, seeded from
    (train.seed, rank); checkpoints keep every rank's pipeline state, so a resumed run draws
    the same crops and flips as an uninterrupted one.
    ``num_threads``: DALI's CPU threads per rank (file reading, CPU decoding);
    ``prefetch``: batches decoded ahead. ``dtype``: the images' type (``float16`` halves
    the pipeline's output; the model still runs under ``train.amp``). ``hw_decoder_load``:
    the share of JPEGs the GPU's hardware decoder takes (A100/H100/H200).
    ``train_list`` / ``val_list``: a file list (``<relative path> <label>`` lines, paths
    relative to the split folder) instead of class folders; ``classes_file`` names the
    list's classes (line i = class i). ``val_labels_csv``: the split folder ``val_split`` is
    flat and Kaggle's ``LOC_val_solution.csv`` labels it. These files are relative to
    ``root`` (see :mod:`orderdp_dali.data.file_lists`).
    ``val_resize`` / ``val_crop``: validation resizes the shorter side to ``val_resize`` and
    takes the center ``val_crop`` square (default ``crop``: unchanged behaviour); set them apart
    to validate at another resolution than the training crop (FFCV validates at 256).
    ``progressive``: progressive resizing of the training crop, one size per epoch (see
    :class:`ProgressiveConfig`; off by default: every epoch trains at ``crop``). The size is
    fed to the one pipeline with each batch, so no pipeline is rebuilt for it.
    ``rescan``: walk the class folders (index the shards) even when the index cache in
    ``cache_dir`` looks current. The cache notices added, removed and renamed files by their
    folders' mtimes and ctimes; on a file system whose ctimes cannot be trusted, a folder whose
    mtime was set back (``tar x``, ``rsync -a``) after a change is only seen by a rescan.
    """

    dataset: str = _opt("folder", choices=("folder", "tar", "cifar10", "cifar100"))
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    crop: int = _opt(224, lo=1, hi=4096)
    val_resize: int = _opt(256, lo=1, hi=8192)
    val_crop: Optional[int] = _opt(None, lo=1, hi=4096)
    progressive: Optional[ProgressiveConfig] = None
    augment: bool = True
    dtype: str = _opt("float32", choices=("float32", "float16"))
    hw_decoder_load: float = _opt(0.65, lo=0.0, hi=1.0)
    num_threads: int = _opt(4, lo=1)
    prefetch: int = _opt(2, lo=1)
    drop_last: bool = False
    exclude_file: Optional[str] = None
    cache_dir: Optional[str] = None
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    classes_file: Optional[str] = None
    val_labels_csv: Optional[str] = None
    rescan: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Any torchvision classification model by name, any timm model as ``timm/<name>`` (e.g.
    ``timm/resnet50d``; ``timm.list_models("resnet*")`` lists names), ``cifar_resnet{18,34,50,101}``
    (3x3 stem, no max-pool, for 32x32 inputs) or ``tiny`` (a small CNN for CPU tests), all
    randomly initialised. ``num_classes=0`` takes the number of classes of the training data."""

    name: str = "resnet50"
    num_classes: int = _opt(0, lo=0)
    channels_last: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """``sgd`` (momentum, nesterov), ``lars`` or ``lamb`` (timm's), or ``lars_release`` (the research
    release's LARS rule, :class:`orderdp_dali.lars.ReleaseLars`: the trust ratio scales the
    momentum step, clamped to [0, 50], gradients clamped to [-10, 10]; with
    ``decay_norm_and_bias=true`` BatchNorm weights and biases are adapted and decayed as in the
    release). ``lr`` is the peak LR. ``eps`` may be 0 except for LAMB (the release's LARS has 0).
    ``momentum`` is replaced step by step when ``schedule.cycle_momentum`` is on."""

    name: str = _opt("sgd", choices=("sgd", "lars", "lamb", "lars_release"))
    lr: float = _opt(0.1, lo=0.0, lo_open=True)
    momentum: float = _opt(0.9, lo=0.0, hi=1.0, hi_open=True)
    nesterov: bool = False
    weight_decay: float = _opt(1e-4, lo=0.0)
    decay_norm_and_bias: bool = True
    trust_coeff: float = _opt(0.001, lo=0.0, lo_open=True)
    eps: float = _opt(1e-8, lo=0.0)
    betas: Tuple[float, ...] = (0.9, 0.999)
    max_grad_norm: Optional[float] = _opt(None, lo=0.0, lo_open=True)


@dataclass(frozen=True)
class ScheduleConfig:
    """LR as a function of training progress ``p = epoch + step / steps_this_epoch``.

    ``onecycle`` (``pct_start``, ``div_factor``, ``final_div_factor``), ``cosine`` (linear
    warm-up over ``warmup_epochs``, then cosine to ``min_lr``), ``step`` (times ``gamma``
    at each of ``milestones``, in epochs; optional warm-up) or ``constant``.

    OneCycle options of torch's ``OneCycleLR``, which the research release uses with its defaults:
    ``cycle_momentum`` sets the optimizer's momentum (LAMB: beta1) each step, from
    ``max_momentum`` down to ``base_momentum`` at the LR's peak and back (torch's default is on;
    ours is off: a constant ``optim.momentum``). ``torch_steps`` counts the phases in steps as
    torch does (warm-up ends at step ``pct_start x epochs x steps_this_epoch - 1``), for an exact
    match with the release's LR; off, the schedule is a function of progress in epochs.
    """

    name: str = _opt("onecycle", choices=("onecycle", "cosine", "step", "constant"))
    warmup_epochs: float = _opt(0.0, lo=0.0)
    pct_start: float = _opt(0.25, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    div_factor: float = _opt(25.0, lo=1.0)
    final_div_factor: float = _opt(1e4, lo=1.0)
    min_lr: float = _opt(0.0, lo=0.0)
    milestones: Tuple[float, ...] = (30.0, 60.0, 80.0)
    gamma: float = _opt(0.1, lo=0.0, lo_open=True)
    cycle_momentum: bool = False
    base_momentum: float = _opt(0.85, lo=0.0, hi=1.0, hi_open=True)
    max_momentum: float = _opt(0.95, lo=0.0, hi=1.0, hi_open=True)
    torch_steps: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    """A registered pruning policy (``full``, ``uniform``, ``rs2``, ``infobatch``, ``orderdp``) and
    its hyper-parameters, e.g. ``{random_len_ratio: 0.75, top_q_ratio: 0.8}`` for OrderDP.
    The policy's seed is ``train.seed`` and its ``num_epochs`` is ``train.epochs``."""

    name: str = "full"
    params: Dict[str, Any] = _opt({})


@dataclass(frozen=True)
class EmaConfig:
    """An exponential moving average of the weights (timm's ``ModelEmaV3``; see :mod:`orderdp_dali.ema`).

    ``decay``: the average's decay per update (``null``: no EMA, the default; ImageNet recipes use
    0.9998-0.99998 per step); ``every``: update it every N optimizer steps (the decay applies per
    update). It is validated beside the raw model (``val_top1_ema``, ...) and saved in checkpoints.
    """

    decay: Optional[float] = _opt(None, lo=0.0, hi=1.0, hi_open=True)
    every: int = _opt(1, lo=1)


@dataclass(frozen=True)
class MixupConfig:
    """Mixup / CutMix of the training batches (timm's ``Mixup``, its argument names; see
    :mod:`orderdp_dali.mixing`). Off while both alphas are 0 (the default).

    ``prob``: the chance a batch (``mode=batch``), pair or element is mixed; ``switch_prob``:
    the chance of CutMix rather than Mixup when both alphas are set; ``correct_lam``: CutMix's
    lambda from the clipped box's area. The mixed targets are smoothed by ``train.label_smoothing``.
    """

    mixup_alpha: float = _opt(0.0, lo=0.0)
    cutmix_alpha: float = _opt(0.0, lo=0.0)
    prob: float = _opt(1.0, lo=0.0, hi=1.0)
    switch_prob: float = _opt(0.5, lo=0.0, hi=1.0)
    mode: str = _opt("batch", choices=("batch", "pair", "elem"))
    correct_lam: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The loop: ``batch_size`` is per rank (global batch = batch_size x world size).

    ``amp``: ``none``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler).
    ``eval_every``: validate every N epochs and after the last (0: never).
    ``save_every``: besides ``last.pth`` (every epoch), keep ``epoch_NNNN.pth`` every N
    epochs (0: none).
    ``dist_timeout_s``: how long a collective (gradient all-reduce, score sync) waits for
    the other ranks before this rank gives up with an error instead of hanging (a rank that
    *died* is usually noticed at once, through its closed connection).
    ``compile``: ``torch.compile`` the model (in place, before DDP wraps it) with
    ``compile_mode``; checkpoints are the same either way.
    ``ema``, ``mixup``: see :class:`EmaConfig`, :class:`MixupConfig`.
    ``eval_flip``: validate on the mean logits of each image and its horizontal mirror.
    ``tensorboard``: rank 0 also writes TensorBoard scalars to ``<output_dir>/tensorboard``
    (the optional extra ``orderdp-dali[tensorboard]``).
    """

    epochs: int = _opt(90, lo=1)
    batch_size: int = _opt(128, lo=1)
    seed: int = _opt(0, lo=0, hi=MAX_SEED)
    device: str = _opt("auto", choices=("auto", "cpu", "cuda"))
    amp: str = _opt("none", choices=("none", "bf16", "fp16"))
    label_smoothing: float = _opt(0.0, lo=0.0, hi=1.0, hi_open=True)
    eval_every: int = _opt(1, lo=0)
    print_freq: int = _opt(50, lo=1)
    output_dir: str = "runs/default"
    checkpoint: bool = True
    save_every: int = _opt(0, lo=0)
    progress: bool = True
    deterministic: bool = False
    dist_timeout_s: int = _opt(1800, lo=1)
    compile: bool = False
    compile_mode: str = _opt("default", choices=COMPILE_MODES)
    ema: EmaConfig = field(default_factory=EmaConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    eval_flip: bool = False
    tensorboard: bool = False


# Keys of earlier versions, with what replaced them (a clearer error than "unknown key").
REMOVED_KEYS = {
    "data.py_workers": "files are read by DALI's own threads (data.num_threads), not by worker processes",
    "data.reseed_every_epoch": "augmentation is seeded once per run from (train.seed, rank) and resumed exactly "
                               "from the checkpoint's pipeline state",
}

# Keys users bring from other trainers that are spelled otherwise here, with where the setting lives.
ELSEWHERE_KEYS = {
    "train.mixup.label_smoothing": "the mixed targets are smoothed by train.label_smoothing (one setting for "
                                   "mixed and unmixed targets); set that instead",
}

RETIRED_KEYS = {
    **{key: f"no longer a setting: {why}; remove it" for key, why in REMOVED_KEYS.items()},
    **{key: f"not a setting: {where}" for key, where in ELSEWHERE_KEYS.items()},
}
