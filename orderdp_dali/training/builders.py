"""What a training run is built from: the data splits, the DALI iterators over them and the
model (DDP-wrapped when distributed), each checked against the config before training starts."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import torch
from torch import nn

from orderdp_dali.config import Config
from orderdp_dali.data import DataSource, TarIndex, index_split, load_cifar, load_exclusion_list
from orderdp_dali.errors import ConfigError, DatasetError
from orderdp_dali.models import build_model, compile_model, fixed_input_size
from orderdp_dali.training.runtime import Runtime

if TYPE_CHECKING:  # the iterator pulls in DALI: imported where one is built
    from orderdp_dali.iterator import DALIPlanIterator

__all__ = ["Data", "build_data", "build_iterators", "build_model_for"]


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
    jpeg = cfg.data.dataset in ("folder", "tar")  # cropped to data.crop; CIFAR's arrays stay 32x32
    size = cfg.data.crop if jpeg else 32
    if fixed is not None and fixed != (size, size):
        raise ConfigError(
            f"model.name: {cfg.model.name} takes only {fixed[0]}x{fixed[1]} inputs and the data are {size}x{size}"
            + (f"; set data.crop={fixed[0]} (and data.val_resize >= it)" if jpeg else "")
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
