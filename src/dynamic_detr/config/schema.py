"""The config's schema: `Config` and its data, loss and training sections (the model's are in model_schema.py).

Every field says what it means and where its default comes from ("Source:"): the paper (docs/paper.md), a
cited work, or "ours" (a choice of this repository). Measured effects are in docs/recipe.md and
docs/benchmarks.md, not here. A test reads this file and model_schema.py and fails on a field without one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..fileio import atomic_write_text
from .coerce import build
from .model_schema import BackboneConfig, DecoderConfig, DenseHeadConfig, EncoderConfig, ModelConfig
from .validate import check_config

__all__ = ["BackboneConfig", "Config", "DataConfig", "DecoderConfig", "DenseHeadConfig", "EncoderConfig",
           "LossConfig", "ModelConfig", "TrainConfig"]


@dataclass
class DataConfig:
    train_split: str = "train"
    """`DIR/annotations/instances_<split>.json`, images in `DIR/<split>/` (COCO 2017: "train2017"); for the other
    layouts the split's name there (Roboflow's `valid` is found for "val"). docs/data.md, "Layouts". Source:
    ours."""
    val_split: str = "val"
    """The split evaluated during training and by `eval` (unless `--split`); found as `train_split` is.
    Source: ours."""
    format: str = "auto"
    """"auto" | "coco" | "yolo" | "voc": the dataset's format under `--data`. "auto" looks for the standard COCO
    layout, then a Roboflow COCO export (`DIR/<split>/_annotations.coco.json`), a YOLO `data.yaml`, a Pascal VOC
    `ImageSets/Main/<split>.txt`, in that order (`data.layout.resolve_split`). Source: ours."""
    train_ann: str = ""
    """COCO annotation file of the training split at any path (relative: to `--data`); empty: found by
    `format`. E.g. a Label Studio export's `result.json`, CVAT's `annotations/instances_default.json`.
    Source: ours."""
    train_images: str = ""
    """Image folder of the training split (relative: to `--data`); empty: `DIR/<train_split>/` with the
    standard layout, the folder of `train_ann` when that is set. Source: ours."""
    val_ann: str = ""
    """As `train_ann`, for the validation split. Source: ours."""
    val_images: str = ""
    """As `train_images`, for the validation split. Source: ours."""
    train_short_sides: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    """Multi-scale training: the short side is drawn from these sizes. Source: the paper (480-800, as DETR)."""
    train_max_size: int = 1333
    """Cap on the long side while training; must exceed every `train_short_sides`. Source: the paper (1333)."""
    crop_prob: float = 0.5
    """Probability of the resize-crop-resize branch. Source: DETR (0.5; the paper does not state it)."""
    crop_resize_sides: list[int] = field(default_factory=lambda: [400, 500, 600])
    """Short sides of the first resize in the crop branch. Source: DETR."""
    crop_size: list[int] = field(default_factory=lambda: [384, 600])
    """Min / max side of the random crop in the crop branch. Source: DETR."""
    hflip_prob: float = 0.5
    """Probability of a horizontal flip of a training image (and its boxes). Source: the paper (0.5, as
    DETR)."""
    mosaic_prob: float = 0.0
    """Dense O2O: the probability that a training sample inside the mosaic window (from `aug_start` to
    `mosaic_stop`) is a mosaic of four training images, itself and three drawn at random (data/mosaic.py), so
    that the one-to-one matching sees more targets per image; 0 = off. A mosaic then gets the flip and the
    multi-scale resize, never the crop branch (DEIM keeps its crops and Mosaic out of one sample). Source: DEIM
    (Huang et al. 2025; 0.5). Not in the paper."""
    mosaic_size: int = 320
    """Mosaic: each of the four images is resized to this short side, then they are tiled 2 x 2 on a canvas
    twice the largest tile's height and width. Source: DEIM (320, half its 640 px training size). Not in the
    paper."""
    mosaic_degrees: float = 10.0
    """Mosaic: the random affine after the tiling rotates the canvas by up to this many degrees (the boxes
    become the boxes around their rotated corners). Source: DEIM (10). Not in the paper."""
    mosaic_translate: float = 0.1
    """Mosaic: the random affine shifts the canvas by up to this fraction of its width and height. Source:
    DEIM (0.1). Not in the paper."""
    mosaic_scale: list[float] = field(default_factory=lambda: [0.5, 1.5])
    """Mosaic: the random affine scales the canvas by a factor drawn in [min, max] (the canvas keeps its
    size; boxes are clipped to it and the ones left under 1 px dropped). Source: DEIM ([0.5, 1.5]). Not in the
    paper."""
    aug_start: float = 0.0
    """Augmentation warm-up: before this fraction of the run, training images get no strong augmentation
    (no mosaic, no crop branch: the flip and the multi-scale resize only). The policy reads the progress of
    the step a sample is trained in (data/policy.py), so a time budget switches at the same fraction. Source:
    DEIM (strong augmentation from epoch 4 of 58, 0.069). Not in the paper."""
    mosaic_stop: float = 1.0
    """From this fraction of the run on, no more mosaics (the crop branch stays on until `aug_stop`).
    Source: DEIM (epoch 29 of 58, 0.5). Not in the paper."""
    aug_stop: float = 1.0
    """The no-augmentation tail: from this fraction of the run on, training images get the flip and the eval
    resize only (no mosaic, no crop branch, no multi-scale), and `train.lr_schedule=flat_cosine` holds its
    lowest lr; 1 = off. Source: DEIM (epoch 50 of 58, 0.862); RT-DETR's `stop_epoch` (71 of 72). Not in the
    paper."""
    eval_short_side: int = 800
    """Deterministic eval resize: the short side. Source: the paper (800)."""
    eval_max_size: int = 1333
    """Deterministic eval resize: cap on the long side; must exceed `eval_short_side`. Source: the paper
    (1333)."""
    size_divisibility: int = 32
    """Padded batches are rounded up to a multiple of this. Source: ours (the coarsest backbone stride, C5)."""
    group_by_aspect: bool = True
    """Training batches hold images of one orientation (portrait h > w, or landscape / square, from the JSON's
    sizes), which cuts padding: `data.sampler.GroupedBatchSampler` (at most one mixed batch per epoch and
    rank, from the leftovers; same batch count, resumable). False: batches in the shuffled order as drawn.
    Source: torchvision's detection references (GroupedBatchSampler), detectron2 (aspect-ratio grouping)."""
    num_workers: int = 2
    """DataLoader worker processes per training process (0: load in the main process). A resumed run may
    change it. Source: ours."""


@dataclass
class LossConfig:
    cost_class: float = 2.0
    """Hungarian matching cost weight of the class term. Source: the paper (2, as Deformable DETR)."""
    cost_bbox: float = 5.0
    """Hungarian matching cost weight of the L1 distance of the cxcywh boxes. Source: the paper (5)."""
    cost_giou: float = 2.0
    """Hungarian matching cost weight of -GIoU. Source: the paper (2)."""
    loss_class: float = 2.0
    """Weight of the class loss, per decoder stage (deep supervision). Source: the paper (2)."""
    loss_bbox: float = 5.0
    """Weight of the L1 box loss, per decoder stage. Source: the paper (5)."""
    loss_giou: float = 2.0
    """Weight of the 1 - GIoU box loss, per decoder stage. Source: the paper (2)."""
    focal_alpha: float = 0.25
    """Focal loss (and focal matching cost) alpha, the positives' weight. Source: the focal loss (Lin et al.
    2017) as the paper uses it (0.25)."""
    focal_gamma: float = 2.0
    """Focal loss (and focal matching cost) gamma, the down-weighting of easy examples. Source: the focal
    loss (Lin et al. 2017) as the paper uses it (2)."""
    no_object_weight: float = 0.1
    """Softmax loss only: weight of the no-object class. Source: DETR's eos_coef (0.1)."""
    dense_weight: float = 1.0
    """Weight of the dense head's FCOS loss (focal + 2 x GIoU + centre-ness BCE) in the total. Source: ours
    (Co-DETR weighs its auxiliary heads 1)."""
    hybrid_k: int = 6
    """One-to-many branch (`decoder.num_hybrid_queries`): each target is repeated k times. Source: H-DETR
    (6)."""
    hybrid_weight: float = 1.0
    """Weight of the one-to-many branch's losses. Source: H-DETR (1)."""
    dn_weight: float = 1.0
    """Weight of the denoising queries' losses. Source: DN-DETR (1)."""
    iou_aware: bool = False
    """Focal loss only: a matched query's class target is the IoU of its box with the target instead of 1
    (varifocal loss), so scores rank by localisation quality. `mal` or `position_supervised` replace this
    loss when on. Source: VarifocalNet, as RT-DETR / Stable-DINO use it. Not in the paper."""
    mal: bool = False
    """Focal loss only: DEIM's Matchability-Aware Loss as the class loss of every decoder stage (every branch):
    a matched query's target is IoU^`mal_gamma` at full weight (varifocal weighs it by its IoU), a negative is
    weighted p^`mal_gamma`. IoU-aware on its own: with `iou_aware` on too it replaces the varifocal loss, as DEIM
    replaces D-FINE's; not with `position_supervised` (a ConfigError). Source: DEIM (Huang et al. 2025). Not in
    the paper."""
    mal_gamma: float = 1.5
    """MAL's gamma (> 0): the exponent of a matched query's IoU target and of the negatives' p^gamma weight.
    Source: DEIM (1.5, its criterion's `gamma`)."""
    position_supervised: bool = False
    """Focal loss only: Stable-DINO's position-supervised class loss for every decoder stage (every branch):
    a matched query's target is IoU^2, rescaled per image so that its best-placed match's is 1; positives are
    weighted `focal_alpha` x |target - p|^`focal_gamma`, negatives as in the focal loss. Replaces the
    varifocal loss of `iou_aware` when both are on; not with `mal` (a ConfigError). Source: Stable-DINO (Liu
    et al. 2023, "Detection Transformer with Stable Matching"). Not in the paper."""
    position_supervised_weight: float = 6.0
    """With `position_supervised`: the class loss's weight per stage, in place of `loss_class` (its positives
    are down-weighted by |target - p|^gamma). Source: Stable-DINO's R50 config (6 beside L1 5 and GIoU 2; DINO
    weighs its focal loss 1)."""
    cost_position_modulated: bool = False
    """Stable-DINO's position-modulated matching cost: the matcher's class cost takes p * u^e for the
    probability p of the target's class, u = (GIoU + 1) / 2 scaled per image so that its best pair has 1, e =
    `cost_position_exponent`: of two queries that score the class, the one on the box is matched. Every
    Hungarian-matched branch (one-to-one, one-to-many). Source: Stable-DINO. Not in the paper."""
    cost_position_exponent: float = 0.5
    """The exponent e (> 0) of the position score in `cost_position_modulated`. Source: Stable-DINO (its
    matcher's `cec_beta`, 0.5)."""


@dataclass
class TrainConfig:
    epochs: int = 12
    """Training epochs: 1x schedule = 12 epochs, 3x = 36. Source: the paper (1x)."""
    batch_size: int = 2
    """Images per process and step. Source: the paper (2 per GPU, 16 on 8 GPUs)."""
    lr: float = 1e-4
    """AdamW learning rate of everything but the backbone trunk (and the groups below). Source: the paper
    (1e-4, as DETR)."""
    lr_backbone: float = 1e-5
    """AdamW learning rate of the backbone trunk. Source: the paper (1e-5, as DETR)."""
    lr_offset_mult: float = 1.0
    """lr multiplier of the encoder's offset / mask convs. Source: Deformable DETR (trains its sampling
    offsets at 0.1x). Not in the paper."""
    lr_dynamic_mult: float = 1.0
    """lr multiplier of the decoder's dynamic-filter generators (d -> 2 d d_dyn). Source: ours (Sparse R-CNN
    trains its head at a low lr). Not in the paper."""
    weight_decay: float = 1e-4
    """AdamW weight decay, every parameter group. Source: the paper (1e-4, as DETR)."""
    lr_drop_epochs: list[int] = field(default_factory=lambda: [11])
    """lr x `lr_gamma` after these epochs (as fractions of the run, so a time budget drops at the same point).
    Source: the paper (1x: after epoch 11)."""
    lr_gamma: float = 0.1
    """Factor of each lr drop. Source: the paper (0.1)."""
    lr_schedule: str = "step"
    """"step" | "flat_cosine": after the warm-up, "step" drops the lr at `lr_drop_epochs`; "flat_cosine" keeps
    it flat until `lr_flat_until`, lowers it along a half cosine to `lr_min_factor` x lr at `data.aug_stop`
    (the end of the run when there is no no-augmentation tail) and holds it there (train/schedule.py). Both
    read fractions of the run, so a time budget follows the same curve. Source: the paper ("step");
    DEIM's FlatCosineLRScheduler ("flat_cosine", after RTMDet). Not in the paper."""
    lr_flat_until: float = 0.5
    """flat_cosine: the fraction of the run until which the lr stays at its peak. Source: DEIM (epoch 29 of 58,
    0.5). Not in the paper."""
    lr_min_factor: float = 0.5
    """flat_cosine: the lowest lr, as a factor of each parameter group's lr. Source: DEIM's lr_gamma (0.5).
    Not in the paper."""
    warmup_iters: int = 500
    """Optimizer steps of the linear warm-up from `warmup_factor` x lr. Source: ours (the paper states no
    warm-up; docs/paper.md)."""
    warmup_factor: float = 0.001
    """lr factor at the first warm-up step, rising linearly to 1. Source: detectron2's default warm-up
    factor (the paper states none)."""
    clip_max_norm: float = 0.1
    """Gradient clipping at this total norm (0 = off). Source: DETR (0.1; the paper does not state it)."""
    accumulate: int = 1
    """Gradient accumulation: optimizer steps every this many batches. Source: ours."""
    amp: str = "none"
    """"none" | "bf16" | "fp16" (fp16 on CUDA only): autocast during training and evaluation. "bf16" on a CPU
    without native bf16 (AVX2-only: oneDNN emulates it, many times slower) trains and evaluates in float32,
    and the run says so (`evaluate.inference.effective_amp`); with native bf16 (AVX-512 bf16 / AMX) steps
    are faster (docs/benchmarks.md, "bf16 autocast"). Source: ours."""
    ema: bool = False
    """Keep an exponential moving average of the weights (`torch.optim.swa_utils.AveragedModel`, buffers
    included); evaluation reports the EMA's metrics (the raw ones beside them) and the saved weights are the
    EMA's. Source: ours (as RT-DETR / DINO train with one). Not in the paper."""
    ema_decay: float = 0.9998
    """Decay of the weights' EMA per optimizer step. Source: ours."""
    seed: int = 42
    """Seed of Python, NumPy and torch (plus the process's rank) and of the data order and augmentations.
    Source: ours."""
    deterministic: bool = False
    """`torch.use_deterministic_algorithms(True, warn_only=True)` and no cudnn benchmark: repeatable runs
    where the kernels allow, at some speed. Source: ours."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps (0 = at epoch ends only). Source: ours."""
    eval_every: int = 1
    """Evaluate every N epochs (and always at the end). Source: ours."""
    max_nonfinite_steps: int = 20
    """Consecutive non-finite losses (skipped steps) before the run stops. Source: ours."""
    patience: int = 0
    """Early stopping (0 = off): end the run once its val AP has gained no more than `min_delta` for this many
    epochs. Counted in epochs and checked at each evaluation, so it must be >= `eval_every` (with evaluations
    every k epochs the run stops at the first one `patience` or more epochs after the last gain). The run ends as
    a finished one (last.pt, best.pt, metrics.json); a resume of a run that stopped so trains on only with a
    larger patience. A resumed run may change it. Source: Ultralytics' `patience` (epochs without improvement;
    on by default there, at 100), RF-DETR's early stopping (off by default, as here)."""
    min_delta: float = 0.0
    """Early stopping: the AP gain, in AP points (0-100), that an evaluation needs over the last gaining one to
    restart the `patience` count; an AP no higher than that is no gain (with 0, an equal AP is none). A resumed
    run may change it. Source: Keras' EarlyStopping `min_delta`, RF-DETR's `early_stopping_min_delta` (0.001 of
    mAP in [0, 1], i.e. 0.1 AP points)."""
    sync_bn: bool = True
    """Multi-GPU with trainable BN (random init): synchronise BN statistics across GPUs (SyncBatchNorm is
    CUDA-only; CPU processes keep per-process statistics). Source: ours."""


@dataclass
class Config:
    name: str = "dynamic_detr"
    """The config's name: a preset's name, the default run folder (`runs/<name>`) and the name printed by
    `train`, `info` and `demo`. Source: ours."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The detector (model_schema.py). Source: the paper."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the dataset is and how images are resized and augmented. Source: the paper / DETR."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Matching costs and loss weights. Source: the paper / DETR."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, precision and run control. Source: the paper (optimiser, schedule); ours."""

    # ----------------------------------------------------------------- io
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        """A validated config from plain data (strict: unknown keys and wrong types are ConfigErrors)."""
        cfg = build(cls, data, source)
        cfg.validate(source)
        return cfg

    def dump(self, path: str | Path) -> None:
        """Write the config as YAML, atomically (a crash leaves the previous file, never half of one)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self, source: str = "config") -> None:
        """Every check of the config's values (validate.py); raises ConfigError naming the field."""
        check_config(self, source)
