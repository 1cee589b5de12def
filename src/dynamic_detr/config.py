"""Typed configuration: dataclasses, strict YAML load/dump, named presets, `key=value` overrides.

Every field is documented where it is declared; `PRESETS` holds the named configurations
(`paper_r50` follows the paper, docs/paper.md; the `cpu_*` presets are for 2 CPU cores).
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
from .fileio import atomic_write_text


@dataclass
class BackboneConfig:
    depth: int = 50
    """ResNet depth: 18, 34, 50 or 101."""
    weights: str | None = None
    """None (random init), a torchvision weights name ("DEFAULT", "IMAGENET1K_V1",
    "ResNet50_Weights.IMAGENET1K_V2") or a path to a local .pth / .safetensors state dict."""
    norm: str = "auto"
    """"frozen_bn" | "bn" | "gn" | "auto". Frozen BN is right for pretrained weights but is an identity at random
    init (docs/paper.md), so "auto" picks frozen_bn when weights are loaded and trainable BN otherwise.
    "gn": GroupNorm(32) throughout the trunk, batch-size independent (from scratch, He et al. 2019; not in
    the paper); ImageNet weights load into it (the affine parameters), their BN statistics are dropped."""
    frozen_stages: int = 1
    """Stem + this many ResNet stages get no gradient (paper: stem and stage 1). Only applied when weights
    are loaded: freezing random weights would freeze noise."""


@dataclass
class EncoderConfig:
    enabled: bool = True
    """Ablation switch: False gives the plain FPN pyramid (the paper: -2.7 AP; docs/paper.md)."""
    num_blocks: int = 6
    """Dynamic encoder blocks (paper: 6)."""
    gn_groups: int = 16
    """GroupNorm groups after each deformable conv (DyHead)."""
    share_levels: bool = True
    """Share a block's offset conv, deformable convs, scale attention and DyReLU across levels (DyHead does);
    False gives each level its own (5x the encoder parameters, same FLOPs)."""
    scale_fine_offsets: bool = True
    """The paper leaves open how s_i (predicted in level-i pixels) applies to the finer neighbour's stride-2
    conv: True doubles it so all three convs shift by the same image distance (the coarser neighbour's is
    pooled and halved; docs/paper.md); False uses it unscaled, as DyHead does."""
    deform_impl: str = "auto"
    """Kernel of the modulated deformable conv (model/deform.py, all three give torchvision's result):
    "torchvision" (torchvision.ops.deform_conv2d), "sampled" (grid_sample, mask multiply, matmul: 5.7x faster
    than torchvision's on CPU), "bags" (one weighted embedding_bag with the mask folded into the bilinear
    weights, then one matmul: 1.5x faster than sampled forward + backward on cpu_small's convs at batch 4) or
    "auto" (bags on CPU, torchvision on CUDA)."""
    scale_attn_relu: bool = False
    """DyHead's scale attention is hard_sigmoid(ReLU(conv1x1(pool))); the ReLU makes a negative logit a unit
    without gradient, so it is off by default (hard_sigmoid alone, still 0.5 at init)."""
    residual: bool = False
    """Not in the paper (nor in DyHead, which has no gate): each block becomes out = x + g * block(x) with a
    learned gate g initialised to `gate_init` (0: ReZero, Bachlechner et al. 2020), so that the untrained
    encoder starts as the identity and the decoder sees the FPN features unscrambled. Measured effect:
    docs/benchmarks.md (convergence ladder)."""
    gate: str = "block"
    """Shape of the residual gate g (with `residual`): "block" = one scalar per block (ReZero), "channel" = one
    per level and channel (LayerScale, Touvron et al. 2021: each level opens on its own). Not in the paper."""
    gate_init: float = 0.0
    """Initial value of every residual gate (ReZero: 0; LayerScale: a small non-zero value such as 0.1, so
    that the block's output has a gradient path from the first step). Not in the paper."""
    dynamic: bool = True
    """False gives a static control (not in the paper; an experiment's arm, docs/benchmarks.md): the same
    convolutions at the same cost, with nothing dynamic left: offsets frozen at 0, modulation masks at 0.5,
    scale attention at 0.5 and DyReLU a plain ReLU (their layers frozen at that init). It separates "dynamic
    attention" from "more convolutions"."""
    levels: int = 0
    """The blocks run on the finest `levels` pyramid levels (P3 first); the coarser ones pass through
    unchanged (the FPN's features) and still serve as the coarser neighbour of the last one run. 0 = all
    levels (the paper). At CPU image sizes (<= 320 px) the RoIs are pooled from P3 and the dense head's
    positives fall on P3-P4, so the blocks' work on P5-P7 feeds little that the losses read. Not in the
    paper."""
    checkpoint: bool = False
    """Activation checkpointing of each block (model/checkpointing.py; not in the paper): its training
    activations are recomputed in the backward instead of kept. Same outputs and gradients; less memory, a
    longer step.
    cpu_small at batch 8 (docs/benchmarks.md, "Memory"): the encoder keeps 412 MB for the backward; with the
    decoder's and dense head's switches on too, peak memory 2683 -> 1979 MB at 1.2x the step time."""


@dataclass
class DecoderConfig:
    num_stages: int = 6
    """Dynamic decoder stages (paper: 6; 2 stages cost ~14 AP)."""
    num_queries: int = 300
    """Object queries K (paper: 300)."""
    num_heads: int = 4
    """Heads of the query self-attention (4, docs/paper.md)."""
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
    """Stop the gradient through the box fed to the next stage (Sparse R-CNN; docs/paper.md, Dynamic decoder)."""
    box_pos: str = "sine"
    """Position of each query's box in its self-attention: "sine" (sine embedding of cxcywh + 2-layer MLP,
    added to q and k as DAB-DETR does) or "none" (Sparse R-CNN: content only)."""
    num_reg_layers: int = 1
    """(FC, LN, ReLU) layers before the box-delta FC: the paper's B^ = refine(B, FC(ReLU(LN(FC(Q^))))) is 1;
    Sparse R-CNN uses 3."""
    zero_init_deltas: bool = True
    """Zero-init the last box-delta layer so every stage starts as the identity refinement (Deformable DETR
    does this for its box head); with Xavier init (Sparse R-CNN) the untrained later stages scatter the boxes
    and their early losses are worse than stage 1's."""
    num_cls_layers: int = 0
    """(FC, LN, ReLU) layers before the class FC: the paper's C^ = Softmax(FC(Q^)) is 0; Sparse R-CNN uses 1."""
    roi_canonical_size: int = 224
    """RoI level rule: a box of this size (sqrt of its area, input pixels) is pooled from P4 and each doubling
    one level up (FPN: 224, the ImageNet size). At <= 320 px inputs 224 sends every box to P3."""
    query_selection: str = "none"
    """Where the initial boxes come from. "none": learned boxes, all the whole image (the paper).
    "boxes": the dense head's top-K boxes of each image, with learned content (DINO's mixed query
    selection); "boxes+content": also the content, from the encoder feature at each selected position
    (two-stage Deformable DETR, RT-DETR). Needs `model.dense.enabled`. Not in the paper."""
    query_nms: float = 0.0
    """Distinct queries (DDQ, Zhang et al. 2023), with query selection: the K initial boxes are chosen after a
    class-agnostic NMS at this IoU over the dense head's top 4K (`model.dense_head.select_queries`), so
    that the queries start on distinct objects instead of K near-copies of the few best boxes, and the
    one-to-one matching no longer has to teach the decoder to suppress them. 0 = off (plain top-K). DDQ uses
    0.7 for its R-CNN / FCN (our decoder is R-CNN-like) and 0.8 for DDQ DETR. Training and inference. Measured
    on 2 CPU cores (10-minute demo runs, docs/recipe.md): cpu_demo 26.8 -> 43.8 AP, cpu_small 7.8 -> 10.3, at
    the same step cost (0.848 vs 0.851 s a cpu_demo step). Not in the paper."""
    num_hybrid_queries: int = 0
    """H-DETR's hybrid branch, training only: this many extra queries (the dense head's next top-K boxes
    with query selection, else learned) matched one-to-many (each target repeated `loss.hybrid_k` times),
    in their own attention group. 0 = off. Not in the paper."""
    dn_queries: int = 0
    """Denoising (DN-DETR / DINO), training only: up to this many extra queries per image, groups of noised
    ground-truth boxes (and labels), each supervised by its own target at every stage, in attention groups
    the matching queries never see. 0 = off. Not in the paper."""
    dn_box_noise: float = 0.4
    """Denoising box noise scale lambda (DN-DETR): centres move up to lambda * w / 2, sides scale by up to
    1 +- lambda."""
    dn_label_noise: float = 0.2
    """Denoising: probability that a noised query carries a random label instead of its own."""
    checkpoint: bool = False
    """Activation checkpointing of each stage (model/checkpointing.py; not in the paper): its training
    activations are recomputed in the backward instead of kept. Same outputs and gradients; less memory, a
    longer step.
    cpu_small at batch 8: the six stages keep 329 MB for the backward (see `encoder.checkpoint` for the three
    switches together)."""


@dataclass
class DenseHeadConfig:
    enabled: bool = False
    """Not in the paper: an FCOS head on the dynamic encoder's pyramid (Co-DETR's dense auxiliary head,
    one-to-many: every location inside a target's centre region is a positive). Training loss only, unless
    `decoder.query_selection` uses its top-K boxes as the decoder's initial boxes."""
    num_convs: int = 2
    """3x3 conv + GroupNorm + ReLU layers in each of the class and box towers (FCOS: 4)."""
    center_radius: float = 1.5
    """FCOS centre sampling: a location is a positive when within radius x stride of a target's centre
    (and inside it); a target with no such location gets its nearest location."""
    checkpoint: bool = False
    """Activation checkpointing of the head (model/checkpointing.py; not in the paper): its training activations
    are recomputed in the backward instead of kept. Same outputs and gradients; less memory, a longer step.
    cpu_small at batch 8: the head keeps 89 MB for the backward (see `encoder.checkpoint`)."""


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
    dense: DenseHeadConfig = field(default_factory=DenseHeadConfig)

    def names(self) -> dict[int, str]:
        """Dataset category id -> class name (for drawing and reports; empty before `train` fills them)."""
        return dict(zip(self.category_ids, self.class_names, strict=False))


@dataclass
class DataConfig:
    train_split: str = "train"
    """`DIR/annotations/instances_<split>.json`, images in `DIR/<split>/` (COCO 2017: "train2017"); for the other
    layouts the split's name there (Roboflow's `valid` is found for "val"). docs/data.md, "Layouts"."""
    val_split: str = "val"
    format: str = "auto"
    """"auto" | "coco" | "yolo" | "voc": the dataset's format under `--data`. "auto" looks for the standard COCO
    layout, then a Roboflow COCO export (`DIR/<split>/_annotations.coco.json`), a YOLO `data.yaml`, a Pascal VOC
    `ImageSets/Main/<split>.txt`, in that order (`data.layout.resolve_split`)."""
    train_ann: str = ""
    """COCO annotation file of the training split at any path (relative: to `--data`); empty: found by
    `format`. E.g. a Label Studio export's `result.json`, CVAT's `annotations/instances_default.json`."""
    train_images: str = ""
    """Image folder of the training split (relative: to `--data`); empty: `DIR/<train_split>/` with the
    standard layout, the folder of `train_ann` when that is set."""
    val_ann: str = ""
    """As `train_ann`, for the validation split."""
    val_images: str = ""
    """As `train_images`, for the validation split."""
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
    group_by_aspect: bool = True
    """Training batches hold images of one orientation (portrait h > w, or landscape / square, from the JSON's
    sizes), which cuts padding: `data.sampler.GroupedBatchSampler` (at most one mixed batch per epoch and
    rank, from the leftovers; same batch count, resumable). False: batches in the shuffled order as drawn."""
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
    dense_weight: float = 1.0
    """Weight of the dense head's FCOS loss (focal + 2 x GIoU + centre-ness BCE) in the total."""
    hybrid_k: int = 6
    """One-to-many branch (`decoder.num_hybrid_queries`): each target is repeated k times (H-DETR: 6)."""
    hybrid_weight: float = 1.0
    """Weight of the one-to-many branch's losses (H-DETR: 1)."""
    dn_weight: float = 1.0
    """Weight of the denoising queries' losses."""
    iou_aware: bool = False
    """Focal loss only, not in the paper: a matched query's class target is the IoU of its box with the
    target instead of 1 (varifocal loss, as RT-DETR / Stable-DINO), so scores rank by localisation quality."""


@dataclass
class TrainConfig:
    epochs: int = 12
    """1x schedule = 12 epochs, 3x = 36."""
    batch_size: int = 2
    """Per process."""
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    lr_offset_mult: float = 1.0
    """lr multiplier of the encoder's offset / mask convs (Deformable DETR trains its sampling offsets at
    0.1x). Not in the paper."""
    lr_dynamic_mult: float = 1.0
    """lr multiplier of the decoder's dynamic-filter generators (d -> 2 d d_dyn). Not in the paper."""
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
    """"none" | "bf16" | "fp16" (fp16 on CUDA only). "bf16" on a CPU without native bf16 (AVX2-only: oneDNN
    emulates it, a cpu_small step 26 s against 4.7 s in float32 on a 2-core AVX2 EPYC) trains and evaluates in
    float32, and the run says so (`evaluate.inference.effective_amp`). With native bf16 (AVX-512 bf16 / AMX) cpu_small
    trains x1.29 faster in bf16 (docs/benchmarks.md)."""
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
        """Write the config as YAML, atomically (a crash leaves the previous file, never half of one)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self, source: str = "config") -> None:
        """Cross-field checks; raises ConfigError naming the field."""
        m = self.model
        checks = [
            (m.backbone.depth in (18, 34, 50, 101), "model.backbone.depth must be 18, 34, 50 or 101"),
            (m.backbone.norm in ("auto", "frozen_bn", "bn", "gn"), "model.backbone.norm must be auto|frozen_bn|bn|gn"),
            (m.class_loss in ("focal", "softmax"), "model.class_loss must be 'focal' or 'softmax'"),
            (m.num_classes >= 1, "model.num_classes must be >= 1"),
            (m.hidden_dim % m.decoder.num_heads == 0, "model.hidden_dim must be divisible by num_heads"),
            (m.hidden_dim % m.encoder.gn_groups == 0, "model.hidden_dim must be divisible by gn_groups"),
            (m.decoder.num_stages >= 1, "model.decoder.num_stages must be >= 1"),
            (m.decoder.num_queries >= 1, "model.decoder.num_queries must be >= 1"),
            (m.encoder.num_blocks >= 0, "model.encoder.num_blocks must be >= 0"),
            (m.encoder.levels >= 0, "model.encoder.levels must be >= 0 (0 = all levels)"),
            (m.encoder.gate in ("block", "channel"), "model.encoder.gate must be block|channel"),
            (m.decoder.box_pos in ("sine", "none"), "model.decoder.box_pos must be 'sine' or 'none'"),
            (m.decoder.num_reg_layers >= 0 and m.decoder.num_cls_layers >= 0,
             "model.decoder.num_reg_layers / num_cls_layers must be >= 0"),
            (self.train.amp in ("none", "bf16", "fp16"), "train.amp must be none|bf16|fp16"),
            (m.encoder.deform_impl in ("auto", "torchvision", "sampled", "bags"),
             "model.encoder.deform_impl must be auto|torchvision|sampled|bags"),
            (m.decoder.roi_impl in ("auto", "torchvision", "bags"),
             "model.decoder.roi_impl must be auto|torchvision|bags"),
            (m.decoder.query_selection in ("none", "boxes", "boxes+content"),
             "model.decoder.query_selection must be none|boxes|boxes+content"),
            (m.decoder.query_selection == "none" or m.dense.enabled,
             "model.decoder.query_selection needs model.dense.enabled=true"),
            (0.0 <= m.decoder.query_nms <= 1.0, "model.decoder.query_nms must be in [0, 1] (0 = off)"),
            (m.decoder.query_nms == 0.0 or m.decoder.query_selection != "none",
             "model.decoder.query_nms needs model.decoder.query_selection=boxes or boxes+content"),
            (m.decoder.num_hybrid_queries >= 0 and m.decoder.dn_queries >= 0,
             "model.decoder.num_hybrid_queries / dn_queries must be >= 0"),
            (self.loss.hybrid_k >= 1, "loss.hybrid_k must be >= 1"),
            (not self.loss.iou_aware or m.class_loss == "focal", "loss.iou_aware needs model.class_loss=focal"),
            (m.dense.num_convs >= 0, "model.dense.num_convs must be >= 0"),
            (m.decoder.roi_canonical_size > 0, "model.decoder.roi_canonical_size must be > 0"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.accumulate >= 1, "train.accumulate must be >= 1"),
            (self.train.eval_every >= 1, "train.eval_every must be >= 1 (the last epoch is always evaluated)"),
            (self.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps must be >= 1"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (len(self.data.train_short_sides) >= 1, "data.train_short_sides must not be empty"),
            (len(self.data.crop_size) == 2, "data.crop_size must be [min, max]"),
            (self.data.format in ("auto", "coco", "yolo", "voc"), "data.format must be auto|coco|yolo|voc"),
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


# --------------------------------------------------------------------------- the convergence recipe
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
    ("iou_aware", ["loss.iou_aware"]),
]
"""Every field that is not in the paper, grouped by the step of the convergence recipe that adds it (in the
order of the benchmark's ladder, docs/benchmarks.md). The paper's model has each at its default."""


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, path: str, value: Any) -> None:
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
            _set(out, path, _get(default, path))
    return out


# --------------------------------------------------------------------------- presets
def _paper_r50() -> Config:
    """The paper (docs/paper.md): R50-FPN (P3-P7, 256-d), 6 encoder blocks, 6 decoder stages, 300 queries,
    4 heads, 7x7 RoI, multi-scale 480-800 / 1333, test 800 / 1333, AdamW 1e-4 (backbone 1e-5), 1x schedule."""
    cfg = Config(name="paper_r50")
    cfg.model.backbone.weights = "ResNet50_Weights.IMAGENET1K_V1"
    return cfg


def _recipe_r50() -> Config:
    """paper_r50 plus the convergence recipe (RECIPE, docs/benchmarks.md), for users with GPUs: the same model
    at inference (the dense head only picks the initial boxes); the settings follow the cited works at COCO
    scale (FCOS / Co-DETR head of 4 convs, DDQ R-CNN's distinct queries at NMS 0.7, H-DETR's 6x one-to-many,
    DINO's 100 denoising queries)."""
    cfg = _paper_r50()
    cfg.name = "recipe_r50"
    m, t, loss = cfg.model, cfg.train, cfg.loss
    m.encoder.residual = True
    t.lr_offset_mult = 0.1
    m.dense.enabled = True
    m.dense.num_convs = 4
    m.decoder.query_selection = "boxes"
    m.decoder.query_nms = 0.7
    m.decoder.num_hybrid_queries = 900
    loss.hybrid_k = 6
    m.decoder.dn_queries = 100
    loss.iou_aware = True
    return cfg


def _cpu_small() -> Config:
    """The demo preset: trains on 2 CPU cores in minutes (R18, 128-d, 256 px, 50 queries, from random weights),
    with the part of the convergence recipe that measured best there (docs/recipe.md)."""
    cfg = Config(name="cpu_small")
    m = cfg.model
    m.hidden_dim = 128
    m.backbone.depth = 18
    m.encoder.num_blocks = 2
    m.decoder = DecoderConfig(num_stages=6, num_queries=50, num_heads=4, roi_size=7, dim_dynamic=32,
                              dim_feedforward=512)
    # the recipe (docs/recipe.md, 5-minute runs on the demo task): dense head + query selection took AP from
    # 0.3-ish to 4.5 and the IoU-aware target added 0.2 (APs +2.7); the hybrid branch (3.1) and denoising
    # (3.9) cost AP against 5.8 without them at this budget, so they stay off here. The dynamic encoder stays:
    # over 20 epochs (2 seeds) it is level or ahead at equal epochs (docs/benchmarks.md); the demo, whose budget
    # is minutes, turns it off (cli/demo.py)
    m.encoder.residual = True
    m.dense.enabled = True
    m.decoder.query_selection = "boxes"
    # distinct queries (DDQ), measured later on a 2-core AVX2 CPU in float32, 10-minute demo runs of this
    # preset: 7.8 AP (288 steps) without, 10.3 (294 steps) with; cpu_demo 26.8 -> 43.8 (docs/recipe.md)
    m.decoder.query_nms = 0.7
    cfg.loss.iou_aware = True
    d = cfg.data  # sized for 256 px images (the demo's); training at 160-224 measured 4.8 vs 5.8 AP
    d.train_short_sides = [192, 224, 256]
    d.train_max_size = 288
    d.crop_resize_sides = [192, 224, 256]
    d.crop_size = [160, 224]
    d.eval_short_side = 256
    d.eval_max_size = 288
    t = cfg.train
    # batch 4 beat batch 8 at equal time (4.5 vs 0.8 AP in 5 min: twice the steps) and batch 2 (4.5 AP);
    # lr 4e-4 beat 2e-4 (5.8 vs 4.5) with the dense head (the paper's model diverged at 4e-4, batch 8)
    t.batch_size = 4
    t.lr = 4e-4
    t.lr_backbone = 4e-4  # random init everywhere: the backbone trains at the same lr
    t.warmup_iters = 50
    t.clip_max_norm = 1.0
    t.amp = "bf16"  # 1.4x faster steps on CPUs with AVX512-BF16 (2.19 -> 1.61 s at batch 8)
    return cfg


def _cpu_demo() -> Config:
    """The demo's model (`make demo`, cli/demo.py): `cpu_small` cut to what pays within 10 minutes on 2 cores
    from random weights, where AP grows with the number of updates (docs/recipe.md, "The demo on a CPU without
    bf16"): the dynamic encoder off (it costs more a step than it gives at this budget: docs/benchmarks.md, "The
    dynamic encoder"), one conv per dense-head tower instead of two, 3 decoder stages of 30 queries instead of 6
    of 50 (the demo's images have at most 8 objects), training scales that never enlarge its 256 px images (so
    batches pad to 256, not 288), and, from cpu_small, distinct queries (`decoder.query_nms`, DDQ: duplicates
    were most of the lost AP50 without them). Each cut's measured effect: docs/recipe.md. `cpu_small` keeps the
    paper's architecture."""
    cfg = _cpu_small()
    cfg.name = "cpu_demo"
    m = cfg.model
    m.encoder.enabled = False
    m.dense.num_convs = 1
    m.decoder.num_stages = 3
    m.decoder.num_queries = 30
    d = cfg.data
    d.train_short_sides = [192, 224, 255]
    d.train_max_size = 256
    d.crop_resize_sides = [192, 224, 255]
    return cfg


def _cpu_tiny() -> Config:
    """Smallest useful model, for tests and smoke runs: the paper's model (no recipe switch), R18, 64-d,
    1 encoder block, 2 stages, 10 queries, fp32."""
    cfg = recipe_rung(_cpu_small(), 0)
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
    t = cfg.train
    t.batch_size = 4
    t.lr = t.lr_backbone = 2e-4
    t.warmup_iters = 10
    t.amp = "none"
    return cfg


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "paper_r50": _paper_r50,
    "recipe_r50": _recipe_r50,
    "cpu_small": _cpu_small,
    "cpu_demo": _cpu_demo,
    "cpu_tiny": _cpu_tiny,
}


def get_preset(name: str) -> Config:
    """A fresh copy of the named preset."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())
