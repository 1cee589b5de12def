"""The contenders of the benchmarks behind one interface: Dynamic DETR, its ablations, and the peers a user
would pick instead (Hugging Face DETR, Deformable DETR, RT-DETR and D-FINE, torchvision FCOS and RetinaNet).

Every contender is built at a matched size from random weights (nothing can be downloaded here), takes our
`Batch` (images in [0, 1], padding masks, cxcywh-normalised targets) and returns a loss in training and
detections in original-image pixels in eval, so that `convergence.py` and `speed.py` train, time and evaluate
them with the same loop, data and COCO evaluator.

Choices, the same for every contender:
- Backbone: ResNet of the preset's depth, FPN width = the preset's hidden size, **trainable BatchNorm**: at
  random init a frozen BN is an identity (a DETR with frozen BN from scratch learned nothing here,
  docs/paper.md), so the peers' frozen BNs are swapped for trainable ones, like our `norm="auto"` does.
- Optimiser: each model's customary one (`SETTINGS`), with the backbone at the same lr as the rest (the usual
  0.1x backbone lr protects pretrained weights, and there are none), the same linear warm-up, and a x0.1 drop
  for the last twelfth of the run (the 1x schedule's shape).
- Inference: no score threshold (torchvision's defaults of 0.05 / 0.2 are set to 0), 100 detections per
  image, as COCO AP expects.
- torchvision's detectors resize every input to `min_size`; here the data pipeline has already resized (the
  same multi-scale recipe for all), so their resize step is an identity.
- RT-DETR and D-FINE (`peers_rtdetr.py`) are built at their official sizes, not the preset's (their point is
  the model people pick today), with the official init and, for D-FINE, the official loss restored.

A peer's settings (`SETTINGS`) can be changed for one run: `--peer-set NAME.KEY=VALUE` in convergence.py and
speed.py (`peer_settings`), e.g. `--peer-set hf_dfine_n.lr=4e-4` to try another lr.
"""

from __future__ import annotations

import ast
import copy
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import box_convert

import peers_rtdetr
from dynamic_detr.config import RECIPE, Config, apply_overrides, recipe_rung
from dynamic_detr.data.collate import Batch
from dynamic_detr.evaluate.inference import autocast
from dynamic_detr.model import DynamicDETR
from dynamic_detr.model.detector import top_k_detections
from dynamic_detr.objective.criterion import SetCriterion
from dynamic_detr.train.optim import adamw, param_groups

LADDER = ("faithful", *(name for name, _ in RECIPE[:-1]), "dynamic_detr")
"""The convergence recipe one step at a time (config.RECIPE): the paper's model at the preset's size, then
each step added to the previous rung; the last rung, `dynamic_detr`, is the preset itself."""
RUNG_FALLBACK = {"distinct_queries": ["model.dense.enabled=true", "model.decoder.query_selection=boxes",
                                      "model.decoder.query_nms=0.7"],
                 "one_to_many": ["model.decoder.num_hybrid_queries=25", "loss.hybrid_k=2"],
                 "denoising": ["model.decoder.dn_queries=20"],
                 "mal": ["loss.mal=true"],
                 "stable_matching": ["loss.position_supervised=true", "loss.cost_position_modulated=true"],
                 # DEIM's base config (58 epochs: mosaics at 0.5 from epoch 4 to 29, none of the strong augmentation
                 # from 50), as recipe_r50; the tile is sized to the preset (`ablation_config`)
                 "dense_o2o": ["data.mosaic_prob=0.5", f"data.aug_start={4 / 58}", f"data.mosaic_stop={29 / 58}",
                               f"data.aug_stop={50 / 58}"],
                 "flat_cosine": ["train.lr_schedule=flat_cosine"]}
"""A ladder step that the preset leaves off (cpu_small: one-to-many and denoising cost AP at the demo's
budget, docs/recipe.md; MAL, Stable-DINO's loss and matching cost, Dense O2O and flat-cosine are not measured
yet) is measured with these settings on top of the previous rung, so that its row shows what it does; the last
rung is the preset itself. Distinct queries need query selection: on a preset without it (cpu_tiny, the --quick
runs) their rung turns it on too. The Dense O2O rung's mosaic tile is half the preset's largest training short
side (DEIM: 320 of its 640)."""
ABLATIONS = ("no_encoder", "faithful_no_encoder", "two_stages", "softmax", "fp32", "sampled_deform", "checkpointed",
             "encoder", "encoder_static", "encoder_tuned")
ENCODER_TUNED = ["model.encoder.num_blocks=1", "model.encoder.levels=2", "train.lr_offset_mult=0.1"]
"""The `encoder_tuned` arm: the dynamic encoder with the switches of the encoder study (docs/benchmarks.md,
"The dynamic encoder"): one block, on P3-P4 only (where CPU-sized images put the RoIs and the dense head's
positives), offsets and masks at 0.1x lr; the preset's ReZero gate (a per-channel gate opened at 0.1 measured
worse per step). `encoder_static` is the same encoder with nothing dynamic (`model.encoder.dynamic=false`):
the same cost."""
OURS = LADDER + ABLATIONS
PEERS = ("hf_detr", "hf_deformable_detr", "tv_fcos", "tv_retinanet", "hf_rtdetr_r18", "hf_dfine_n")
EXTRA_PEERS = ("hf_dfine_s",)
"""Peers run only when named (`--only`): not in the default runs nor in the --quick runs the tests make."""
ALL = OURS + PEERS
CHOICES = ALL + EXTRA_PEERS
QUICK_PEER_SETTINGS = ["hf_rtdetr_r18.size=preset", "hf_dfine_n.size=preset", "hf_dfine_s.size=preset"]
"""--quick runs (cpu_tiny): the peers built at official sizes are cut to the preset's."""
LABELS = {
    "faithful": "ours, the paper's model",
    "fixes": "+ start-up fixes",
    "dense_head": "+ dense auxiliary head",
    "query_selection": "+ query selection",
    "distinct_queries": "+ distinct queries (NMS before top-K)",
    "one_to_many": "+ one-to-many (hybrid)",
    "denoising": "+ denoising queries",
    "mal": "+ MAL class loss (DEIM)",
    "stable_matching": "+ stable matching (Stable-DINO's class loss and matching cost)",
    "dense_o2o": "+ Dense O2O (mosaic, augmentation warm-up and tail)",
    "flat_cosine": "+ flat-cosine lr",
    "dynamic_detr": "Dynamic DETR (ours: + IoU-aware = the preset)",
    "no_encoder": "ours (preset), dynamic encoder off",
    "faithful_no_encoder": "the paper's model, dynamic encoder off",
    "two_stages": "the paper's model, 2 decoder stages",
    "softmax": "the paper's model, softmax class loss",
    "fp32": "ours (preset), float32 (no bf16 autocast)",
    "sampled_deform": "ours (preset), the earlier deformable-conv kernel (grid_sample)",
    "checkpointed": "ours (preset), activation checkpointing (encoder, dense head, decoder)",
    "encoder": "ours (preset), dynamic encoder on",
    "encoder_static": "ours (preset), tuned encoder made static (same convs, no dynamic attention)",
    "encoder_tuned": "ours (preset), dynamic encoder on, tuned (ENCODER_TUNED)",
    "hf_detr": "DETR (HF transformers)",
    "hf_deformable_detr": "Deformable DETR (HF transformers)",
    "tv_fcos": "FCOS (torchvision)",
    "tv_retinanet": "RetinaNet v2 (torchvision)",
    "hf_rtdetr_r18": "RT-DETRv2-R18 (HF transformers)",
    "hf_dfine_n": "D-FINE-N (HF transformers)",
    "hf_dfine_s": "D-FINE-S (HF transformers)",
}
SETTINGS = {
    # ours: the preset's own train section (cpu_small: AdamW 4e-4, wd 1e-4, clip 1.0)
    "hf_detr": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "clip": 0.1},  # DETR repo
    "hf_deformable_detr": {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-4, "clip": 0.1,
                           "lr_mult_offsets": 0.1},  # Deformable DETR repo (offsets / reference points x0.1)
    # torchvision references (detection/README): SGD 0.9, wd 1e-4, 0.01 at batch 16 -> linear to the batch
    "tv_fcos": {"optimizer": "sgd", "lr_per_16": 0.01, "weight_decay": 1e-4, "clip": 0.0},
    "tv_retinanet": {"optimizer": "sgd", "lr_per_16": 0.01, "weight_decay": 1e-4, "clip": 0.0},
    # RT-DETRv2 repo, rtdetrv2_r18vd_120e_coco (batch 16): AdamW 1e-4 (its backbone too), wd 1e-4 (0 on norms)
    "hf_rtdetr_r18": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "clip": 0.1, "size": "official"},
    # D-FINE repo, dfine_hgnetv2_{n,s}_coco: AdamW, N 8e-4 at batch 128, S 2e-4 at batch 32 (backbones at half
    # of it), wd 1e-4 (0 on norms and encoder / decoder biases)
    "hf_dfine_n": {"optimizer": "adamw", "lr": 8e-4, "weight_decay": 1e-4, "clip": 0.1, "size": "official"},
    "hf_dfine_s": {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-4, "clip": 0.1, "size": "official"},
}
"""Each peer's recipe: its repository's optimiser, lr, weight decay and clipping, adapted to random init (one
lr for the backbone too; the lr is not rescaled to our batch: AdamW's customary lr is kept, as for DETR, and
`--peer-set NAME.lr=...` tries others). `size` (RT-DETR, D-FINE): "official" or "preset" (peers_rtdetr.py)."""


@dataclass
class Contender:
    """A model ready to train: `loss(batch)` in train mode, `detect(batch)` in eval mode (per image `boxes`
    xyxy in original pixels, `scores`, `labels` contiguous 0..C-1), its optimiser and clipping norm."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    clip: float
    loss: Callable[[Batch], Tensor]
    detect: Callable[[Batch], list[dict[str, Tensor]]]
    settings: dict[str, Any] = field(default_factory=dict)
    criterion: nn.Module | None = None
    """Ours only: the loss module inside `loss` (benchmarks/profile_step.py times it and its matcher)."""

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build(name: str, cfg: Config, num_classes: int, batch_size: int,
          settings: dict[str, Any] | None = None) -> Contender:
    """Contender `name` (one of `CHOICES`) matched to `cfg.model` (depth, hidden size, layers, queries, heads;
    RT-DETR and D-FINE: their official sizes), a peer with `settings` over its `SETTINGS`."""
    if name in OURS:
        if settings:
            raise ValueError(f"{name}: our contenders take config overrides (train.lr=...), not peer settings")
        return _ours(name, cfg, num_classes)
    s = {**SETTINGS[name], **(settings or {})}
    if name in ("hf_rtdetr_r18", "hf_dfine_n", "hf_dfine_s"):
        model, loss, detect, opt = peers_rtdetr.build_detr_family(name, cfg, num_classes, s)
        return Contender(name, model, opt, s["clip"], loss, detect, s)
    return {"hf_detr": _hf_detr, "hf_deformable_detr": _hf_deformable_detr, "tv_fcos": _tv_fcos,
            "tv_retinanet": _tv_retinanet}[name](cfg, num_classes, batch_size, s)


def peer_settings(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """`["hf_dfine_n.lr=4e-4", ...]` (the --peer-set options) -> {peer: {key: value}}; a value is read as a
    Python literal (number, string...); the key must be one of the peer's `SETTINGS` (or `lr`)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        target, sep, text = item.partition("=")
        name, dot, key = target.partition(".")
        if not (sep and dot and key):
            raise ValueError(f"--peer-set {item!r}: expected NAME.KEY=VALUE, e.g. hf_dfine_n.lr=4e-4")
        if name not in SETTINGS:
            raise ValueError(f"--peer-set {item!r}: {name!r} is not a peer ({', '.join(SETTINGS)})")
        if key not in {*SETTINGS[name], "lr"}:
            raise ValueError(f"--peer-set {item!r}: {name} has no setting {key!r} "
                             f"({', '.join(sorted({*SETTINGS[name], 'lr'}))})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        default = SETTINGS[name].get(key, 0.0)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ValueError(f"--peer-set {item!r}: {key} takes a {type(default).__name__}")
        out.setdefault(name, {})[key] = value
    return out


# ---------------------------------------------------------------- ours
def ablation_config(name: str, cfg: Config) -> Config:
    """A rung of the recipe ladder (`LADDER`), or the preset / the paper's model with one ablation of the
    paper's results table applied (`ABLATIONS`)."""
    if name in LADDER:
        rung = recipe_rung(cfg, LADDER.index(name))
        if name in RUNG_FALLBACK and rung == recipe_rung(cfg, LADDER.index(name) - 1):  # the preset has it off
            rung = apply_overrides(rung, RUNG_FALLBACK[name])
            if name == "dense_o2o":
                rung.data.mosaic_size = max(rung.data.train_short_sides) // 2
        return rung
    preset_based = ("no_encoder", "fp32", "sampled_deform", "checkpointed", "encoder", "encoder_static",
                    "encoder_tuned")  # the rest: the paper's model
    cfg = copy.deepcopy(cfg) if name in preset_based else recipe_rung(cfg, 0)
    if name in ("no_encoder", "faithful_no_encoder"):
        cfg.model.encoder.enabled = False
    elif name == "two_stages":
        cfg.model.decoder.num_stages = 2
    elif name == "softmax":
        cfg.model.class_loss = "softmax"
    elif name == "fp32":  # the preset's bf16 autocast against float32 (what an AVX2-only CPU runs instead)
        cfg.train.amp = "none"
    elif name == "sampled_deform":  # the encoder's CPU kernel before `deform_impl=bags` (speed.py's before / after)
        cfg.model.encoder.deform_impl = "sampled"
    elif name == "checkpointed":  # memory for time: every block, stage and the dense head recomputed in backward
        cfg.model.encoder.checkpoint = cfg.model.decoder.checkpoint = cfg.model.dense.checkpoint = True
    elif name in ("encoder", "encoder_static", "encoder_tuned"):  # the preset's encoder section, turned on
        cfg.model.encoder.enabled = True
        if name != "encoder":
            cfg = apply_overrides(cfg, ENCODER_TUNED)
        cfg.model.encoder.dynamic = name != "encoder_static"
    return cfg


def _ours(name: str, cfg: Config, num_classes: int) -> Contender:
    return ours_from_config(name, ablation_config(name, cfg), num_classes)


def ours_from_config(name: str, cfg: Config, num_classes: int) -> Contender:
    """Our model as a contender, built from `cfg` as it is (`name` only labels it)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.num_classes, cfg.model.category_ids, cfg.model.class_names = num_classes, [], []
    # random weights (nothing is downloaded here), but the architecture, norm and frozen stages that the config's
    # weights would give (paper_r50: frozen BN, stem + stage 1 frozen)
    model = DynamicDETR(cfg.model, load_weights=False)
    criterion = SetCriterion(num_classes, cfg.loss, cfg.model.class_loss, cfg.model.dense.center_radius)
    t = cfg.train
    opt = adamw(param_groups(model, t), t.lr, t.weight_decay, next(model.parameters()).device)  # the trainer's

    def loss(batch: Batch) -> Tensor:
        with autocast(batch.images.device, t.amp):
            outputs = model(batch.images, batch.masks, batch.targets)
        return criterion(outputs, batch.targets)["loss"]

    def detect(batch: Batch) -> list[dict[str, Tensor]]:
        with autocast(batch.images.device, t.amp):
            outputs = model(batch.images, batch.masks)
        return model.postprocess(outputs, _orig_sizes(batch))

    settings = {"optimizer": "adamw", "lr": t.lr, "weight_decay": t.weight_decay, "clip": t.clip_max_norm,
                "amp": t.amp}
    return Contender(name, model, opt, t.clip_max_norm, loss, detect, settings, criterion)


# ---------------------------------------------------------------- Hugging Face DETR / Deformable DETR
def _hf_backbone_config(depth: int, out_stages: list[int]):
    from transformers import ResNetConfig

    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    basic = depth < 50
    hidden = [64, 128, 256, 512] if basic else [256, 512, 1024, 2048]
    return ResNetConfig(depths=blocks, hidden_sizes=hidden, layer_type="basic" if basic else "bottleneck",
                        out_features=[f"stage{s}" for s in out_stages])


def _hf_common(cfg: Config, num_classes: int) -> dict[str, Any]:
    m = cfg.model
    return {"use_pretrained_backbone": False, "num_queries": m.decoder.num_queries, "d_model": m.hidden_dim,
            "encoder_layers": max(1, m.encoder.num_blocks), "decoder_layers": m.decoder.num_stages,
            "encoder_attention_heads": m.decoder.num_heads, "decoder_attention_heads": m.decoder.num_heads,
            "encoder_ffn_dim": m.decoder.dim_feedforward, "decoder_ffn_dim": m.decoder.dim_feedforward,
            "num_labels": num_classes, "auxiliary_loss": True}  # both original repos train with aux losses


def thaw_batchnorm(module: nn.Module) -> int:
    """Replace every frozen BatchNorm (HF's `*FrozenBatchNorm2d`) with a trainable `nn.BatchNorm2d`; returns
    how many. At random init a frozen BN is an identity and the backbone would have no normalisation."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child).__name__.endswith("FrozenBatchNorm2d"):
            setattr(module, name, nn.BatchNorm2d(child.weight.shape[0]))
            count += 1
        else:
            count += thaw_batchnorm(child)
    return count


def _hf(model: nn.Module, focal: bool, settings: dict[str, Any]) -> tuple[Callable, Callable, torch.optim.Optimizer]:
    def inputs(batch: Batch) -> dict[str, Tensor]:
        return {"pixel_values": peers_rtdetr.hf_pixels(batch), "pixel_mask": (~batch.masks).long()}

    def loss(batch: Batch) -> Tensor:
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in batch.targets]
        return model(**inputs(batch), labels=labels).loss

    def detect(batch: Batch) -> list[dict[str, Tensor]]:
        out = model(**inputs(batch))
        return detr_postprocess(out.logits, out.pred_boxes, _orig_sizes(batch), focal)

    slow = settings.get("lr_mult_offsets", 1.0)
    is_slow = [any(k in n for k in ("sampling_offsets", "reference_points")) for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    groups = [{"params": [p for p, s in zip(params, is_slow, strict=True) if not s], "lr": settings["lr"]},
              {"params": [p for p, s in zip(params, is_slow, strict=True) if s], "lr": settings["lr"] * slow}]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=settings["lr"], weight_decay=settings["weight_decay"])
    return loss, detect, opt


def _hf_detr(cfg: Config, num_classes: int, batch_size: int, s: dict[str, Any]) -> Contender:
    from transformers import DetrConfig, DetrForObjectDetection

    hf_cfg = DetrConfig(backbone_config=_hf_backbone_config(cfg.model.backbone.depth, [4]),
                        **_hf_common(cfg, num_classes))
    model = _quiet(DetrForObjectDetection, hf_cfg)
    thaw_batchnorm(model)
    loss, detect, opt = _hf(model, focal=False, settings=s)
    return Contender("hf_detr", model, opt, s["clip"], loss, detect, s)


def _hf_deformable_detr(cfg: Config, num_classes: int, batch_size: int, s: dict[str, Any]) -> Contender:
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    # 4 levels: C3-C5 and one extra from C5 (the Deformable DETR recipe; ours uses 5 FPN levels)
    hf_cfg = DeformableDetrConfig(backbone_config=_hf_backbone_config(cfg.model.backbone.depth, [2, 3, 4]),
                                  num_feature_levels=4, **_hf_common(cfg, num_classes))
    model = _quiet(DeformableDetrForObjectDetection, hf_cfg)
    thaw_batchnorm(model)
    loss, detect, opt = _hf(model, focal=True, settings=s)
    return Contender("hf_deformable_detr", model, opt, s["clip"], loss, detect, s)


def detr_postprocess(logits: Tensor, boxes: Tensor, orig_sizes: Tensor, focal: bool,
                     top_k: int = 100) -> list[dict[str, Tensor]]:
    """DETR (softmax) or Deformable DETR (sigmoid) outputs -> per-image detections, by our own post-processing
    (`top_k_detections`): the same rule for every set-prediction contender."""
    xyxy, scores, labels = top_k_detections(logits, boxes, orig_sizes, focal, top_k)
    return [{"boxes": xyxy[i], "scores": scores[i], "labels": labels[i]} for i in range(len(xyxy))]


# ---------------------------------------------------------------- torchvision FCOS / RetinaNet
def tv_backbone(depth: int, channels: int) -> nn.Module:
    """torchvision ResNet (trainable BN) + FPN on C3-C5 with P6/P7 from P5: the same pyramid as ours."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    trunk = torchvision.models.get_model(f"resnet{depth}", weights=None)
    c5 = trunk.fc.in_features
    return BackboneWithFPN(trunk, OrderedDict(layer2="0", layer3="1", layer4="2"), [c5 // 4, c5 // 2, c5],
                           channels, extra_blocks=LastLevelP6P7(channels, channels))


def _tv(model: nn.Module, settings: dict[str, Any], batch_size: int) -> tuple[Callable, Callable, Any]:
    model.transform.resize = lambda image, target=None: (image, target)  # the data pipeline resized already

    def crops(batch: Batch) -> list[Tensor]:
        return [batch.images[i, :, : int(t["size"][0]), : int(t["size"][1])] for i, t in enumerate(batch.targets)]

    def loss(batch: Batch) -> Tensor:
        targets = []
        for t in batch.targets:
            h, w = (int(v) for v in t["size"])
            xyxy = box_convert(t["boxes"], "cxcywh", "xyxy") * t["boxes"].new_tensor([w, h, w, h])
            targets.append({"boxes": xyxy, "labels": t["labels"] + 1})  # 0 is background in torchvision
        return sum(model(crops(batch), targets).values())

    def detect(batch: Batch) -> list[dict[str, Tensor]]:
        out = []
        for r, t in zip(model(crops(batch)), batch.targets, strict=True):
            scale = (t["orig_size"].float() / t["size"].float()).flip(-1).repeat(2).to(r["boxes"])
            out.append({"boxes": r["boxes"] * scale, "scores": r["scores"], "labels": r["labels"] - 1})
        return out

    lr = settings.get("lr", settings["lr_per_16"] * batch_size / 16)  # --peer-set NAME.lr=... wins
    settings["lr"] = lr
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=settings["weight_decay"])
    return loss, detect, opt


def _tv_fcos(cfg: Config, num_classes: int, batch_size: int, s: dict[str, Any]) -> Contender:
    from torchvision.models.detection import FCOS

    model = FCOS(tv_backbone(cfg.model.backbone.depth, cfg.model.hidden_dim), num_classes + 1,
                 score_thresh=0.0, detections_per_img=100)
    loss, detect, opt = _tv(model, s, batch_size)
    return Contender("tv_fcos", model, opt, s["clip"], loss, detect, s)


def _tv_retinanet(cfg: Config, num_classes: int, batch_size: int, s: dict[str, Any]) -> Contender:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead, _default_anchorgen

    # v2 recipe (retinanet_resnet50_fpn_v2): GroupNorm head, GIoU box loss; default anchors (32-512 px)
    anchors = _default_anchorgen()
    channels = cfg.model.hidden_dim
    head = RetinaNetHead(channels, anchors.num_anchors_per_location()[0], num_classes + 1,
                         norm_layer=functools.partial(nn.GroupNorm, 32))
    head.regression_head._loss_type = "giou"
    model = RetinaNet(tv_backbone(cfg.model.backbone.depth, channels), num_classes + 1, anchor_generator=anchors,
                      head=head, score_thresh=0.0, detections_per_img=100)
    loss, detect, opt = _tv(model, s, batch_size)
    return Contender("tv_retinanet", model, opt, s["clip"], loss, detect, s)


# ---------------------------------------------------------------- helpers
def _orig_sizes(batch: Batch) -> Tensor:
    return torch.stack([t["orig_size"] for t in batch.targets]).to(batch.images.device)


def _quiet(cls, hf_cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(hf_cfg)
