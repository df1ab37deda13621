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

This module is the public face: :class:`Config` and :func:`load_config`, and every name of the
modules it is made of, one job each: the sections (:mod:`~orderdp_dali.config_sections`), the
checked-dataclass builder (:mod:`~orderdp_dali.config_build`), the YAML reading
(:mod:`~orderdp_dali.config_yaml`), the checks across fields (:mod:`~orderdp_dali.config_checks`)
and the resume comparison (:mod:`~orderdp_dali.config_diff`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Mapping, Optional

from orderdp_dali.config_build import build_checked, checked_field, to_plain
from orderdp_dali.config_checks import check_sections
from orderdp_dali.config_diff import RUNTIME_KEYS, config_changes, flatten
from orderdp_dali.config_sections import (
    MAX_SEED,
    RETIRED_KEYS,
    DataConfig,
    EmaConfig,
    MixupConfig,
    ModelConfig,
    OptimConfig,
    PolicyConfig,
    ProgressiveConfig,
    ScheduleConfig,
    TrainConfig,
)
from orderdp_dali.config_yaml import PathLike, load_yaml, parse_override, read_config_file, read_yaml_file, set_path
from orderdp_dali.errors import ConfigError

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
        cfg = build_checked(cls, data, "", retired=RETIRED_KEYS)
        check_sections(cfg.data, cfg.model, cfg.optim, cfg.schedule, cfg.policy, cfg.train)
        return cfg

    def override(self, *items: str) -> "Config":
        """A copy with ``key=value`` overrides applied (validated)."""
        data = self.to_dict()
        for item in items:
            key, value = parse_override(item)
            set_path(data, key, value)
        return Config.from_dict(data)


def load_config(path: Optional[PathLike] = None, overrides: Iterable[str] = ()) -> Config:
    """Read ``path`` (YAML, following ``base:``), apply ``overrides``, validate.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key, wrong type, value out of range.
    """
    data: Dict[str, Any] = {} if path is None else read_config_file(path)
    for item in overrides:
        key, value = parse_override(item)
        set_path(data, key, value)
    return Config.from_dict(data)
