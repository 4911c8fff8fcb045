"""Configs are plain dataclasses, loaded from YAML with dotted command-line overrides (``optim.lr=5e-5``).

``from_dict`` builds nested dataclasses with type checks, so a misspelt key or a wrong type in a recipe is an error
that names the key, not a silent default.
"""
from __future__ import annotations

import dataclasses
import datetime
import types
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from ssamba.atomic import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit the config dataclasses."""


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, checking keys and value types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: unknown key(s) {unknown}; "
                          f"valid keys: {sorted(names)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:  # raised by a check in ``cls`` that already names its key
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {exc}") from exc


def check_fields(cls: type, data: Any, where: str, exclude: Collection[str] = ()) -> dict[str, Any]:
    """Check ``data`` as keyword arguments for some of dataclass ``cls``'s fields (a free-form section such as
    ``model.overrides``) by name and type, without building ``cls``; returns the values coerced as ``from_dict``
    does. Errors name the key as ``where + key``; ``exclude``: fields not allowed here."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.')}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude)
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}{key}: unknown key; valid keys: {names}")
    return {key: _coerce(hints[key], value, f"{where}{key}") for key, value in data.items()}


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, where + ".")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "5e-5" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: numbers, booleans, lists, null) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for key in keys[:-1]:
            if node.get(key) is None:  # absent, or a section left empty in the YAML (``pretrain:``)
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key} is not a section")
        node[keys[-1]] = _override_value(raw)
    return data


#: how YAML spells null; any other text that YAML reads as null (``#x``: a comment) is kept as the text
_NULLS = {"null", "Null", "NULL", "~"}


def _override_value(raw: str) -> Any:
    """An override's value as YAML reads it (numbers, booleans, lists, null), except where YAML would turn text
    into something else: a date (``out_dir=2024-01-01``) or a comment (``model.init=#1``, silently null) stay text."""
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if (value is None and raw.strip() not in _NULLS) or isinstance(value, (datetime.date, datetime.datetime)):
        return raw
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML file (optional), apply dotted overrides, build and validate ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    data = apply_overrides(data, list(overrides or []))
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from exc


def save_config(obj: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


__all__ = ["ConfigError", "from_dict", "check_fields", "to_dict", "apply_overrides", "load_config", "save_config"]
