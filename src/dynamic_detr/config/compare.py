"""Read and compare configs: a preset name or a YAML file resolved to its full config (`resolve`), printed as
YAML under a header naming where it came from (`show`), or the fields that differ between two (`diff`).
`dynamic-detr config show | diff` (cli/config.py) prints these."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .io import apply_overrides, flatten, load_config
from .presets import PRESETS, get_preset, preset_chain
from .schema import Config

YAML_SUFFIXES = (".yaml", ".yml")


def _is_file(spec: str) -> bool:
    """A spec names a file when it looks like one (a YAML suffix, a folder in it) or is not a preset's name
    but exists; a preset's name wins over a file of that name in the current folder."""
    if spec.endswith(YAML_SUFFIXES) or os.sep in spec or (os.altsep and os.altsep in spec):
        return True
    return spec not in PRESETS and Path(spec).exists()


def describe_preset(name: str) -> str:
    """`cpu_tiny <- cpu_small <- defaults`, with any recipe cut said where it happens."""
    parts = []
    for preset in preset_chain(name):
        steps = PRESETS[preset].recipe_steps
        if steps is None:
            parts.append(preset)
        else:
            parts.append(f"{preset} ({f'first {steps}' if steps else 'no'} recipe steps of its base)")
    return " <- ".join([*parts, "defaults"])


def resolve(spec: str, overrides: Sequence[str] = ()) -> tuple[Config, str]:
    """The config that `spec` (a preset name or a YAML file) and `key=value` overrides give, and a one-line
    description of where it came from. Raises ConfigError (unknown preset, unreadable or invalid file)."""
    if _is_file(spec):
        cfg, what = load_config(spec), f"file {spec}"
    else:
        try:
            cfg = get_preset(spec)
        except ConfigError as e:
            raise ConfigError(f"{e}; or name a YAML config file") from None
        what = f"preset {describe_preset(spec)}"
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
        what += f", with {' '.join(overrides)}"
    return cfg, what


def show(cfg: Config, what: str) -> str:
    """The config as YAML (the text `Config.dump` writes, so it loads back) under a `# <what>` header line."""
    return f"# {what}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def format_value(value: Any) -> str:
    """A value as it would be written in YAML or a `key=value` override: 0.0004, boxes, null, [192, 224]."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
    return text.removesuffix("\n...").strip()


def diff(a: Config, b: Config) -> list[str]:
    """`key: a_value -> b_value` for every field that differs, in the schema's order."""
    flat_a, flat_b = flatten(a.to_dict()), flatten(b.to_dict())
    return [f"{key}: {format_value(flat_a[key])} -> {format_value(flat_b[key])}"
            for key in flat_a if flat_a[key] != flat_b[key]]
