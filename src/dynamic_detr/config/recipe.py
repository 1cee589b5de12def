"""The convergence recipe: every field that is not in the paper, grouped by the step that adds it
(docs/recipe.md), and `recipe_rung`, a config with only the first steps kept."""

from __future__ import annotations

import copy
from typing import Any

from .schema import Config

RECIPE: list[tuple[str, list[str]]] = [
    ("fixes", ["model.encoder.residual", "model.encoder.gate", "model.encoder.gate_init", "model.encoder.levels",
               "model.encoder.dynamic",
               "train.lr_offset_mult", "train.lr_dynamic_mult",
               "model.decoder.roi_canonical_size"]),
    ("dense_head", ["model.dense.enabled", "model.dense.num_convs", "model.dense.center_radius",
                    "loss.dense_weight"]),
    ("query_selection", ["model.decoder.query_selection"]),
    ("distinct_queries", ["model.decoder.query_nms"]),
    ("one_to_many", ["model.decoder.num_hybrid_queries", "loss.hybrid_k", "loss.hybrid_weight"]),
    ("denoising", ["model.decoder.dn_queries", "model.decoder.dn_box_noise", "model.decoder.dn_label_noise",
                   "loss.dn_weight"]),
    ("mal", ["loss.mal", "loss.mal_gamma"]),
    ("stable_matching", ["loss.position_supervised", "loss.position_supervised_weight",
                         "loss.cost_position_modulated", "loss.cost_position_exponent"]),
    ("dense_o2o", ["data.mosaic_prob", "data.mosaic_size", "data.mosaic_degrees", "data.mosaic_translate",
                   "data.mosaic_scale", "data.aug_start", "data.mosaic_stop", "data.aug_stop"]),
    ("flat_cosine", ["train.lr_schedule", "train.lr_flat_until", "train.lr_min_factor"]),
    ("iou_aware", ["loss.iou_aware"]),
]
"""Every field that is not in the paper, grouped by the step of the convergence recipe that adds it (in the
order of the benchmark's ladder, docs/benchmarks.md). The paper's model has each at its default."""


def get_path(cfg: Any, path: str) -> Any:
    """The value at dotted `path` ("model.decoder.num_stages") of a config object."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_path(cfg: Any, path: str, value: Any) -> None:
    """Set the value at dotted `path` of a config object (a copy of `value`)."""
    *parents, last = path.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, copy.deepcopy(value))


def recipe_rung(cfg: Config, steps: int) -> Config:
    """`cfg` with only the first `steps` steps of `RECIPE` kept (their values from `cfg`), every later one at
    its default (off): 0 = the paper's model at cfg's size, len(RECIPE) = cfg itself."""
    out = copy.deepcopy(cfg)
    default = Config()
    for _, fields in RECIPE[steps:]:
        for path in fields:
            set_path(out, path, get_path(default, path))
    return out
