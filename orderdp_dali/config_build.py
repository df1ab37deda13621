"""Checked dataclasses: fields that carry their allowed values, built from plain data and back.

The machinery behind every config schema of the project (the training config's sections,
the bench config): :func:`checked_field` declares a field's choices or range,
:func:`build_checked` builds a dataclass from nested plain data (YAML, JSON) and raises one
:class:`~orderdp_dali.errors.ConfigError` naming the dotted key of the first unknown key or bad
value; :func:`to_plain` turns the result back into JSON-able data.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from orderdp_dali.errors import ConfigError

__all__ = ["build_checked", "checked_field", "to_plain"]


def checked_field(default: Any, *, choices: Sequence[Any] = (), lo: Optional[float] = None,
                  hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A dataclass field with validation metadata: allowed ``choices`` or a range ``[lo, hi]``."""
    meta = {"choices": tuple(choices), "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def build_checked(cls: type, data: Any, prefix: str = "", retired: Optional[Mapping[str, str]] = None) -> Any:
    """Dataclass ``cls`` (fields made with :func:`checked_field`, nested dataclasses as sections)
    from plain data: an unknown key or a bad value raises one ConfigError naming the key
    (``prefix`` + key).

    Args:
        retired: dotted keys that are no setting (any more), each with the message that says why
            and what to do instead: clearer than "unknown key" for keys users still bring.
    """
    return _build(cls, data, prefix, retired or {})


def _build(cls: type, data: Any, prefix: str, retired: Mapping[str, str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if f"{prefix}{key}" in retired:
            raise ConfigError(f"{prefix}{key}: {retired[prefix + key]}")
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
            kwargs[name] = None if optional and data[name] is None else _build(section, data[name], key + ".", retired)
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
