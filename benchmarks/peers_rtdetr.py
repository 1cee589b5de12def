"""RT-DETR and D-FINE as peers (issue 31): Hugging Face transformers' `RTDetrV2ForObjectDetection` and
`DFineForObjectDetection`, built from config objects with random weights (no download), at the sizes of the
official configs, with the official init restored and, for D-FINE, the official loss.

Sizes (`size="official"`, the default):
- `hf_rtdetr_r18`: RT-DETRv2-S, lyuwenyu/RT-DETR rtdetrv2_pytorch/configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml:
  ResNet-18-vd (deep stem, avg-pool shortcuts), hybrid encoder 256-d (1 AIFI layer on C5, CSP expansion 0.5),
  3 decoder layers of 300 queries, 8 heads, 4 sampling points per level, 100 denoising queries; 20.1 M
  parameters with 6 classes. v2 rather than v1: v1's rtdetr_r18vd_6x_coco.yml builds effectively the same
  network (v2 lets the points differ per level; R18 keeps 4 everywhere) and v2 is the current recipe.
- `hf_dfine_n` / `hf_dfine_s`: Peterande/D-FINE configs/dfine/dfine_hgnetv2_n_coco.yml / _s_coco.yml:
  HGNetv2-B0 with learnable affine blocks; N: 2 levels (strides 16, 32), 128-d, FFN 512, 6 points per level,
  depth 0.5, expansion 0.34; S: 3 levels, 256-d, points (3, 6, 3), depth 0.34, expansion 0.5; both 3 decoder
  layers of 300 queries, 32 bins, 100 denoising queries; 3.7 M (N) and 10.2 M (S) parameters with 6 classes.
`size="preset"` cuts the transformer to the preset's width, heads, FFN, decoder stages and queries (and the
ResNet to its depth), the way the other peers are matched; `convergence.py --quick`, `speed.py --quick` and the
tests use it with `cpu_tiny`. Either way the queries are capped at the encoder tokens of the preset's smallest
input (`queries_that_fit`): D-FINE-N gets 125 at the benchmarks' 192 px.

Inputs and outputs: images normalised with the ImageNet mean / std, like the other peers (the official
pipelines feed [0, 1] without normalising; the stem's conv is followed by BatchNorm, so this rescales the
stem's input only). Neither model reads a padding mask (the official pipelines resize every image to a fixed
square, so nothing is padded), so targets are given, and boxes read back, in the padded input's frame; the
detections are then in original pixels, 100 per image, no score threshold.

Official init restored (transformers 5.25 against the official code; everything else in the official models
is PyTorch's default init, then the listed resets):
- RT-DETR: every BatchNorm outside the backbone (encoder, input projections) had its weight drawn from
  N(0, 0.01) (`RTDetrV2PreTrainedModel._init_weights`; D-FINE's HF init leaves them at 1): set to 1.
- both: the class-bias prior of the encoder's score head and every decoder class head was 1 / (C + 1)
  (HF's default when `initializer_bias_prior_prob` is None): set to the official 0.01 (bias -4.6).
- both: the proposal box head (`enc_bbox_head`) last layer was random, D-FINE's `pre_bbox_head` too: zeroed,
  as the official `_reset_parameters` do (the decoder box heads were already zero).
- both: every other Linear / Conv2d was N(0, 0.01) with zero bias (HF's generic init; the HF ResNet's convs
  Kaiming-normal), class-head weights Xavier: back to PyTorch's defaults, then the official Xavier resets
  (decoder FFNs, `enc_output`, `query_pos_head`, the decoder's input projections, RT-DETR's deformable
  value / output projections with zero bias) and `nn.MultiheadAttention`'s own init for HF's split q / k / v
  projections (Xavier over the stacked 3d x d matrix, zero in-projection and output biases).
- both: the denoising class embedding was Xavier: back to N(0, 1) with the padding row zero.
- both: the official decoders deep-copy one layer L times, so every decoder layer (and D-FINE's LQE) starts
  equal: the first layer's weights are copied into the others.
Kept as HF has them, because they equal the official ones: deformable attention's sampling offsets (zero
weight, the per-head direction grid as bias) and attention weights (zero), D-FINE's gates (zero weight,
bias 0 = prior 0.5), its LQE output layer (zero), its box-head output layers (zero), the HGNetv2 affine blocks
(scale 1, bias 0).

Not changed (a forward difference, not an init one): HF's RT-DETR decoders detach each layer's reference
boxes before the next layer's box output, where the official v2 decoder keeps the gradient through the
previous layer's boxes in training (DINO's "look forward twice").

Losses: RT-DETR uses HF's loss (VFL, L1 + GIoU on the last layer, each other layer, the encoder's top-k and the
denoising queries, each matched on its own, as rtdetrv2_criterion.py). D-FINE uses `peers_dfine_loss` (HF
5.25's D-FINE loss misaligns the decoder layers; see there).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import init

from dynamic_detr.config import Config
from dynamic_detr.data.collate import Batch
from dynamic_detr.model.detector import IMAGENET_MEAN, IMAGENET_STD, top_k_detections
from peers_dfine_loss import DFineCriterion

PRIOR = 0.01
"""The class-bias prior of RT-DETR's and D-FINE's score heads (`bias_init_with_prob(0.01)`)."""
SIZES = ("official", "preset")
_RESNET = {18: ("basic", [2, 2, 2, 2], [64, 128, 256, 512]), 34: ("basic", [3, 4, 6, 3], [64, 128, 256, 512]),
           50: ("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048])}
_HGNETV2_B0 = {"hidden_sizes": [128, 256, 512, 1024], "stem_channels": [3, 16, 16],
               "stage_in_channels": [16, 64, 256, 512], "stage_mid_channels": [16, 32, 64, 128],
               "stage_out_channels": [64, 256, 512, 1024], "stage_num_blocks": [1, 1, 2, 1],
               "stage_downsample": [False, True, True, True], "stage_light_block": [False, False, True, True],
               "stage_kernel_size": [3, 3, 5, 5], "stage_numb_of_layers": [3, 3, 3, 3],
               "use_learnable_affine_block": True}
"""HGNetv2-B0 (D-FINE's hgnetv2.py arch_configs["B0"]) in HF's `HGNetV2Config` fields."""
_DFINE = {
    "hf_dfine_n": {"out_indices": [3, 4], "encoder_in_channels": [512, 1024], "feat_strides": [16, 32],
                   "num_feature_levels": 2, "encode_proj_layers": [1], "d_model": 128, "encoder_hidden_dim": 128,
                   "encoder_ffn_dim": 512, "decoder_ffn_dim": 512, "decoder_n_points": [6, 6],
                   "depth_mult": 0.5, "hidden_expansion": 0.34},
    "hf_dfine_s": {"out_indices": [2, 3, 4], "encoder_in_channels": [256, 512, 1024], "feat_strides": [8, 16, 32],
                   "num_feature_levels": 3, "encode_proj_layers": [2], "d_model": 256, "encoder_hidden_dim": 256,
                   "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, "decoder_n_points": [3, 6, 3],
                   "depth_mult": 0.34, "hidden_expansion": 0.5},
}
"""D-FINE-N / -S: dfine_hgnetv2_{n,s}_coco.yml in HF's `DFineConfig` fields (the rest: DFineConfig's defaults,
which are dfine_hgnetv2.yml's: 8 heads, 300 queries, 100 denoising queries, 32 bins, reg_scale 4)."""


# ---------------------------------------------------------------- configs
def _preset_sizes(cfg: Config, levels: int) -> dict[str, Any]:
    m = cfg.model
    d = m.hidden_dim
    return {"d_model": d, "encoder_hidden_dim": d, "decoder_in_channels": [d] * levels,
            "encoder_attention_heads": m.decoder.num_heads, "decoder_attention_heads": m.decoder.num_heads,
            "encoder_ffn_dim": m.decoder.dim_feedforward, "decoder_ffn_dim": m.decoder.dim_feedforward,
            "decoder_layers": m.decoder.num_stages, "num_queries": m.decoder.num_queries}


def queries_that_fit(cfg: Config, strides: list[int], queries: int) -> int:
    """`queries`, or fewer when the smallest input the preset trains or evaluates at has fewer encoder tokens:
    query selection keeps the top-`num_queries` tokens, and HF's `topk` fails when there are fewer. A square of
    the smallest short side is counted (D-FINE-N, strides 16 / 32, on 160 px: 10 x 10 + 5 x 5 = 125 tokens);
    the official pipelines' 640 px squares give thousands, so the official configs never meet this."""
    d = cfg.data
    side = min([*d.train_short_sides, *(d.crop_resize_sides or []), d.eval_short_side])
    return min(queries, sum((side // s) ** 2 for s in strides))


def _fit_queries(cfg: Config, config):
    """`config` (an RT-DETR or D-FINE config) with its queries capped by `queries_that_fit` at its own strides."""
    config.num_queries = queries_that_fit(cfg, config.feat_strides, config.num_queries)
    return config


def rtdetr_config(cfg: Config, num_classes: int, size: str):
    """`RTDetrV2Config` of RT-DETRv2-R18 (or, `size="preset"`, the preset's sizes and ResNet depth)."""
    from transformers import RTDetrResNetConfig, RTDetrV2Config

    depth = 18 if size == "official" else cfg.model.backbone.depth
    if depth not in _RESNET:
        raise ValueError(f"hf_rtdetr_r18 size=preset: ResNet-{depth} not supported (choose from {sorted(_RESNET)})")
    layer, blocks, widths = _RESNET[depth]
    backbone = RTDetrResNetConfig(layer_type=layer, depths=blocks, hidden_sizes=widths,
                                  out_features=["stage2", "stage3", "stage4"])
    kwargs = {"backbone_config": backbone, "use_pretrained_backbone": False, "freeze_backbone_batch_norms": False,
              "encoder_in_channels": widths[1:], "hidden_expansion": 0.5 if layer == "basic" else 1.0,
              "decoder_layers": 3, "decoder_n_points": 4, "num_labels": num_classes}
    if size == "preset":
        kwargs.update(_preset_sizes(cfg, 3))
    return _fit_queries(cfg, RTDetrV2Config(**kwargs))


def dfine_config(name: str, cfg: Config, num_classes: int, size: str):
    """`DFineConfig` of D-FINE-N or -S (or, `size="preset"`, cut to the preset's sizes)."""
    from transformers import DFineConfig, HGNetV2Config

    official = dict(_DFINE[name])
    backbone = HGNetV2Config(**_HGNETV2_B0, out_indices=official.pop("out_indices"))
    kwargs = {"backbone_config": backbone, "use_pretrained_backbone": False, "freeze_backbone_batch_norms": False,
              "decoder_layers": 3, "num_labels": num_classes, **official}
    kwargs["decoder_in_channels"] = [kwargs["d_model"]] * kwargs["num_feature_levels"]
    if size == "preset":
        kwargs.update(_preset_sizes(cfg, kwargs["num_feature_levels"]))
    return _fit_queries(cfg, DFineConfig(**kwargs))


# ---------------------------------------------------------------- the official init
def _prior_bias(linear: nn.Linear) -> None:
    init.constant_(linear.bias, -math.log((1 - PRIOR) / PRIOR))


def _zero(linear: nn.Linear) -> None:
    init.zeros_(linear.weight)
    init.zeros_(linear.bias)


def _attention_init(attn: nn.Module) -> None:
    """`nn.MultiheadAttention._reset_parameters` on HF's split projections: Xavier-uniform over the stacked
    [3d, d] in-projection, zero in-projection and output biases (the output weight keeps Linear's default)."""
    d = attn.q_proj.in_features
    bound = math.sqrt(6.0 / (d + 3 * d))
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        init.uniform_(proj.weight, -bound, bound)
        init.zeros_(proj.bias)
    init.zeros_(attn.o_proj.bias)


def restore_official_init(model: nn.Module) -> None:
    """Re-initialise an HF RT-DETRv2 / D-FINE detector the way the official code initialises its model (see
    the module docstring for what differs and why)."""
    core = model.model
    decoder = core.decoder
    deformable = [m for m in model.modules() if type(m).__name__.endswith("MultiscaleDeformableAttention")]
    keep = {id(m.sampling_offsets) for m in deformable} | {id(m.attention_weights) for m in deformable}
    for m in model.modules():  # PyTorch's defaults, as the official modules get them
        if isinstance(m, nn.Linear | nn.Conv2d | nn.BatchNorm2d | nn.LayerNorm | nn.Embedding) and id(m) not in keep:
            m.reset_parameters()
    _prior_bias(core.enc_score_head)
    _zero(core.enc_bbox_head.layers[-1])
    for cls, box in zip(decoder.class_embed, decoder.bbox_embed, strict=True):
        _prior_bias(cls)
        _zero(box.layers[-1])
    init.xavier_uniform_(core.enc_output[0].weight)
    for layer in decoder.query_pos_head.layers:
        init.xavier_uniform_(layer.weight)
    for proj in core.decoder_input_proj:
        if isinstance(proj, nn.Sequential):  # D-FINE-N: identities where the channels already match
            init.xavier_uniform_(proj[0].weight)
    for m in model.modules():
        if type(m).__name__.endswith("SelfAttention"):
            _attention_init(m)
    for m in deformable:
        for proj in (getattr(m, "value_proj", None), getattr(m, "output_proj", None)):  # RT-DETR only
            if proj is not None:
                init.xavier_uniform_(proj.weight)
                init.zeros_(proj.bias)
    for layer in decoder.layers:
        for linear in layer.mlp.modules():
            if isinstance(linear, nn.Linear):
                init.xavier_uniform_(linear.weight)
        if hasattr(layer, "gateway"):  # D-FINE's gate: prior 0.5
            _zero(layer.gateway.gate)
    if hasattr(decoder, "pre_bbox_head"):  # D-FINE
        _zero(decoder.pre_bbox_head.layers[-1])
        for lqe in decoder.lqe_layers:
            _zero(lqe.reg_conf.layers[-1])
        _clone_first(decoder.lqe_layers)
    _clone_first(decoder.layers)


def _clone_first(layers: nn.ModuleList) -> None:
    """The official decoders build their layers as deep copies of one layer: all start equal."""
    with torch.no_grad():
        for layer in layers[1:]:
            layer.load_state_dict(layers[0].state_dict())


# ---------------------------------------------------------------- training and detection
def hf_pixels(batch: Batch) -> Tensor:
    """Our images ([0, 1], zero padding) normalised with the ImageNet mean / std, the padding set to 0."""
    mean = torch.tensor(IMAGENET_MEAN, device=batch.images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.images.device).view(1, 3, 1, 1)
    return ((batch.images - mean.to(batch.images)) / std.to(batch.images)).masked_fill(batch.masks[:, None], 0)


def frame_scale(batch: Batch) -> Tensor:
    """[B, 4] (w / W, h / H, w / W, h / H): an image's own size over the padded input's, per image."""
    padded = batch.images.new_tensor([batch.images.shape[-1], batch.images.shape[-2]])
    sizes = torch.stack([t["size"].flip(-1) for t in batch.targets]).to(batch.images)
    return (sizes / padded).repeat(1, 2)


def padded_labels(batch: Batch) -> list[dict[str, Tensor]]:
    """Targets in HF's format, boxes cxcywh normalised by the padded input (the frame the models predict in)."""
    scale = frame_scale(batch)
    return [{"class_labels": t["labels"], "boxes": t["boxes"] * scale[i]} for i, t in enumerate(batch.targets)]


def detections(logits: Tensor, boxes: Tensor, batch: Batch, top_k: int = 100) -> list[dict[str, Tensor]]:
    """Sigmoid logits and boxes in the padded frame -> per image top-k detections in original pixels."""
    boxes = boxes.float() / frame_scale(batch)[:, None, :]
    orig = torch.stack([t["orig_size"] for t in batch.targets]).to(boxes.device)
    xyxy, scores, labels = top_k_detections(logits, boxes, orig, focal=True, top_k=top_k)
    return [{"boxes": xyxy[i], "scores": scores[i], "labels": labels[i]} for i in range(len(xyxy))]


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Weight decay 0: every norm weight and bias, every other bias and HGNetv2's affine scales (all the
    1-d parameters). RT-DETRv2-R18's config exempts norms, D-FINE's encoder / decoder norms and biases (its
    backbone pattern, `(?!.*norm|bn)`, leaves the backbone's `bn` parameters decayed, which reads as a slip)."""
    return param.ndim <= 1


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999) at one lr for every parameter (backbone included: random init), weight decay
    on the weights only (`no_decay`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": weight_decay},
              {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def build_detr_family(name: str, cfg: Config, num_classes: int,
                      settings: dict[str, Any]) -> tuple[nn.Module, Callable, Callable, torch.optim.Optimizer]:
    """(model, loss(batch), detect(batch), optimiser) of `hf_rtdetr_r18`, `hf_dfine_n` or `hf_dfine_s`."""
    size = settings["size"]
    if size not in SIZES:
        raise ValueError(f"{name}: size={size!r}, choose from {', '.join(SIZES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "hf_rtdetr_r18":
            from transformers import RTDetrV2ForObjectDetection

            model = RTDetrV2ForObjectDetection(rtdetr_config(cfg, num_classes, size))
        else:
            from transformers import DFineForObjectDetection

            model = DFineForObjectDetection(dfine_config(name, cfg, num_classes, size))
    restore_official_init(model)
    criterion = None if name == "hf_rtdetr_r18" else DFineCriterion(model.config)

    def loss(batch: Batch) -> Tensor:
        labels = padded_labels(batch)
        if criterion is None:
            return model(pixel_values=hf_pixels(batch), labels=labels).loss
        return sum(criterion(model.model(pixel_values=hf_pixels(batch), labels=labels), labels).values())

    def detect(batch: Batch) -> list[dict[str, Tensor]]:
        out = model(pixel_values=hf_pixels(batch))
        return detections(out.logits, out.pred_boxes, batch)

    return model, loss, detect, adamw(model, settings["lr"], settings["weight_decay"])
