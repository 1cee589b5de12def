"""Configs in and out: a strict YAML loader, `load_config`, `key=value` overrides and the dotted-key helpers
they share with the presets. (`Config.dump` writes YAML; `Config.from_dict` builds and validates.)"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import Config


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key, self.line = key, line


class UniqueKeySafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (no Python tags, no object construction) that refuses a key given twice in one
    mapping: PyYAML would silently keep the last value. Merge keys (`<<: *anchor`) may still be overridden."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise DuplicateKeyError(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path) -> Config:
    """Load a YAML config (safe loader; a key given twice and unknown keys are errors, the latter with a
    suggestion)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    except UnicodeDecodeError as e:  # a binary file
        raise ConfigError(f"{path}: not a YAML config (not UTF-8 text: byte {e.start:,} is "
                          f"{e.object[e.start:e.start + 1]!r})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeySafeLoader)  # a SafeLoader: as safe as yaml.safe_load
    except DuplicateKeyError as e:
        raise ConfigError(f"{path}: {e} (each key may appear once per section)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return Config.from_dict(data or {}, source=str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """`data["a"]["b"] = value` for key "a.b", in the nested dict of a config (`Config.to_dict()`); a key the
    config does not have is a ConfigError starting with `what` and suggesting the closest one."""
    node = data
    parts = key.strip().split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            options = list(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, options, n=1)
            hint = f" (did you mean '{'.'.join([*parts[:depth], close[0]])}'?)" if close else ""
            raise ConfigError(f"{what}: unknown key '{key}'{hint}")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested dict of a config as {"model.decoder.num_stages": 6, ...}, in declaration order; lists are
    values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` overrides (values parsed as YAML: `train.lr=2e-4`, `data.crop_size=[256,384]`)."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=2e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value, f"override '{item}'")
    return Config.from_dict(data, source="overrides")
