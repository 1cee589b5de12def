"""A cpu_tiny model whose every layer depends on its input (no zero-initialised offsets or box deltas)."""

from __future__ import annotations

import torch

from dynamic_detr.config import Config, get_preset
from dynamic_detr.model import DynamicDETR

CATEGORY_IDS = [3, 7, 9]
CLASS_NAMES = ["square", "disc", "star"]


def tiny_config() -> Config:
    """cpu_tiny, 3 classes with non-contiguous ids, evaluated at 96 px."""
    cfg = get_preset("cpu_tiny")
    m = cfg.model
    m.num_classes, m.category_ids, m.class_names = 3, list(CATEGORY_IDS), list(CLASS_NAMES)
    m.decoder.zero_init_deltas = False
    cfg.data.eval_short_side, cfg.data.eval_max_size = 96, 128
    return cfg


def live_model(seed: int = 0) -> DynamicDETR:
    """Random weights; the zero-initialised layers (encoder offsets, box deltas) get small random values too, so
    that the deformable convs sample at fractional offsets and the boxes depend on the image."""
    torch.manual_seed(seed)
    cfg = tiny_config()
    model = DynamicDETR(cfg.model).eval()
    model.run_config = cfg
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model
