"""Parameters and forward FLOPs per component (backbone incl. FPN, encoder, decoder) for a model config.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` (a multiply-add = 2 FLOPs; matmuls,
convolutions and attention only; norms and elementwise ops are not counted), plus formulas registered here for
the ops it does not know: `torchvision::deform_conv2d`, `torchvision::roi_align` and CPU flash attention.
The backbone and encoder run on the meta device (shapes only, nothing is computed); the decoder runs for real
on random features, because RoI level assignment depends on values.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from ..config import ModelConfig
from .detector import DynamicDETR

BILINEAR_FLOPS = 8
"""One bilinearly sampled value: 4 products + 3 sums of its corners, + 1 (DCNv2's mask product, or RoIAlign's
accumulation into its bin average). The corner weights, shared by all channels, are not counted."""

COMPONENTS = ("backbone", "encoder", "dense_head", "decoder")
TRAINING_ONLY = ("hybrid_embed", "hybrid_boxes", "label_embed")
"""Parameters used in training only (the one-to-many and denoising queries' embeddings)."""


def deform_conv2d_flops(input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None,
                        **kwargs: Any) -> int:
    """torchvision::deform_conv2d(input, weight, offset, mask, bias, stride, pad, dilation, groups, ...):
    the convolution over the sampled columns (as `aten.convolution`) + BILINEAR_FLOPS per sampled value."""
    b, c_in = input_shape[0], input_shape[1]
    kh, kw = weight_shape[2], weight_shape[3]
    conv = conv_flop_count(list(input_shape), list(weight_shape), list(out_shape))  # weight: c_in per group
    sampled = b * c_in * kh * kw * out_shape[2] * out_shape[3]
    return conv + BILINEAR_FLOPS * sampled


def roi_align_flops(input_shape: Any, rois_shape: Any, spatial_scale: float, pooled_height: int,
                    pooled_width: int, sampling_ratio: int, *args: Any, out_shape: Any = None,
                    **kwargs: Any) -> int:
    """torchvision::roi_align: sampling_ratio^2 bilinear samples per output value (adaptive: taken as 2)."""
    ratio = sampling_ratio if sampling_ratio > 0 else 2
    n, c = out_shape[0], out_shape[1]
    return n * c * pooled_height * pooled_width * ratio * ratio * BILINEAR_FLOPS


def cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
    """aten::_scaled_dot_product_flash_attention_for_cpu: QK^T and AV, as torch counts the CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


CUSTOM_FLOPS = {
    torch.ops.torchvision.deform_conv2d: deform_conv2d_flops,
    torch.ops.torchvision.roi_align: roi_align_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops,
}


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also knows deformable conv, RoIAlign and CPU attention."""
    return FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)


def count_params(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def model_info(cfg: ModelConfig, image_size: tuple[int, int]) -> dict[str, Any]:
    """Parameters and forward GFLOPs of each component for one image of `image_size` (H, W).

    The model is built as configured (norm, frozen stages) without reading any backbone weights.
    Returns:
        {"image_size": (H, W), "params": {component: n, "total": n}, "trainable": {...},
         "gflops": {component: g, "total": g}}; components = backbone (ResNet + FPN), encoder, dense_head
        (0 when off), decoder; params also "training_only" (embeddings of the hybrid / denoising queries).
    """
    h, w = image_size
    model = DynamicDETR(cfg, load_weights=False).eval()
    params, trainable = {}, {}
    for name in COMPONENTS:
        params[name], trainable[name] = count_params(getattr(model, name) or nn.Module())
    extra = nn.ModuleList(getattr(model, n) for n in TRAINING_ONLY if hasattr(model, n))
    params["training_only"], trainable["training_only"] = count_params(extra)
    params["total"], trainable["total"] = count_params(model)

    flops: dict[str, int] = {}
    with torch.no_grad():
        backbone = copy.deepcopy(model.backbone).to("meta")
        encoder = copy.deepcopy(model.encoder).to("meta")
        with flop_counter() as counter:
            feats = backbone(torch.empty(1, 3, h, w, device="meta"))
        flops["backbone"] = counter.get_total_flops()
        with flop_counter() as counter:
            feats = encoder(feats)
        flops["encoder"] = counter.get_total_flops()
    real = [torch.randn(f.shape) for f in feats]
    flops["dense_head"] = 0
    if model.dense_head is not None:
        with flop_counter() as counter:
            model.dense_head(real)
        flops["dense_head"] = counter.get_total_flops()
    # grad mode keeps nn.MultiheadAttention off its fused eval path, which FlopCounterMode cannot see
    with torch.enable_grad(), flop_counter() as counter:
        model.decoder(real, torch.tensor([[float(h), float(w)]]))
    flops["decoder"] = counter.get_total_flops()
    flops["total"] = sum(flops.values())
    return {
        "image_size": (h, w),
        "params": params,
        "trainable": trainable,
        "gflops": {k: v / 1e9 for k, v in flops.items()},
    }
