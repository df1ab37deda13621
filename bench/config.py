"""The bench config: a YAML file (plus ``key=value`` overrides) checked by the training config's code.

A bench config names the dataset (generated with :func:`orderdp_dali.make_data.make_dataset`
when absent), one training recipe (the sections of an ``orderdp-dali train`` config but
``policy``), the policies with their hyper-parameters, and the seeds::

    name: cpu_demo
    dataset: {root: data/bench_small, make: {mode: small}}
    training: {model: {name: tiny}, train: {epochs: 8, batch_size: 64}, ...}
    policies: {full: {}, orderdp: {random_len_ratio: 0.75, top_q_ratio: 0.8}, ...}
    seeds: [0, 1]

Each key of ``policies`` names an *entry*: a registered policy with its hyper-parameters.
An entry may name its policy (``policy``, default: the key) and train its own number of
epochs (``epochs``, default the recipe's; its LR schedule spans its own epochs), so one
policy can appear several times::

    policies:
      full: {}
      full_short: {policy: full, epochs: 4}      # full data for fewer epochs
      orderdp_30: {policy: orderdp, random_len_ratio: 0.8, top_q_ratio: 0.375}

The schema is a set of frozen dataclasses built by :func:`orderdp_dali.config.build_checked`,
so an unknown key or a bad value raises one ConfigError naming the key, as for training
configs, and the YAML is read as strictly (:func:`orderdp_dali.config.read_yaml_file`: a key
given twice is refused with its line numbers; ``seeds`` lie in 0 .. 2**32 - 1); every
(policy, seed) run's training config is then built with
:meth:`orderdp_dali.config.Config.from_dict` before anything starts.

Overrides use dotted keys: ``seeds=[0,1,2]``, ``policies=[full,orderdp]`` (a subset, in
that order), ``policies.orderdp.top_q_ratio=0.9``, ``dataset.root=/data/x``, and the
recipe's own keys directly (``train.epochs=3``, ``model.name=resnet18``, ``data.crop=96``).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from orderdp_dali.config import (
    MAX_SEED,
    Config,
    build_checked,
    checked_field,
    parse_override,
    read_yaml_file,
    set_path,
    to_plain,
)
from orderdp_dali.errors import ConfigError

__all__ = ["BenchConfig", "DatasetSpec", "Entry", "LoaderSpec", "RECIPE_SECTIONS", "entry", "load_bench_config",
           "recipe_config", "task_bench"]

RECIPE_SECTIONS = ("data", "model", "optim", "schedule", "train")
# Every loader of orderdp_dali.bench.loader_compare (kept here so that checking a config imports no DALI).
LOADER_NAMES = ("dali-plan", "dali-plan-full", "dali-reader", "torchvision",
                "dali-plan-feed", "dali-reader-feed", "per-sample-feed", "dali-plan-tar", "dali-plan-tar-feed")


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset folder (ImageNet layout); ``make``: :func:`make_dataset` arguments to generate it when absent."""

    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    make: Optional[Dict[str, Any]] = None


@dataclass(frozen=True)
class LoaderSpec:
    """The loader comparison (``mode: loader`` or ``both``); see :mod:`orderdp_dali.bench.loader_compare`.

    ``batch_size``, ``crop`` and ``device`` default to the training recipe's; ``workers``
    to every usable CPU (the same for every loader); ``tile`` repeats each plan per epoch;
    ``cold_starts``: pipeline set-ups and pass starts timed apart (0: none).
    """

    loaders: Tuple[str, ...] = LOADER_NAMES
    batch_size: Optional[int] = checked_field(None, lo=1)
    workers: Optional[int] = checked_field(None, lo=1)
    device: Optional[str] = checked_field(None, choices=("auto", "cpu", "gpu"))
    crop: Optional[int] = checked_field(None, lo=1, hi=4096)
    random_len_ratio: float = checked_field(0.75, lo=0.0, hi=1.0, lo_open=True)
    top_q_ratio: float = checked_field(0.8, lo=0.0, hi=1.0, lo_open=True)
    warmup: int = checked_field(1, lo=0)
    repeats: int = checked_field(3, lo=1)
    seed: int = checked_field(0, lo=0, hi=MAX_SEED)
    tile: int = checked_field(1, lo=1)
    cold_starts: int = checked_field(3, lo=0)


@dataclass(frozen=True)
class Entry:
    """One entry of ``policies``: its name, the registered policy it runs, that policy's
    parameters, and its own epoch count (``None``: the recipe's)."""

    name: str
    policy: str
    params: Dict[str, Any]
    epochs: Optional[int] = None


ENTRY_KEYS = ("policy", "epochs")  # an entry's own settings, apart from its policy's parameters


def entry(bench: "BenchConfig", name: str) -> Entry:
    """The :class:`Entry` named ``name`` in ``bench.policies``.

    Raises:
        ConfigError: an ``epochs`` that is not an int >= 1, or a ``policy`` that is not a name.
    """
    spec = dict(bench.policies[name])
    policy = spec.pop("policy", name)
    epochs = spec.pop("epochs", None)
    if not isinstance(policy, str) or not policy:
        raise ConfigError(f"policies.{name}.policy: need a policy name, got {policy!r}")
    if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
        raise ConfigError(f"policies.{name}.epochs: need an int >= 1, got {epochs!r}")
    return Entry(name, policy, spec, epochs)


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark: the dataset, one training recipe, the policies and the seeds.

    ``mode``: ``train`` (every policy trained, interleaved epoch by epoch), ``loader`` (the
    loader comparison only, no model) or ``both``. ``warmup``: an untimed 1-epoch run first.
    ``target_top1``: the validation top-1 (%) that time-to-accuracy measures the time to
    (default: the ``full`` entry's final top-1, mean over seeds, minus 1 point).
    ``tasks``: several benches in one (a study over datasets): task name -> what it changes
    of this config (``dataset``, ``training``, ``policies``, ``seeds``, ``target_top1``...,
    merged key by key); each task runs as its own bench (:func:`task_bench`).
    """

    name: str = "bench"
    mode: str = checked_field("train", choices=("train", "loader", "both"))
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    training: Dict[str, Any] = checked_field({})
    policies: Dict[str, Any] = checked_field({"full": {}, "infobatch": {}, "orderdp": {},
                                              "uniform": {"random_len_ratio": 0.75, "top_q_ratio": 0.8}})
    seeds: Tuple[int, ...] = (0,)
    target_top1: Optional[float] = checked_field(None, lo=0.0, hi=100.0)
    tasks: Dict[str, Any] = checked_field({})
    warmup: bool = True
    loader: LoaderSpec = field(default_factory=LoaderSpec)
    output_root: str = "runs"
    notes: Tuple[str, ...] = ()

    @property
    def dataset_root(self) -> str:
        return str(self.dataset.root or (self.training.get("data") or {}).get("root") or "")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able data (the ``config`` of results.json)."""
        return to_plain(dataclasses.asdict(self))


def _merged(base: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``changes`` merged in key by key (nested mappings merged, anything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def task_bench(bench: BenchConfig, task: str) -> BenchConfig:
    """The bench of one of ``bench.tasks``: this config with the task's changes merged in,
    named ``<name>-<task>``, checked like any bench config.

    Raises:
        ConfigError: the task's changes are not a mapping, or give a bad value (named
            ``tasks.<task>...``).
    """
    changes = bench.tasks[task]
    if not isinstance(changes, dict):
        raise ConfigError(f"tasks.{task}: need a mapping of what the task changes, got {changes!r}")
    if "tasks" in changes or "name" in changes:
        raise ConfigError(f"tasks.{task}: a task cannot set 'tasks' or 'name' (it is named {bench.name}-{task})")
    data = _merged({k: v for k, v in bench.to_dict().items() if k != "tasks"}, changes)
    data["name"] = f"{bench.name}-{task}"
    try:
        sub = build_checked(BenchConfig, data)
        _check(sub)
    except ConfigError as e:
        raise ConfigError(f"tasks.{task}: {e}") from None
    return sub


def _apply_override(data: Dict[str, Any], item: str) -> None:
    """One ``key=value`` override (value in YAML syntax) on the raw bench dict."""
    key, value = parse_override(item)
    head = key.split(".", 1)[0]
    known = [f.name for f in dataclasses.fields(BenchConfig)]
    if head in RECIPE_SECTIONS:
        key = "training." + key
    elif head == "policy":
        raise ConfigError(f"{key}: the bench sets the policy per run; use policies.<name>.<param>=... instead")
    elif head not in known:
        raise ConfigError(
            f"{key}: unknown bench key; known: {', '.join(known)} and the recipe sections {', '.join(RECIPE_SECTIONS)}"
        )
    if key == "policies" and isinstance(value, (list, str)):
        names = [value] if isinstance(value, str) else value
        current = data.get("policies") or BenchConfig().policies
        data["policies"] = {str(n): dict(current.get(n) or {}) for n in names}
        return
    set_path(data, key, value)


def load_bench_config(path: Optional[str], overrides: Sequence[str] = ()) -> BenchConfig:
    """Read a bench config, apply overrides, check it and every run's training config.

    Raises:
        ConfigError: unreadable file, unknown key, bad value (the message names the key).
    """
    data: Dict[str, Any] = {}
    if path is not None:
        data = read_yaml_file(Path(path), "bench config") or {}  # strict: a key given twice is refused
        if not isinstance(data, dict):
            raise ConfigError(f"bench config {path} must hold a mapping, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for item in overrides:
        _apply_override(data, item)
    if isinstance(data.get("seeds"), int) and not isinstance(data["seeds"], bool):
        data["seeds"] = [data["seeds"]]
    if isinstance(data.get("notes"), str):
        data["notes"] = [data["notes"]]
    if isinstance(data.get("policies"), dict):
        data["policies"] = {k: ({} if v is None else v) for k, v in data["policies"].items()}
    bench = build_checked(BenchConfig, data)
    _check(bench)
    return bench


def _check(bench: BenchConfig) -> None:
    """The checks one field cannot make alone; then every run's training config."""
    if not bench.name or "/" in bench.name:
        raise ConfigError(f"name: need a non-empty file-name-safe string, got {bench.name!r}")
    if bench.tasks:  # the tasks are the benches: check each, with every run's training config
        for task in bench.tasks:
            if not task or "/" in task:
                raise ConfigError(f"tasks: need file-name-safe task names, got {task!r}")
            task_bench(bench, task)
        return
    seeds = bench.seeds
    if not seeds or any(not 0 <= s <= MAX_SEED for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: need a non-empty list of distinct integers in 0 .. {MAX_SEED} (2**32 - 1), "
                          f"got {list(seeds)!r}")
    if not bench.policies:
        raise ConfigError("policies: need at least one policy (a mapping policy -> parameters)")
    for name, params in bench.policies.items():
        if not isinstance(params, dict):
            raise ConfigError(f"policies.{name}: need a mapping of parameters, got {params!r}")
    if not bench.dataset_root:
        raise ConfigError("dataset.root: required (the dataset folder; generated there when dataset.make is set)")
    for key in ("train_split", "val_split"):
        if key in (bench.training.get("data") or {}):
            raise ConfigError(f"training.data.{key}: set it as dataset.{key} (the bench reads and warms that split)")
    for key in bench.training:
        if key not in RECIPE_SECTIONS:
            hint = " (policies are set by the bench's 'policies')" if key == "policy" else ""
            raise ConfigError(f"training.{key}: unknown section; known: {', '.join(RECIPE_SECTIONS)}{hint}")
    for name in bench.loader.loaders:
        if name not in LOADER_NAMES:
            raise ConfigError(f"loader.loaders: unknown loader {name!r}; choose from {', '.join(LOADER_NAMES)}")
    if bench.mode != "loader":
        for name in bench.policies:  # every run's training config, before anything starts
            recipe_config(bench, name, bench.seeds[0], "unused", bench.dataset_root)


def recipe_config(bench: BenchConfig, name: str, seed: int, output_dir: str, dataset_root: str) -> Config:
    """The validated training :class:`~orderdp_dali.config.Config` of one (entry, seed) run."""
    spec = entry(bench, name)
    data = copy.deepcopy(dict(bench.training))
    data.setdefault("data", {})
    data["data"]["root"] = dataset_root
    data["data"]["train_split"] = bench.dataset.train_split
    data["data"]["val_split"] = bench.dataset.val_split
    data["policy"] = {"name": spec.policy, "params": dict(spec.params)}
    train = data.setdefault("train", {})
    if spec.epochs is not None:
        train["epochs"] = spec.epochs  # the schedule and the policy's num_epochs follow
    train["seed"] = seed
    train["output_dir"] = output_dir
    train.setdefault("checkpoint", False)  # checkpoints would add unequal disk time; not what is measured
    train["progress"] = False  # the bench prints its own progress
    try:
        return Config.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"policies.{name}: {e}") from None
