"""Load a trained model for inference from a run folder, a training checkpoint or a safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config
from ..errors import CheckpointError, ConfigError
from .checkpoint import check_compatible, load_checkpoint, load_weights


def resolve_weights_path(path: Path) -> Path:
    """A run folder means its best checkpoint (else last); files are taken as they are."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt", "weights/best.safetensors", "weights/last.safetensors",
                     "model.safetensors"):
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path}: no best.pt, last.pt or *.safetensors in this folder")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    return path


def load_model(path: str | Path, device: torch.device | str = "cpu", prefer_ema: bool = True):
    """(model in eval mode, config) from `path`; a training checkpoint's EMA weights are used when present."""
    from ..model import DynamicDETR

    path = resolve_weights_path(Path(path))
    if path.suffix == ".safetensors":
        state, meta = load_weights(path)
        config_json = path.parent / "config.json"  # a save_pretrained directory: its config.json rules
        if path.name == "model.safetensors" and config_json.is_file():
            meta["config"] = config_json.read_text()
        if "config" not in meta:
            raise CheckpointError(f"{path}: safetensors file has no 'config' metadata; not a dynamic-detr model")
        try:
            cfg_dict = json.loads(meta["config"])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: config is not valid JSON") from None
    else:
        ckpt = load_checkpoint(path)  # also checks that `model` and `ema` (when present) map names to tensors
        cfg_dict = ckpt.get("config")
        if not isinstance(cfg_dict, dict):
            raise CheckpointError(f"{path}: checkpoint holds no config")
        state = ckpt["model"]
        if prefer_ema and ckpt.get("ema"):
            prefix = "module."
            state = {k[len(prefix):]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}
            if not state:
                raise CheckpointError(f"{path}: malformed checkpoint: 'ema' holds no '{prefix}*' weights "
                                      "(not an EMA state dict)")
    try:
        cfg = Config.from_dict(cfg_dict, source=f"{path} (config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None  # names the file: "<path> (config): ..."
    b = cfg.model.backbone
    if b.norm == "auto":  # keep the norm layers the model was trained with ...
        b.norm = "frozen_bn" if b.weights else "bn"
    b.weights = None  # ... but don't fetch pretrained weights: the trained ones below replace them
    model = DynamicDETR(cfg.model)
    check_compatible(state, model, source=str(path))
    model.load_state_dict(state)
    model.run_config = cfg
    return model.to(device).eval(), cfg
