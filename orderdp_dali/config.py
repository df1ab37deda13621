"""The training configuration: frozen dataclasses loaded from YAML plus ``key=value`` overrides.

A config file has up to six sections (``data``, ``model``, ``optim``, ``schedule``,
``policy``, ``train``) and may start from another file with ``base: other.yaml`` (a path
relative to the file; a list of files is merged left to right, the file itself last)::

    base: imagenet_r50_base.yaml
    policy:
      name: orderdp
      params: {random_len_ratio: 0.75, top_q_ratio: 0.8}

Overrides use dotted keys, values in YAML syntax: ``train.epochs=5``,
``optim.lr=0.1``, ``policy.params.top_q_ratio=0.9``, ``schedule.milestones=[30,60]``.

Everything is checked before anything starts: an unknown key, a value of the wrong type or
out of range raises one :class:`~orderdp_dali.errors.ConfigError` naming the key. YAML is read
strictly (:func:`load_yaml`): a key or section given twice in one mapping is refused with both
line numbers instead of letting the last one win, and ``true``/``false`` are never numbers.
:meth:`Config.to_dict` gives plain JSON-able data for checkpoints and logs;
:func:`config_changes` compares two of them (what a resume would change, see
:data:`RUNTIME_KEYS`).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import yaml

from orderdp_dali.errors import ConfigError
from orderdp_dali.model_names import COMPILE_MODES, check_timm_name

__all__ = [
    "MAX_SEED",
    "RUNTIME_KEYS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EmaConfig",
    "MixupConfig",
    "ModelConfig",
    "OptimConfig",
    "PolicyConfig",
    "ProgressiveConfig",
    "ScheduleConfig",
    "TrainConfig",
    "build_checked",
    "checked_field",
    "config_changes",
    "flatten",
    "load_config",
    "load_yaml",
    "parse_override",
    "read_yaml_file",
    "set_path",
    "to_plain",
]

PathLike = Union[str, "Path"]
# The largest seed: numpy's global seeding (np.random.seed, done for third-party code) takes 32-bit
# seeds, so a larger one would fail only after the data were indexed. Checked up front instead.
MAX_SEED = 2**32 - 1


def _opt(default: Any, *, choices: Sequence[Any] = (), lo: Optional[float] = None, hi: Optional[float] = None,
         lo_open: bool = False, hi_open: bool = False) -> Any:
    """A dataclass field with validation metadata: allowed ``choices`` or a range ``[lo, hi]``."""
    meta = {"choices": tuple(choices), "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


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


@dataclass(frozen=True)
class Config:
    """The whole run; build with :func:`load_config` or :meth:`from_dict` (both validate)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able data (dicts, lists, str, int, float, bool, None)."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """Build and validate from nested plain data (as :meth:`to_dict` gives)."""
        cfg = _build(cls, data, "")
        _check_cross_fields(cfg)
        return cfg

    def override(self, *items: str) -> "Config":
        """A copy with ``key=value`` overrides applied (validated)."""
        data = self.to_dict()
        for item in items:
            key, value = parse_override(item)
            set_path(data, key, value)
        return Config.from_dict(data)


# ----------------------------------------------------------------- loading
def load_config(path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> Config:
    """Read ``path`` (YAML, following ``base:``), apply ``overrides``, validate.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key, wrong type, value out of range.
    """
    data: Dict[str, Any] = {} if path is None else _read_yaml(Path(path), ())
    for item in overrides:
        key, value = parse_override(item)
        set_path(data, key, value)
    return Config.from_dict(data)


def parse_override(item: str) -> Tuple[str, Any]:
    """``"section.key=value"`` -> ``("section.key", value)``, the value parsed as YAML."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"Invalid override {item!r}: expected section.key=value, e.g. train.epochs=5")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"Invalid override {item!r}: empty key")
    try:
        value = load_yaml(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {getattr(e, 'problem', None) or e}") from None
    return key, value


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping.

    Plain PyYAML keeps the last of two equal keys, so ``epochs: 1`` ... ``epochs: 3`` (or a
    second ``optim:`` section) silently replaces the first. Here it is a
    ``ConstructorError`` marked at the second key, naming the key's dotted path
    (``train.epochs``) and the line of the first. Keys merged in with ``<<: *anchor`` may
    still be overridden: that is what a merge is for.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._paths = _mapping_paths(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            prefix = getattr(self, "_paths", {}).get(id(node), "")
            first: Dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if earlier is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"duplicate key {prefix + str(key)!r} (first at line {earlier.line + 1}): the later value "
                        "would silently replace the earlier one; keep one of them",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _mapping_paths(root: yaml.Node) -> Dict[int, str]:
    """``id(mapping node) -> "section.key."``, the dotted prefix of its keys, for every mapping in a document."""
    paths: Dict[int, str] = {}
    stack = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if id(node) in paths:  # an alias of a node already seen
            continue
        if isinstance(node, yaml.MappingNode):
            paths[id(node)] = prefix
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                stack.append((value_node, f"{prefix}{name}."))
        elif isinstance(node, yaml.SequenceNode):
            paths[id(node)] = prefix
            stack.extend((item, f"{prefix[:-1]}[{i}].") for i, item in enumerate(node.value))
    return paths


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML with :class:`StrictLoader` (safe types only, no duplicate keys).

    Raises:
        yaml.YAMLError: bad syntax or a duplicate key; ``problem_mark`` gives the line.
    """
    return yaml.load(text, Loader=StrictLoader)  # a SafeLoader: plain data only


def read_yaml_file(path: PathLike, what: str = "config file") -> Any:
    """The YAML document in ``path``, read strictly (:func:`load_yaml`).

    Args:
        path: the file.
        what: how messages name it (``"config file"``, ``"bench config"``).

    Raises:
        ConfigError: unreadable file, bytes that are not UTF-8, bad YAML or a duplicate key;
            the message names the file and, where there is one, the line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line}; save the file as UTF-8"
        ) from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None


def _read_yaml(path: Path, chain: Tuple[Path, ...]) -> Dict[str, Any]:
    path = path.expanduser().resolve()
    if path in chain:
        raise ConfigError(f"config 'base:' cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    data = read_yaml_file(path, "config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None)
    if bases is None:
        return data
    merged: Dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file name or a list of them, got {base!r}")
        _merge(merged, _read_yaml(path.parent / base, chain + (path,)))
    _merge(merged, data)
    return merged


def _merge(into: Dict[str, Any], data: Mapping[str, Any]) -> None:
    """Section-wise merge: a section's keys override the base's; leaf values (``params``) are replaced."""
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(into.get(section), dict):
            into[section].update(values)
        else:
            into[section] = values


def set_path(data: Dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections; ConfigError if one is a value."""
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section (cannot set {key})")
        node = child
    node[parts[-1]] = value


# -------------------------------------------------------------- validation
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


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if f"{prefix}{key}" in REMOVED_KEYS:
            raise ConfigError(f"{prefix}{key}: no longer a setting: {REMOVED_KEYS[prefix + key]}; remove it")
        if f"{prefix}{key}" in ELSEWHERE_KEYS:
            raise ConfigError(f"{prefix}{key}: not a setting: {ELSEWHERE_KEYS[prefix + key]}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{prefix}{key}: unknown key{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = prefix + name
        section = _section_type(hints[name])
        if section is not None:
            optional = section is not hints[name]
            kwargs[name] = None if optional and data[name] is None else _build(section, data[name], key + ".")
        else:
            kwargs[name] = _check_value(key, data[name], hints[name], f.metadata)
    return cls(**kwargs)


def _section_type(hint: Any) -> Optional[type]:
    """The dataclass of a nested section: ``hint`` itself, or ``X`` of ``Optional[X]`` (a section
    that is off when null); ``None`` for a plain value."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is Union:
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    value = _coerce(key, value, hint)
    if value is None:
        return None
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        raise ConfigError(f"{key}: invalid value {value!r}; choose one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise ConfigError(f"{key}: {value!r} out of range (need {'>' if meta.get('lo_open') else '>='} {lo})")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        raise ConfigError(f"{key}: {value!r} out of range (need {'<' if meta.get('hi_open') else '<='} {hi})")
    return value


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Optional, Tuple[x, ...], Dict), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if origin in (dict, Dict):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")  # a bug in this module


def build_checked(cls: type, data: Any, prefix: str = "") -> Any:
    """Dataclass ``cls`` (fields made with :func:`checked_field`) from plain data, checked as a
    training config is: an unknown key or a bad value raises one ConfigError naming the key
    (``prefix`` + key). Other schemas (the bench config) use it to validate alike."""
    return _build(cls, data, prefix)


checked_field = _opt  # a field with choices or a range, for schemas built with build_checked


CUSTOM_MODELS = ("tiny", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50", "cifar_resnet101")


def _check_cross_fields(cfg: Config) -> None:
    if not cfg.data.root:
        raise ConfigError("data.root: required (the dataset folder), e.g. data.root=/datasets/imagenet")
    _check_resolution_keys(cfg.data, cfg.train)
    _check_file_list_keys(cfg.data)
    _check_model_name(cfg.model.name)
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: need two numbers in [0, 1), got {list(cfg.optim.betas)}")
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum == 0):
        raise ConfigError("optim.nesterov: needs optim.name=sgd with momentum > 0")
    if cfg.optim.eps == 0 and cfg.optim.name == "lamb":
        raise ConfigError("optim.eps: LAMB divides by sqrt(v) + eps; need eps > 0 (0 suits only the LARS optimizers)")
    sched = cfg.schedule
    if (sched.cycle_momentum or sched.torch_steps) and sched.name != "onecycle":
        key = "cycle_momentum" if sched.cycle_momentum else "torch_steps"
        raise ConfigError(f"schedule.{key}: only with schedule.name=onecycle (got {sched.name})")
    if sched.base_momentum > sched.max_momentum:
        raise ConfigError(
            f"schedule.base_momentum: {sched.base_momentum} exceeds schedule.max_momentum={sched.max_momentum}"
        )
    if sched.warmup_epochs > cfg.train.epochs:
        raise ConfigError(f"schedule.warmup_epochs: {sched.warmup_epochs} exceeds train.epochs={cfg.train.epochs}")
    if list(sched.milestones) != sorted(sched.milestones) or any(m < 0 for m in sched.milestones):
        raise ConfigError(
            f"schedule.milestones: need non-negative epochs in increasing order, got {list(sched.milestones)}"
        )
    _check_policy(cfg.policy, cfg.train)


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


# ------------------------------------------------------------ comparing
# Keys that say how and where a run executes, not what its epochs compute: a resume may change
# them freely (more threads on a new machine, a moved dataset, quieter output). The training set
# behind the data paths is still checked by its fingerprint. Every other key is part of the recipe.
RUNTIME_KEYS = frozenset({
    "data.root", "data.train_split", "data.val_split", "data.train_list", "data.val_list", "data.classes_file",
    "data.val_labels_csv", "data.exclude_file", "data.cache_dir", "data.rescan",
    "data.num_threads", "data.prefetch", "data.hw_decoder_load",
    "model.channels_last",
    "train.print_freq", "train.progress", "train.output_dir", "train.checkpoint", "train.save_every",
    "train.eval_every", "train.dist_timeout_s", "train.compile", "train.compile_mode", "train.deterministic",
    "train.tensorboard",
})


# Mappings compared as one value: a policy's own parameters, sections that may be null.
WHOLE_KEYS = frozenset({"policy.params", "data.progressive"})


def flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested sections as one level of dotted keys: ``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``.

    ``policy.params`` is kept whole (its keys depend on the policy), and so is an optional section
    (``data.progressive``): null and a mapping then compare as one key."""
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted not in WHOLE_KEYS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """Each dotted key whose value differs between two configs as plain data (:meth:`Config.to_dict`),
    as ``key -> (saved value, current value)``, in key order.

    Only keys ``saved`` has are compared: a checkpoint written before a setting existed says
    nothing about it. Lists and tuples compare alike (JSON has no tuples).
    """
    before, after = flatten(to_plain(saved)), flatten(to_plain(now))
    return {k: (before[k], after.get(k)) for k in sorted(before) if k in after and before[k] != after[k]}


def to_plain(obj: Any) -> Any:
    """``obj`` as JSON-able data: mappings with string keys, lists, and numbers for numpy
    scalars, arrays and tensors (anything with ``tolist()``)."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj
