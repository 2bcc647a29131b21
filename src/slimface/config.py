"""Dataclass configs loaded from YAML and validated strictly.

Every stage describes its settings as a dataclass; :func:`from_dict` builds one from a plain dict
(parsed YAML) and rejects unknown keys and values of the wrong type with a one-line
:class:`~slimface.errors.ConfigError` that names the key, so a typo never silently falls back to a
default. Nested dataclasses, ``list[...]``, ``dict[str, ...]``, ``Optional`` and ``Literal`` are
supported, and so is any type with a classmethod ``from_config(value, where)`` that parses itself
(a bad value raises ConfigError). Dataclasses may define ``validate(self)`` for range checks, and a classmethod
``upgrade_keys(data, where) -> data`` that rewrites the keys of older config files before loading
(accepting a key that was removed, or refusing it with a one-line reason).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from slimface.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not a valid {_type_name(tp)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    parse = getattr(tp, "from_config", None)
    if isinstance(tp, type) and callable(parse):  # a type that parses itself (e.g. compress.config.Budget)
        return parse(value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp)
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, f"{where} key"): _convert(v, val_tp, f"{where}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    upgrade = getattr(cls, "upgrade_keys", None)
    if callable(upgrade):
        data = upgrade(data, where)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _convert(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def with_changes(obj: T, changes: dict[str, Any] | None, where: str) -> T:
    """``obj`` (a config dataclass) with ``changes`` (a mapping as in a config file) applied: a nested
    dataclass merges key by key, other values replace; checked like :func:`from_dict` (unknown key,
    wrong type, ``validate``). ``obj`` itself is unchanged; without changes it is returned as is."""
    if not changes:
        return obj
    cls = type(obj)
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(fields))})")
    updates = {}
    for name, value in changes.items():
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[name] = with_changes(current, value, f"{where}.{name}")
        else:
            updates[name] = _convert(value, hints[name], f"{where}.{name}")
    new = dataclasses.replace(obj, **updates)  # type: ignore[type-var]
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-safe) view of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or broken YAML is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}; fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings at the top level")
    return data


def _merged(old: Any, new: Any) -> Any:
    """``new`` over ``old``: mappings merge key by key (recursively), anything else replaces."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from a YAML file, with optional dotted-key overrides (``{"train.steps": 5}``). A
    mapping value merges into the file's section (``{"train": {"steps": 5}}`` keeps the file's
    ``train.lr``), so a section given inline changes only the keys it names."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _merged(node.get(leaf), value)
    return from_dict(cls, data, where=str(Path(path).name))


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``condition``; for ``validate`` methods."""
    if not condition:
        raise ConfigError(message)


def check_kernel_cap(value: int | None, name: str) -> None:
    """A kernel cap (``student.max_kernel``, ``--max-kernel``) is None or an odd size: a capped kernel
    is the centre of an odd one, so the output keeps its size and alignment."""
    check(value is None or (value >= 1 and value % 2 == 1),
          f"{name} must be an odd kernel size (1, 3, 5...), got {value}")


__all__ = ["from_dict", "with_changes", "to_dict", "load_yaml", "load_config", "check", "check_kernel_cap", "typing"]
