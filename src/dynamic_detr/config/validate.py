"""Every check of a config that needs nothing but its values, in one place.

`Config.validate` (so every load, preset and override) runs them all; `check_data` serves code that is handed
a data section built in Python (`data.transforms.build_transforms`). Checks that need the machine
or other files stay with the code that has them: backbone weights names (torchvision's registry, the file
system), `train.amp=fp16` (CUDA), a checkpoint's shapes, a dataset's categories.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .model_schema import ModelConfig
    from .schema import Config, DataConfig, LossConfig, TrainConfig

DEPTHS = (18, 34, 50, 101)
NORMS = ("auto", "frozen_bn", "bn", "gn")
CLASS_LOSSES = ("focal", "softmax")
GATES = ("block", "channel")
BOX_POS = ("sine", "none")
DEFORM_IMPLS = ("auto", "torchvision", "sampled", "bags")
ROI_IMPLS = ("auto", "torchvision", "bags")
QUERY_SELECTIONS = ("none", "boxes", "boxes+content")
AMPS = ("none", "bf16", "fp16")
FORMATS = ("auto", "coco", "yolo", "voc")
LR_SCHEDULES = ("step", "flat_cosine")


def model_problems(m: ModelConfig) -> Iterator[str]:
    """What is wrong with a model section, one message per problem, each naming its field."""
    dec, enc = m.decoder, m.encoder
    if m.backbone.depth not in DEPTHS:
        yield "model.backbone.depth must be 18, 34, 50 or 101"
    if m.backbone.norm not in NORMS:
        yield "model.backbone.norm must be auto|frozen_bn|bn|gn"
    if m.class_loss not in CLASS_LOSSES:
        yield "model.class_loss must be 'focal' or 'softmax'"
    if m.num_classes < 1:
        yield "model.num_classes must be >= 1"
    if m.category_ids and len(m.category_ids) != m.num_classes:
        yield f"model.category_ids has {len(m.category_ids)} ids but model.num_classes is {m.num_classes}"
    if dec.num_heads < 1 or m.hidden_dim % dec.num_heads:
        yield "model.hidden_dim must be divisible by num_heads"
    if enc.gn_groups < 1 or m.hidden_dim % enc.gn_groups:
        yield "model.hidden_dim must be divisible by gn_groups"
    if dec.num_stages < 1:
        yield "model.decoder.num_stages must be >= 1"
    if not 0 <= dec.eval_stages <= dec.num_stages:
        yield f"model.decoder.eval_stages must be in [0, num_stages={dec.num_stages}] (0 = all stages)"
    if dec.num_queries < 1:
        yield "model.decoder.num_queries must be >= 1"
    if enc.num_blocks < 0:
        yield "model.encoder.num_blocks must be >= 0"
    if enc.levels < 0:
        yield "model.encoder.levels must be >= 0 (0 = all levels)"
    if enc.gate not in GATES:
        yield "model.encoder.gate must be block|channel"
    if dec.box_pos not in BOX_POS:
        yield "model.decoder.box_pos must be 'sine' or 'none'"
    if dec.num_reg_layers < 0 or dec.num_cls_layers < 0:
        yield "model.decoder.num_reg_layers / num_cls_layers must be >= 0"
    if enc.deform_impl not in DEFORM_IMPLS:
        yield "model.encoder.deform_impl must be auto|torchvision|sampled|bags"
    if dec.roi_impl not in ROI_IMPLS:
        yield "model.decoder.roi_impl must be auto|torchvision|bags"
    if dec.query_selection not in QUERY_SELECTIONS:
        yield "model.decoder.query_selection must be none|boxes|boxes+content"
    if dec.query_selection != "none" and not m.dense.enabled:
        yield "model.decoder.query_selection needs model.dense.enabled=true"
    if not 0.0 <= dec.query_nms <= 1.0:
        yield "model.decoder.query_nms must be in [0, 1] (0 = off)"
    if dec.query_nms != 0.0 and dec.query_selection == "none":
        yield "model.decoder.query_nms needs model.decoder.query_selection=boxes or boxes+content"
    if dec.num_hybrid_queries < 0 or dec.dn_queries < 0:
        yield "model.decoder.num_hybrid_queries / dn_queries must be >= 0"
    if m.dense.num_convs < 0:
        yield "model.dense.num_convs must be >= 0"
    if dec.roi_canonical_size <= 0:
        yield "model.decoder.roi_canonical_size must be > 0"


def loss_problems(loss: LossConfig, m: ModelConfig) -> Iterator[str]:
    if loss.hybrid_k < 1:
        yield "loss.hybrid_k must be >= 1"
    for name in ("iou_aware", "mal", "position_supervised"):
        if getattr(loss, name) and m.class_loss != "focal":
            yield f"loss.{name} needs model.class_loss=focal"
    if loss.mal and loss.position_supervised:
        yield ("loss.mal and loss.position_supervised are two class losses for the same term (DEIM's, "
               "Stable-DINO's): turn one off")
    if not (math.isfinite(loss.mal_gamma) and loss.mal_gamma > 0):
        yield f"loss.mal_gamma must be a finite number > 0, got {loss.mal_gamma}"
    if not (math.isfinite(loss.cost_position_exponent) and loss.cost_position_exponent > 0):
        yield f"loss.cost_position_exponent must be a finite number > 0, got {loss.cost_position_exponent}"
    if not (math.isfinite(loss.position_supervised_weight) and loss.position_supervised_weight >= 0):
        yield f"loss.position_supervised_weight must be a finite number >= 0, got {loss.position_supervised_weight}"


def train_problems(t: TrainConfig) -> Iterator[str]:
    if t.amp not in AMPS:
        yield "train.amp must be none|bf16|fp16"
    if t.batch_size < 1:
        yield "train.batch_size must be >= 1"
    if t.accumulate < 1:
        yield "train.accumulate must be >= 1"
    if t.eval_every < 1:
        yield "train.eval_every must be >= 1 (the last epoch is always evaluated)"
    if t.max_nonfinite_steps < 1:
        yield "train.max_nonfinite_steps must be >= 1"
    if t.patience < 0:
        yield f"train.patience must be >= 0 (epochs without an AP gain; 0 = off), got {t.patience}"
    elif 0 < t.patience < t.eval_every:
        yield (f"train.patience ({t.patience}) must be >= train.eval_every ({t.eval_every}): patience counts epochs "
               "and AP is measured every eval_every epochs (or set train.patience=0, off)")
    if not (math.isfinite(t.min_delta) and t.min_delta >= 0.0):
        yield f"train.min_delta must be a finite number >= 0 (AP points), got {t.min_delta}"
    if t.epochs < 1:
        yield "train.epochs must be >= 1"
    if t.lr_schedule not in LR_SCHEDULES:
        yield f"train.lr_schedule must be step|flat_cosine, got '{t.lr_schedule}'"
    if not 0.0 <= t.lr_flat_until <= 1.0:
        yield f"train.lr_flat_until must be a fraction of the run in [0, 1], got {t.lr_flat_until}"
    if not 0.0 <= t.lr_min_factor <= 1.0:
        yield f"train.lr_min_factor must be in [0, 1] (a factor of the lr), got {t.lr_min_factor}"


def data_problems(d: DataConfig) -> Iterator[str]:
    """The data section: sizes the transforms can use, probabilities, the dataset's format."""
    if not d.train_short_sides:
        yield "data.train_short_sides must not be empty"
    elif min(d.train_short_sides) < 1:
        yield f"data.train_short_sides must be positive sizes, got {d.train_short_sides}"
    elif max(d.train_short_sides) >= d.train_max_size:
        yield (f"data.train_max_size ({d.train_max_size}) must exceed every data.train_short_sides "
               f"({max(d.train_short_sides)})")
    if d.eval_short_side < 1:
        yield f"data.eval_short_side must be a positive size, got {d.eval_short_side}"
    elif d.eval_short_side >= d.eval_max_size:
        yield f"data.eval_max_size ({d.eval_max_size}) must exceed data.eval_short_side ({d.eval_short_side})"
    if not d.crop_resize_sides or min(d.crop_resize_sides) < 1:
        yield f"data.crop_resize_sides must be positive sizes, got {d.crop_resize_sides}"
    if len(d.crop_size) != 2 or not 1 <= d.crop_size[0] <= d.crop_size[1]:
        yield f"data.crop_size must be [min, max] with 1 <= min <= max, got {d.crop_size}"
    for name in ("crop_prob", "hflip_prob", "mosaic_prob"):
        p = getattr(d, name)
        if not 0.0 <= p <= 1.0:
            yield f"data.{name} must be a probability in [0, 1], got {p}"
    yield from augment_policy_problems(d)
    if d.format not in FORMATS:
        yield "data.format must be auto|coco|yolo|voc"
    elif d.format not in ("auto", "coco") and (d.train_ann or d.train_images or d.val_ann or d.val_images):
        yield f"data.*_ann / data.*_images name a COCO file and folder; data.format is '{d.format}'"


def augment_policy_problems(d: DataConfig) -> Iterator[str]:
    """Dense O2O's mosaic and the augmentation policy's fractions of the run (data/policy.py)."""
    if d.mosaic_size < 1:
        yield f"data.mosaic_size must be a positive size, got {d.mosaic_size}"
    if not 0.0 <= d.mosaic_degrees <= 180.0:
        yield f"data.mosaic_degrees must be in [0, 180], got {d.mosaic_degrees}"
    if not 0.0 <= d.mosaic_translate <= 1.0:
        yield f"data.mosaic_translate must be a fraction in [0, 1], got {d.mosaic_translate}"
    if len(d.mosaic_scale) != 2 or not 0.0 < d.mosaic_scale[0] <= d.mosaic_scale[1]:
        yield f"data.mosaic_scale must be [min, max] with 0 < min <= max, got {d.mosaic_scale}"
    for name in ("aug_start", "mosaic_stop", "aug_stop"):
        f = getattr(d, name)
        if not 0.0 <= f <= 1.0:
            yield f"data.{name} must be a fraction of the run in [0, 1], got {f}"
            return
    if d.aug_start > d.aug_stop:
        yield (f"data.aug_start ({d.aug_start}) must be <= data.aug_stop ({d.aug_stop}): strong augmentation runs "
               "from aug_start until the no-augmentation tail")
    elif d.aug_start > d.mosaic_stop:
        yield f"data.aug_start ({d.aug_start}) must be <= data.mosaic_stop ({d.mosaic_stop})"
    elif d.mosaic_prob > 0 and d.aug_start >= min(d.mosaic_stop, d.aug_stop):
        yield (f"data.mosaic_prob is {d.mosaic_prob} but the mosaic window is empty: mosaics are drawn from "
               f"data.aug_start ({d.aug_start}) until data.mosaic_stop ({d.mosaic_stop}) or data.aug_stop "
               f"({d.aug_stop}), whichever comes first")


def schedule_problems(t: TrainConfig, d: DataConfig) -> Iterator[str]:
    """The flat-cosine lr reaches its floor at the no-augmentation tail (`data.aug_stop`)."""
    if t.lr_schedule == "flat_cosine" and 0.0 <= d.aug_stop <= 1.0 and t.lr_flat_until > d.aug_stop:
        yield (f"train.lr_flat_until ({t.lr_flat_until}) must be <= data.aug_stop ({d.aug_stop}): flat_cosine "
               "lowers the lr after lr_flat_until and holds its floor from aug_stop on")


def config_problems(cfg: Config) -> list[str]:
    """Every problem of a whole config, model first."""
    return [*model_problems(cfg.model), *loss_problems(cfg.loss, cfg.model), *train_problems(cfg.train),
            *data_problems(cfg.data), *schedule_problems(cfg.train, cfg.data)]


def check_config(cfg: Config, source: str = "config") -> None:
    """Raise ConfigError (`<source>: <the first problem>`) unless the config is valid."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(f"{source}: {problems[0]}")


def check_data(d: DataConfig) -> None:
    """Raise ConfigError for a data section built without `Config` (e.g. passed to `build_transforms`)."""
    for problem in data_problems(d):
        raise ConfigError(problem)

