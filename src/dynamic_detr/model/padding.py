"""Padding-aware pooling: statistics over each image's unpadded region only.

A batch pads its images to a common size (bottom / right). GroupNorm, the encoder's scale attention and
DyReLU pool over whole feature maps, so without care an image's detections would depend on how much padding
its batch brought (eval at batch 4 and at batch 8 would disagree on one checkpoint). With the per-level
masks below, every pooled statistic is taken over the image's own region, and padded positions are zeroed
between blocks, as a conv's zero padding sees an image alone. What remains is the conv stack's border
effect in the backbone (padded activations near the image's bottom / right edge), which is small.

With `valid` None (a batch without padding) every function is the plain op. The exported ONNX graph takes
letterboxed images (padded bottom / right to its fixed size) with their valid sizes and runs these functions,
so that it computes what PyTorch eval computes on the same image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def level_masks(valid_hw: Tensor, sizes: list[tuple[int, int]], strides: tuple[int, ...]) -> list[Tensor]:
    """Per level [B, 1, H_l, W_l] float, 1 inside the image: rows < ceil(h / s), columns < ceil(w / s)
    (the grid a stride-s conv stack gives an h x w image alone)."""
    out = []
    for (h, w), s in zip(sizes, strides, strict=True):
        rows = (valid_hw[:, 0] / s).ceil()[:, None] > torch.arange(h, device=valid_hw.device)[None]  # [B, H]
        cols = (valid_hw[:, 1] / s).ceil()[:, None] > torch.arange(w, device=valid_hw.device)[None]  # [B, W]
        out.append((rows[:, :, None] & cols[:, None, :])[:, None].float())
    return out


def resize_mask(valid: Tensor, size: tuple[int, int]) -> Tensor:
    """A level mask on another grid of the same level (nearest)."""
    if tuple(valid.shape[-2:]) == tuple(size):
        return valid
    return F.interpolate(valid, size=size, mode="nearest")


def masked_mean(x: Tensor, valid: Tensor | None) -> Tensor:
    """Mean over the last two (spatial) dims of x [..., B, C, H, W] inside `valid` [B, 1, H, W] -> [..., B, C]."""
    if valid is None:
        return x.mean(dim=(-2, -1))
    v = valid.to(x.dtype)
    return (x * v).sum(dim=(-2, -1)) / v.sum(dim=(-2, -1)).clamp(min=1.0)


def group_norm(x: Tensor, norm: nn.GroupNorm, valid: Tensor | None) -> Tensor:
    """`norm(x)` with each (image, group)'s mean and variance taken inside `valid` [B, 1, H, W]; the padded
    positions of the output are zero. In float32, as autocast runs GroupNorm."""
    if valid is None:
        return norm(x)
    x = x.float()
    b, c = x.shape[:2]
    g = norm.num_groups
    v = valid.to(x.dtype)
    n = (v.sum(dim=(1, 2, 3)) * (c // g)).clamp(min=1.0)[:, None]  # [B, 1] positions x channels per group
    xv = x * v
    mean = xv.sum(dim=(2, 3)).view(b, g, c // g).sum(-1) / n  # [B, G]
    var = ((xv * x).sum(dim=(2, 3)).view(b, g, c // g).sum(-1) / n - mean.square()).clamp(min=0.0)
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(c // g, dim=1)  # [B, C]
    shift = -mean.repeat_interleave(c // g, dim=1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
    # one fused pass for normalise + affine, then the padding zeroed
    return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None]) * v


def apply_sequential(seq: nn.Sequential, x: Tensor, valid: Tensor | None) -> Tensor:
    """Run `seq` with its GroupNorms padding-aware (`group_norm`)."""
    for m in seq:
        x = group_norm(x, m, valid) if isinstance(m, nn.GroupNorm) else m(x)
    return x
