"""Arguments shared by several commands."""

from __future__ import annotations

import argparse

from ..config import PRESETS, Config, apply_overrides, get_preset, load_config


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """`--preset NAME | --config FILE` plus trailing `key=value` overrides."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                       help=f"named preset (default: {default_preset})")
    group.add_argument("--config", metavar="FILE", help="YAML config file (see `config.yaml` in a run folder)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=2e-4 model.decoder.num_stages=2")


def resolve_config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config) if getattr(args, "config", None) else get_preset(args.preset)
    return apply_overrides(cfg, list(getattr(args, "overrides", []) or []))
