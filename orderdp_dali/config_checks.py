"""The training config's checks across fields and against the registries (models, policies).

Each field's own type and range is checked as the sections are built
(:mod:`orderdp_dali.config_build`); what needs two fields, or a look at torchvision, timm or the
policy registry, is checked here, after, by :func:`check_sections`.
"""
from __future__ import annotations

import difflib
import inspect
import re
import typing
from typing import Union

from orderdp_dali.config_sections import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    PolicyConfig,
    ScheduleConfig,
    TrainConfig,
)
from orderdp_dali.errors import ConfigError
from orderdp_dali.model_names import check_timm_name

__all__ = ["CUSTOM_MODELS", "check_sections"]

CUSTOM_MODELS = ("tiny", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50", "cifar_resnet101")



def check_sections(data: DataConfig, model: ModelConfig, optim: OptimConfig, schedule: ScheduleConfig,
                   policy: PolicyConfig, train: TrainConfig) -> None:
    """Raise a ConfigError naming the key if the built sections do not fit together."""
    if not data.root:
        raise ConfigError("data.root: required (the dataset folder), e.g. data.root=/datasets/imagenet")
    _check_resolution_keys(data, train)
    _check_file_list_keys(data)
    _check_model_name(model.name)
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas: need two numbers in [0, 1), got {list(optim.betas)}")
    if optim.nesterov and (optim.name != "sgd" or optim.momentum == 0):
        raise ConfigError("optim.nesterov: needs optim.name=sgd with momentum > 0")
    if optim.eps == 0 and optim.name == "lamb":
        raise ConfigError("optim.eps: LAMB divides by sqrt(v) + eps; need eps > 0 (0 suits only the LARS optimizers)")
    sched = schedule
    if (sched.cycle_momentum or sched.torch_steps) and sched.name != "onecycle":
        key = "cycle_momentum" if sched.cycle_momentum else "torch_steps"
        raise ConfigError(f"schedule.{key}: only with schedule.name=onecycle (got {sched.name})")
    if sched.base_momentum > sched.max_momentum:
        raise ConfigError(
            f"schedule.base_momentum: {sched.base_momentum} exceeds schedule.max_momentum={sched.max_momentum}"
        )
    if sched.warmup_epochs > train.epochs:
        raise ConfigError(f"schedule.warmup_epochs: {sched.warmup_epochs} exceeds train.epochs={train.epochs}")
    if list(sched.milestones) != sorted(sched.milestones) or any(m < 0 for m in sched.milestones):
        raise ConfigError(
            f"schedule.milestones: need non-negative epochs in increasing order, got {list(sched.milestones)}"
        )
    _check_policy(policy, train)


def _check_resolution_keys(data: DataConfig, train: TrainConfig) -> None:
    """Validation crop within its resize; a progressive ramp that fits the run and its step."""
    images = data.dataset in ("folder", "tar")
    if not images and (data.val_crop is not None or data.progressive is not None):
        key = "data.val_crop" if data.val_crop is not None else "data.progressive"
        raise ConfigError(f"{key}: only for JPEG datasets (data.dataset=folder or tar); {data.dataset} keeps its "
                          "32x32 images")
    if images:
        val_crop, name = (data.crop, "data.crop") if data.val_crop is None else (data.val_crop, "data.val_crop")
        if data.val_resize < val_crop:
            raise ConfigError(f"data.val_resize: {data.val_resize} is smaller than {name}={val_crop}")
    p = data.progressive
    if p is None:
        return
    if not data.augment:
        raise ConfigError("data.progressive: needs data.augment=true (it sizes the random-resized crops of training)")
    if p.end_epoch <= p.start_epoch:
        raise ConfigError(f"data.progressive.end_epoch: {p.end_epoch} must be after "
                          f"data.progressive.start_epoch={p.start_epoch} (the ramp's last epoch)")
    if p.end_epoch > train.epochs:
        raise ConfigError(f"data.progressive.end_epoch: {p.end_epoch} exceeds train.epochs={train.epochs}")
    for key in ("start_res", "end_res"):
        if getattr(p, key) % p.step:
            raise ConfigError(f"data.progressive.{key}: {getattr(p, key)} is not a multiple of "
                              f"data.progressive.step={p.step}")


def _check_file_list_keys(data: DataConfig) -> None:
    """File lists, classes file, validation CSV: only for image files, only together where they mean something."""
    given = [k for k in ("train_list", "val_list", "classes_file", "val_labels_csv") if getattr(data, k)]
    if given and data.dataset != "folder":
        raise ConfigError(f"data.{given[0]}: only with data.dataset=folder ({data.dataset} reads its own batch files)")
    if data.val_list and data.val_labels_csv:
        raise ConfigError("data.val_labels_csv: the validation split comes from data.val_list already; set one of them")
    if data.classes_file and not data.train_list:
        raise ConfigError(
            "data.classes_file: names the classes of data.train_list; without a training list the class folders of "
            "data.train_split name them"
        )


def _check_model_name(name: str) -> None:
    if name in CUSTOM_MODELS:
        return
    if name.startswith("timm/"):
        try:
            check_timm_name(name)
        except ValueError as e:
            raise ConfigError(f"model.name: {e}") from None
        return
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = difflib.get_close_matches(name, list(known) + list(CUSTOM_MODELS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.name: unknown model {name!r} "
            f"(a torchvision classification model, timm/<a timm model> or one of {', '.join(CUSTOM_MODELS)}){hint}"
        )


def _check_policy(policy: PolicyConfig, train: TrainConfig) -> None:
    from orderdp_dali.policies import POLICIES, make_policy

    if policy.name not in POLICIES:
        raise ConfigError(f"policy.name: unknown policy {policy.name!r}; choose one of {', '.join(sorted(POLICIES))}")
    params = inspect.signature(POLICIES[policy.name].__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [k for k in params if k not in ("self", "num_samples", "seed", "num_epochs")]
    for k, value in policy.params.items():
        if k in ("seed", "num_epochs"):
            raise ConfigError(f"policy.params.{k}: set by train.{'seed' if k == 'seed' else 'epochs'}, not here")
        if not accepts_any and k not in allowed:
            raise ConfigError(
                f"policy.params.{k}: unknown parameter of policy {policy.name!r}; known: {', '.join(allowed) or 'none'}"
            )
        if isinstance(value, bool) and k in params and _takes_number(POLICIES[policy.name], params[k]):
            # float(True) is 1.0: without this, random_len_ratio=true would train as 1.0
            raise ConfigError(f"policy.params.{k}: expected a number, got {str(value).lower()}")
    try:  # the policy validates its own values; 10^6 samples stands in for the dataset
        make_policy(policy.name, 1_000_000, seed=train.seed, num_epochs=train.epochs, **policy.params)
    except (TypeError, ValueError) as e:
        named = re.match(r"Invalid (\w+): (.*)", str(e), re.S)  # the policies' "Invalid <param>: <value> (...)"
        if named and named.group(1) in policy.params:
            raise ConfigError(f"policy.params.{named.group(1)}: {named.group(2)}") from None
        raise ConfigError(f"policy.params: {e}") from None


def _takes_number(cls: type, param: inspect.Parameter) -> bool:
    """Whether ``cls.__init__``'s parameter ``param`` is a number (int or float, maybe Optional), not a flag:
    from its annotation, else from its default."""
    try:
        hint = typing.get_type_hints(cls.__init__).get(param.name)
    except Exception:  # an annotation that does not resolve: judge by the default
        hint = None
    if hint is not None:
        kinds = set(typing.get_args(hint)) if typing.get_origin(hint) is Union else {hint}
        return bool(kinds & {int, float}) and bool not in kinds
    default = param.default
    return isinstance(default, (int, float)) and not isinstance(default, bool)

