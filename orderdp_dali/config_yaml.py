"""Reading configs as YAML, strictly: no key given twice, ``base:`` files merged, ``key=value`` overrides.

Plain PyYAML keeps the last of two equal keys and so lets a second ``optim:`` section silently
replace the first; :class:`StrictLoader` refuses it with both line numbers. Every message
names the file (and the line) or the override at fault.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import yaml

from orderdp_dali.errors import ConfigError

__all__ = ["StrictLoader", "load_yaml", "parse_override", "read_config_file", "read_yaml_file", "set_path"]

PathLike = Union[str, Path]


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



def read_config_file(path: PathLike) -> Dict[str, Any]:
    """The sections of config file ``path``, its ``base:`` files merged in (a path relative to the
    file; a list of them is merged left to right, the file itself last).

    Raises:
        ConfigError: as :func:`read_yaml_file`; a file that is not a mapping, a bad ``base`` or a ``base:`` cycle.
    """
    return _read_yaml(Path(path), ())


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
