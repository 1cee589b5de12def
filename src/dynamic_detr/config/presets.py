"""The named presets, declared as data: each is the preset it builds on (None: the schema's defaults, which are
the paper's model and training without its ImageNet weights), optionally with the convergence recipe cut to
its first `recipe_steps` steps (`recipe_rung`), plus a flat dict of dotted keys it changes.

`dynamic-detr config show NAME` prints a resolved preset, `dynamic-detr config diff A B` what differs between
two (compare.py). What each preset is for: docs/presets.md; the measurements behind the values: docs/recipe.md.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .io import set_dotted
from .recipe import recipe_rung
from .schema import Config


@dataclass(frozen=True)
class Preset:
    """One preset: `base` (a preset name, or None for `Config()`), then `recipe_steps` (None: keep every
    recipe step of the base; k: only its first k, 0 = the paper's model at the base's size), then `changes`
    (dotted key -> value, set in this order). The resolved config is named after the preset."""

    about: str
    """What the preset is for, in one paragraph."""
    base: str | None
    """The preset this one builds on; None: the schema's defaults."""
    changes: dict[str, Any] = field(default_factory=dict)
    """Dotted key -> value: every field this preset sets differently from its base."""
    recipe_steps: int | None = None
    """Keep only the first `recipe_steps` steps of `RECIPE` from the base (`recipe_rung`); None: all."""


PRESETS: dict[str, Preset] = {
    "paper_r50": Preset(
        about="The paper (docs/paper.md): R50-FPN (P3-P7, 256-d), 6 encoder blocks, 6 decoder stages, 300 "
              "queries, 4 heads, 7x7 RoI, multi-scale 480-800 / 1333, test 800 / 1333, AdamW 1e-4 (backbone "
              "1e-5), 1x schedule: the schema's defaults with ImageNet weights.",
        base=None,
        changes={"model.backbone.weights": "ResNet50_Weights.IMAGENET1K_V1"},
    ),
    "recipe_r50": Preset(
        about="paper_r50 plus the convergence recipe (RECIPE, docs/recipe.md), for users with GPUs: the same "
              "model at inference (the dense head only picks the initial boxes); the settings follow the cited "
              "works at COCO scale (FCOS / Co-DETR head of 4 convs, DDQ R-CNN's distinct queries at NMS 0.7, "
              "H-DETR's 6x one-to-many, DINO's 100 denoising queries, DEIM's MAL as the class loss with "
              "Stable-DINO's position-modulated matching cost (Stable-DINO's own class loss is MAL's "
              "alternative, off), DEIM's Dense O2O mosaics with its augmentation warm-up, no-augmentation tail "
              "and flat-cosine lr).",
        base="paper_r50",
        changes={
            "model.encoder.residual": True,
            "train.lr_offset_mult": 0.1,  # Deformable DETR's sampling-offset lr
            "model.dense.enabled": True,
            "model.dense.num_convs": 4,  # FCOS's towers
            "model.decoder.query_selection": "boxes",
            "model.decoder.query_nms": 0.7,  # DDQ R-CNN
            "model.decoder.num_hybrid_queries": 900,  # H-DETR's hybrid branch (loss.hybrid_k: its 6 by default)
            "model.decoder.dn_queries": 100,  # DINO
            "loss.mal": True,  # DEIM (its gamma 1.5 by default); replaces iou_aware's varifocal loss
            "loss.cost_position_modulated": True,  # Stable-DINO's matching cost (exponent 0.5 by default)
            # DEIM's Dense O2O and schedule (its base config, 58 epochs: mosaic 0.5 from epoch 4 to 29, no strong
            # augmentation from epoch 50, lr flat until 29, cosine to 0.5x at 50), as fractions of the run
            "data.mosaic_prob": 0.5,
            "data.aug_start": 4 / 58,
            "data.mosaic_stop": 29 / 58,
            "data.aug_stop": 50 / 58,
            "train.lr_schedule": "flat_cosine",  # lr_flat_until 0.5 and lr_min_factor 0.5: DEIM's by default
            "loss.iou_aware": True,
        },
    ),
    "cpu_small": Preset(
        about="Trains on 2 CPU cores in minutes (R18, 128-d, 256 px, 50 queries, from random weights), with the "
              "part of the convergence recipe that measured best there: identity-start encoder, dense head, "
              "query selection with distinct queries, IoU-aware targets; one-to-many and denoising stay off "
              "(they cost AP at this budget). Keeps the paper's architecture, the dynamic encoder included. "
              "Every choice's measurement: docs/recipe.md.",
        base=None,
        changes={
            "model.hidden_dim": 128,
            "model.backbone.depth": 18,
            "model.encoder.num_blocks": 2,
            "model.encoder.residual": True,
            "model.decoder.num_queries": 50,
            "model.decoder.dim_dynamic": 32,
            "model.decoder.dim_feedforward": 512,
            "model.dense.enabled": True,  # dense head + query selection: what makes the decoder start
            "model.decoder.query_selection": "boxes",
            "model.decoder.query_nms": 0.7,  # distinct queries (DDQ)
            "loss.iou_aware": True,
            # sized for 256 px images (the demo's)
            "data.train_short_sides": [192, 224, 256],
            "data.train_max_size": 288,
            "data.crop_resize_sides": [192, 224, 256],
            "data.crop_size": [160, 224],
            "data.eval_short_side": 256,
            "data.eval_max_size": 288,
            # at a budget of minutes the number of updates decides: batch 4 and a higher lr
            "train.batch_size": 4,
            "train.lr": 4e-4,
            "train.lr_backbone": 4e-4,  # random init everywhere: the backbone trains at the same lr
            "train.warmup_iters": 50,
            "train.clip_max_norm": 1.0,
            "train.amp": "bf16",  # float32 where the CPU has no native bf16 (train.amp)
        },
    ),
    "cpu_demo": Preset(
        about="The demo's model (`make demo`, cli/demo.py): cpu_small cut to what pays within 10 minutes on 2 "
              "cores from random weights, where AP grows with the number of updates: the dynamic encoder off "
              "(it costs more a step than it gives at this budget), one conv per dense-head tower instead of "
              "two, 3 decoder stages of 30 queries instead of 6 of 50 (the demo's images have at most 8 "
              "objects), training scales that never enlarge its 256 px images (so batches pad to 256, not "
              "288); distinct queries from cpu_small. Each cut's measured effect: docs/recipe.md, \"The demo on "
              "a CPU without bf16\".",
        base="cpu_small",
        changes={
            "model.encoder.enabled": False,
            "model.dense.num_convs": 1,
            "model.decoder.num_stages": 3,
            "model.decoder.num_queries": 30,
            "data.train_short_sides": [192, 224, 255],
            "data.train_max_size": 256,
            "data.crop_resize_sides": [192, 224, 255],
        },
    ),
    "cpu_tiny": Preset(
        about="Smallest useful model, for tests and smoke runs: the paper's model at cpu_small's size (no recipe "
              "step), cut to 64-d, 1 encoder block, 2 stages of 10 queries, 128-160 px, float32, no loader "
              "workers.",
        base="cpu_small",
        recipe_steps=0,
        changes={
            "model.hidden_dim": 64,
            "model.encoder.num_blocks": 1,
            "model.decoder.num_stages": 2,
            "model.decoder.num_queries": 10,
            "model.decoder.roi_size": 5,
            "model.decoder.dim_dynamic": 16,
            "model.decoder.dim_feedforward": 128,
            "data.train_short_sides": [128, 160],
            "data.train_max_size": 192,
            "data.crop_resize_sides": [128, 160],
            "data.crop_size": [96, 128],
            "data.eval_short_side": 160,
            "data.eval_max_size": 192,
            "data.num_workers": 0,
            "train.lr": 2e-4,
            "train.lr_backbone": 2e-4,
            "train.warmup_iters": 10,
            "train.amp": "none",
        },
    ),
}
"""Every named preset, by name (`--preset NAME`)."""


def _known(name: str) -> Preset:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_chain(name: str) -> list[str]:
    """`name` and the presets it builds on, nearest first: cpu_demo -> ["cpu_demo", "cpu_small"]."""
    chain = [name]
    while (base := _known(chain[-1]).base) is not None:
        if base in chain:
            raise ConfigError(f"preset '{name}': its bases form a loop ({' -> '.join([*chain, base])})")
        chain.append(base)
    return chain


def get_preset(name: str) -> Config:
    """A fresh, validated copy of the named preset."""
    preset = _known(name)
    preset_chain(name)  # a loop of bases is an error, not a recursion
    cfg = get_preset(preset.base) if preset.base is not None else Config()
    if preset.recipe_steps is not None:
        cfg = recipe_rung(cfg, preset.recipe_steps)
    data = cfg.to_dict()
    data["name"] = name
    for key, value in preset.changes.items():
        set_dotted(data, key, value, f"preset '{name}'")
    return Config.from_dict(data, source=f"preset '{name}'")
