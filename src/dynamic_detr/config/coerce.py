"""Plain data (a YAML mapping) -> the config's dataclasses, strictly: an unknown key (with a suggestion) or a
value of the wrong type is a ConfigError naming its dotted path. Knows the dataclasses only through their type
hints, so that the schema can use it without an import cycle."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from ..errors import ConfigError


def build(cls: type, data: Any, where: str) -> Any:
    """`cls(**data)` with every value coerced to its field's type; `where` names the mapping in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
        kwargs[key] = coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def coerce(tp: Any, value: Any, where: str) -> Any:
    """`value` as type `tp` (a dataclass, `X | None`, `list[X]`, bool, int, float or str); ints are accepted as
    floats, never bools as numbers."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a valid {tp}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")
