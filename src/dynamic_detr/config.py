"""Typed configuration: dataclasses, strict YAML load/dump, named presets, `key=value` overrides.

Every field is documented where it is declared; `PRESETS` holds the named configurations
(`paper_r50` follows PAPER.md, the `cpu_*` presets are for 2 CPU cores).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class BackboneConfig:
    depth: int = 50
    """ResNet depth: 18, 34, 50 or 101."""
    weights: str | None = None
    """None (random init), a torchvision weights name ("DEFAULT", "IMAGENET1K_V1",
    "ResNet50_Weights.IMAGENET1K_V2") or a path to a local .pth / .safetensors state dict."""
    norm: str = "auto"
    """"frozen_bn" | "bn" | "auto". PAPER.md: frozen BN is right for pretrained weights but is an identity
    at random init, so "auto" picks frozen_bn when weights are loaded and trainable BN otherwise."""
    frozen_stages: int = 1
    """Stem + this many ResNet stages get no gradient (paper: stem and stage 1). Only applied when weights
    are loaded: freezing random weights would freeze noise."""


@dataclass
class EncoderConfig:
    enabled: bool = True
    """Ablation switch: False gives the plain FPN pyramid (PAPER.md table: -2.7 AP)."""
    num_blocks: int = 6
    """Dynamic encoder blocks (paper: 6)."""
    gn_groups: int = 16
    """GroupNorm groups after each deformable conv (DyHead)."""
    share_levels: bool = True
    """Share a block's offset conv, deformable convs, scale attention and DyReLU across levels (DyHead does);
    False gives each level its own (5x the encoder parameters, same FLOPs)."""
    scale_fine_offsets: bool = True
    """PAPER.md leaves open how s_i (predicted in level-i pixels) applies to the finer neighbour's stride-2
    conv: True doubles it so all three convs shift by the same image distance (the coarser neighbour's is
    pooled and halved, as PAPER.md asks); False uses it unscaled, as DyHead does."""
    deform_impl: str = "auto"
    """Kernel of the modulated deformable conv: "torchvision" (torchvision.ops.deform_conv2d), "sampled"
    (grid_sample + matmul, model/deform.py: same result, 5.7x faster on CPU here) or "auto" (sampled on CPU,
    torchvision on CUDA)."""
    scale_attn_relu: bool = False
    """DyHead's scale attention is hard_sigmoid(ReLU(conv1x1(pool))); the ReLU makes a negative logit a unit
    without gradient, so it is off by default (hard_sigmoid alone, still 0.5 at init)."""


@dataclass
class DecoderConfig:
    num_stages: int = 6
    """Dynamic decoder stages (paper: 6; 2 stages cost ~14 AP)."""
    num_queries: int = 300
    """Object queries K (paper: 300)."""
    num_heads: int = 4
    """Heads of the query self-attention (summary: 4)."""
    roi_size: int = 7
    """RoIAlign output size (paper: 7x7)."""
    roi_impl: str = "auto"
    """Kernel of the RoIAlign: "torchvision" (torchvision.ops.roi_align), "bags" (one weighted embedding_bag,
    model/roi.py: same result; torchvision's CPU backward is single-threaded) or "auto" (bags on CPU,
    torchvision on CUDA). ONNX export always uses torchvision's (an ONNX RoiAlign node)."""
    dim_dynamic: int = 64
    """Bottleneck of the dynamic 1x1 filters (Sparse R-CNN uses 64)."""
    dim_feedforward: int = 2048
    """Hidden width of the per-stage FFN."""
    dropout: float = 0.0
    """Dropout in attention / FFN."""
    detach_boxes: bool = True
    """Stop the gradient through the box fed to the next stage (Sparse R-CNN; PAPER.md, Dynamic decoder)."""
    box_pos: str = "sine"
    """Position of each query's box in its self-attention: "sine" (sine embedding of cxcywh + 2-layer MLP,
    added to q and k as DAB-DETR does) or "none" (Sparse R-CNN: content only)."""
    num_reg_layers: int = 1
    """(FC, LN, ReLU) layers before the box-delta FC: PAPER.md B^ = refine(B, FC(ReLU(LN(FC(Q^))))) is 1;
    Sparse R-CNN uses 3."""
    zero_init_deltas: bool = True
    """Zero-init the last box-delta layer so every stage starts as the identity refinement (Deformable DETR
    does this for its box head); with Xavier init (Sparse R-CNN) the untrained later stages scatter the boxes
    and their early losses are worse than stage 1's."""
    num_cls_layers: int = 0
    """(FC, LN, ReLU) layers before the class FC: PAPER.md C^ = Softmax(FC(Q^)) is 0; Sparse R-CNN uses 1."""


@dataclass
class ModelConfig:
    num_classes: int = 80
    """Number of object classes; `train` sets it from the dataset."""
    category_ids: list[int] = field(default_factory=list)
    """Dataset category id of each contiguous label (any ids, e.g. COCO's 1..90); `train` fills it.
    Empty: `postprocess` returns the contiguous labels themselves."""
    class_names: list[str] = field(default_factory=list)
    """Name of each contiguous label, for drawing and reports; `train` fills it."""
    hidden_dim: int = 256
    """Channels of the FPN / encoder and width of the object queries (paper: 256)."""
    class_loss: str = "focal"
    """"focal" (sigmoid, no background class) or "softmax" (cross-entropy with a no-object class)."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


@dataclass
class DataConfig:
    train_split: str = "train"
    """`DIR/annotations/instances_<split>.json`, images in `DIR/<split>/` (COCO 2017: "train2017")."""
    val_split: str = "val"
    train_short_sides: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    """Multi-scale training: the short side is drawn from these sizes (paper: 480-800)."""
    train_max_size: int = 1333
    """Cap on the long side while training."""
    crop_prob: float = 0.5
    """Probability of DETR's resize-crop-resize branch."""
    crop_resize_sides: list[int] = field(default_factory=lambda: [400, 500, 600])
    """Short sides of the first resize in the crop branch."""
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    """Min / max side of the random crop in the crop branch."""
    hflip_prob: float = 0.5
    eval_short_side: int = 800
    """Deterministic eval resize (paper: 800 / 1333)."""
    eval_max_size: int = 1333
    size_divisibility: int = 32
    """Padded batches are rounded up to a multiple of this."""
    num_workers: int = 2


@dataclass
class LossConfig:
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    """Hungarian matching costs (paper defaults 2 / 5 / 2)."""
    loss_class: float = 2.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    """Loss weights, per decoder stage (deep supervision)."""
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    no_object_weight: float = 0.1
    """Softmax loss only: weight of the no-object class (DETR's eos_coef)."""


@dataclass
class TrainConfig:
    epochs: int = 12
    """1x schedule = 12 epochs, 3x = 36."""
    batch_size: int = 2
    """Per process."""
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    lr_drop_epochs: list[int] = field(default_factory=lambda: [11])
    """lr x `lr_gamma` after these epochs (1x: after epoch 11)."""
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    """Linear warm-up from `warmup_factor` x lr."""
    warmup_factor: float = 0.001
    clip_max_norm: float = 0.1
    """Gradient clipping (0 = off)."""
    accumulate: int = 1
    """Gradient accumulation steps."""
    amp: str = "none"
    """"none" | "bf16" | "fp16" (fp16 on CUDA only)."""
    ema: bool = False
    ema_decay: float = 0.9998
    seed: int = 42
    deterministic: bool = False
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps (0 = at epoch ends only)."""
    eval_every: int = 1
    """Evaluate every N epochs (and always at the end)."""
    max_nonfinite_steps: int = 20
    """Consecutive non-finite losses before the run stops."""
    sync_bn: bool = True
    """Multi-GPU with trainable BN (random init): synchronise BN statistics across GPUs (SyncBatchNorm is
    CUDA-only; CPU processes keep per-process statistics)."""


@dataclass
class Config:
    name: str = "dynamic_detr"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ----------------------------------------------------------------- io
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        cfg = _build(cls, data, source)
        cfg.validate(source)
        return cfg

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self, source: str = "config") -> None:
        """Cross-field checks; raises ConfigError naming the field."""
        m = self.model
        checks = [
            (m.backbone.depth in (18, 34, 50, 101), "model.backbone.depth must be 18, 34, 50 or 101"),
            (m.backbone.norm in ("auto", "frozen_bn", "bn"), "model.backbone.norm must be auto|frozen_bn|bn"),
            (m.class_loss in ("focal", "softmax"), "model.class_loss must be 'focal' or 'softmax'"),
            (m.num_classes >= 1, "model.num_classes must be >= 1"),
            (m.hidden_dim % m.decoder.num_heads == 0, "model.hidden_dim must be divisible by num_heads"),
            (m.hidden_dim % m.encoder.gn_groups == 0, "model.hidden_dim must be divisible by gn_groups"),
            (m.decoder.num_stages >= 1, "model.decoder.num_stages must be >= 1"),
            (m.decoder.num_queries >= 1, "model.decoder.num_queries must be >= 1"),
            (m.encoder.num_blocks >= 0, "model.encoder.num_blocks must be >= 0"),
            (m.decoder.box_pos in ("sine", "none"), "model.decoder.box_pos must be 'sine' or 'none'"),
            (m.decoder.num_reg_layers >= 0 and m.decoder.num_cls_layers >= 0,
             "model.decoder.num_reg_layers / num_cls_layers must be >= 0"),
            (self.train.amp in ("none", "bf16", "fp16"), "train.amp must be none|bf16|fp16"),
            (m.encoder.deform_impl in ("auto", "torchvision", "sampled"),
             "model.encoder.deform_impl must be auto|torchvision|sampled"),
            (m.decoder.roi_impl in ("auto", "torchvision", "bags"),
             "model.decoder.roi_impl must be auto|torchvision|bags"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.accumulate >= 1, "train.accumulate must be >= 1"),
            (len(self.data.train_short_sides) >= 1, "data.train_short_sides must not be empty"),
            (len(self.data.crop_size) == 2, "data.crop_size must be [min, max]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{source}: {msg}")


# --------------------------------------------------------------------------- building from plain data
def _build(cls: type, data: Any, where: str) -> Any:
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
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not a valid {tp}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
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


def load_config(path: str | Path) -> Config:
    """Load a YAML config (safe_load; unknown keys are errors with a suggestion)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return Config.from_dict(data or {}, source=str(path))


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
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                options = list(node) if isinstance(node, dict) else []
                close = difflib.get_close_matches(part, options, n=1)
                hint = f" (did you mean '{'.'.join([*parts[:depth], close[0]])}'?)" if close else ""
                raise ConfigError(f"override '{item}': unknown key '{key}'{hint}")
            if depth == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return Config.from_dict(data, source="overrides")


# --------------------------------------------------------------------------- presets
def _paper_r50() -> Config:
    """PAPER.md: R50-FPN (P3-P7, 256-d), 6 encoder blocks, 6 decoder stages, 300 queries, 4 heads, 7x7 RoI,
    multi-scale 480-800 / 1333, test 800 / 1333, AdamW 1e-4 (backbone 1e-5), 1x schedule."""
    cfg = Config(name="paper_r50")
    cfg.model.backbone.weights = "ResNet50_Weights.IMAGENET1K_V1"
    return cfg


def _cpu_small() -> Config:
    """The demo preset: trains on 2 CPU cores in minutes (R18, 128-d, 320 px, 50 queries)."""
    cfg = Config(name="cpu_small")
    m = cfg.model
    m.hidden_dim = 128
    m.backbone.depth = 18
    m.encoder.num_blocks = 2
    m.decoder = DecoderConfig(num_stages=6, num_queries=50, num_heads=4, roi_size=7, dim_dynamic=32,
                              dim_feedforward=512)
    d = cfg.data
    d.train_short_sides = [256, 288, 320]
    d.train_max_size = 384
    d.crop_resize_sides = [256, 288, 320]
    d.crop_size = [192, 256]
    d.eval_short_side = 320
    d.eval_max_size = 384
    t = cfg.train
    t.batch_size = 8
    # random init everywhere: the backbone trains at the same lr. 4e-4 diverged after ~300 steps in the
    # convergence benchmark (loss 18.4 -> 20.4, AP 0.6 -> 0.0 by epoch 8); 2e-4 kept improving (docs/benchmarks.md)
    t.lr = 2e-4
    t.lr_backbone = 2e-4
    t.warmup_iters = 50
    t.clip_max_norm = 1.0
    return cfg


def _cpu_tiny() -> Config:
    """Smallest useful model, for tests and smoke runs (R18, 64-d, 1 encoder block, 2 stages, 10 queries)."""
    cfg = _cpu_small()
    cfg.name = "cpu_tiny"
    m = cfg.model
    m.hidden_dim = 64
    m.encoder.num_blocks = 1
    m.decoder = DecoderConfig(num_stages=2, num_queries=10, num_heads=4, roi_size=5, dim_dynamic=16,
                              dim_feedforward=128)
    d = cfg.data
    d.train_short_sides = [128, 160]
    d.train_max_size = 192
    d.crop_resize_sides = [128, 160]
    d.crop_size = [96, 128]
    d.eval_short_side = 160
    d.eval_max_size = 192
    d.num_workers = 0
    cfg.train.batch_size = 4
    cfg.train.warmup_iters = 10
    return cfg


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "paper_r50": _paper_r50,
    "cpu_small": _cpu_small,
    "cpu_tiny": _cpu_tiny,
}


def get_preset(name: str) -> Config:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())
