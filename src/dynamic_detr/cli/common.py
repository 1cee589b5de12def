"""Arguments shared by several commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import PRESETS, Config, apply_overrides, get_preset, load_config
from ..errors import UserError

if TYPE_CHECKING:
    import torch


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


def check_at_least(value: int, minimum: int, flag: str) -> int:
    """An integer option's lower bound, as a one-line UserError (argparse's would print the usage too)."""
    if value < minimum:
        raise UserError(f"{flag} must be at least {minimum}, got {value}")
    return value


def resolve_device(text: str | None) -> torch.device:
    """`--device` (default: cuda when available): a name torch does not know, or a CUDA device this machine does
    not have, is a UserError before anything loads."""
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {text}: not a device (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_out_folder(path: Path, flag: str = "--out") -> Path:
    """A folder to create or write into: an existing file there (or as one of its parents) is a UserError."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{flag} {path}: {'is' if p == path else f'{p} is'} a file, not a folder")
            break
    return path


def add_decoder_stages_arg(parser: argparse.ArgumentParser) -> None:
    """`--decoder-stages N`: inference with the first N decoder stages (`model.decoder.eval_stages`)."""
    parser.add_argument("--decoder-stages", type=int, metavar="N",
                        help="run the first N decoder stages (faster, usually less accurate; default: as the "
                             "model was saved, all stages unless exported with fewer); docs/usage.md")


def check_decoder_stages(args: argparse.Namespace, onnx: bool) -> int | None:
    """`--decoder-stages` for `load_model`; refused for an ONNX file, whose depth was fixed at export."""
    n = getattr(args, "decoder_stages", None)
    if n is not None and onnx:
        raise UserError(f"--decoder-stages: {args.checkpoint} is an ONNX file, its decoder depth was fixed when it "
                        "was exported (`dynamic-detr export --decoder-stages N`)")
    return n
