"""Modulated deformable convolution (DCNv2) by bilinear sampling + one matmul.

`torchvision.ops.deform_conv2d` is the reference. Its CPU kernel is slow here: its backward took 65% of a
`cpu_small` training step, and it reaches ~15 GFLOP/s where a plain conv reaches ~220. The same op written as
`grid_sample` (bilinear, zeros outside, so out-of-range corners count as zero, as in torchvision) followed by
a batched matmul with the flattened kernel runs on the well-tuned dense kernels, and measured 5.7x faster forward +
backward on 2 cores (8x128x40x40, 3x3). It also lowers to ONNX `GridSample` + `MatMul` for runtimes without
`DeformConv`. A second CPU kernel, `deform_conv2d_bags`, gathers channels-last rows with `embedding_bag` and folds
the modulation mask into the bilinear weights, which removes the [B, C, 9, H, W] mask product and its backward:
on cpu_small's encoder convs (batch 4, 36x36 to 9x9, 128 channels) forward + backward 253 -> 170 ms, a cpu_small
training step -4.6% (interleaved A/B, docs/benchmarks.md); it is the CPU default. Outputs and gradients of both
equal torchvision's to float32 precision (tests/model/test_model_deform.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d


def _sampling_positions(x: Tensor, offset: Tensor, weight: Tensor, stride: int, padding: int,
                        dilation: int, kernel: str) -> tuple[Tensor, Tensor]:
    """Where each tap samples, in input pixels: (py, px), each [B, K, Ho, Wo]; tap k of output (i, j) reads
    (i*stride - pad + ky_k + dy, j*stride - pad + kx_k + dx). Checks the one-offset-group contract."""
    b, c = x.shape[:2]
    _, cin, kh, kw = weight.shape
    if cin != c or offset.shape[1] != 2 * kh * kw:
        raise ValueError(f"{kernel} supports one offset group and no weight groups")
    k = kh * kw
    ho, wo = offset.shape[-2:]
    dt, dev = offset.dtype, offset.device
    ky, kx = torch.meshgrid(torch.arange(kh, device=dev, dtype=dt) * dilation,
                            torch.arange(kw, device=dev, dtype=dt) * dilation, indexing="ij")
    off = offset.view(b, k, 2, ho, wo)
    py = (torch.arange(ho, device=dev, dtype=dt) * stride - padding)[None, None, :, None] + ky.reshape(1, k, 1, 1)
    px = (torch.arange(wo, device=dev, dtype=dt) * stride - padding)[None, None, None, :] + kx.reshape(1, k, 1, 1)
    return py + off[:, :, 0], px + off[:, :, 1]


def deform_conv2d_sampled(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                          stride: int = 1, padding: int = 1, dilation: int = 1,
                          mask: Tensor | None = None) -> Tensor:
    """Same contract as `torchvision.ops.deform_conv2d` (one offset group, no weight groups).

    x: [B, C, H, W]; offset: [B, 2*K, Ho, Wo] as (dy, dx) per tap, taps row-major; mask: [B, K, Ho, Wo];
    weight: [Cout, C, kh, kw] -> [B, Cout, Ho, Wo].
    """
    b, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    py, px = _sampling_positions(x, offset, weight, stride, padding, dilation, "deform_conv2d_sampled")
    # pixel p -> grid (2p + 1) / size - 1 (align_corners=False; also right for maps 1 pixel wide)
    gy = (2.0 * py + 1.0) / h - 1.0
    gx = (2.0 * px + 1.0) / w - 1.0
    grid = torch.stack((gx, gy), dim=-1).view(b, k * ho, wo, 2)
    sampled = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(b, c, k, ho, wo)
    if mask is not None:
        sampled = sampled * mask.view(b, 1, k, ho, wo).to(sampled.dtype)
    # bmm with the weight broadcast over the batch: forward and both backward products run on the [B, C*K, HW]
    # layout as is (torch.matmul folds the batch into the rows, which transposes and copies the columns)
    cols = sampled.reshape(b, c * k, ho * wo)
    out = torch.bmm(weight.reshape(1, cout, c * k).to(cols.dtype).expand(b, -1, -1), cols).view(b, cout, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deform_conv2d_bags(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                       stride: int = 1, padding: int = 1, dilation: int = 1,
                       mask: Tensor | None = None) -> Tensor:
    """Same contract as `torchvision.ops.deform_conv2d` (one offset group, no weight groups), as one weighted
    `embedding_bag` + one matmul: the input is a table of [C] rows (channels-last), each (output position, tap)
    is the bag of its sample's 4 bilinear corners, weighted by the bilinear weight x the tap's mask (the
    modulation folded into the sampling weights: no [B, C, K, H, W] product), which gives the im2col
    columns [B*Ho*Wo, K*C] that the kernel multiplies. A corner outside the map has weight 0 (torchvision's
    zeros). Offsets and masks get their gradients through the weights, the input through the bags.
    """
    b, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    py, px = _sampling_positions(x, offset, weight, stride, padding, dilation, "deform_conv2d_bags")
    # [B, Ho, Wo, K]: the K bags of one output position are adjacent rows of the columns
    py, px = py.permute(0, 2, 3, 1), px.permute(0, 2, 3, 1)
    y0, x0 = py.detach().floor(), px.detach().floor()
    ly, lx = py - y0, px - x0
    # the 4 corners [..., 2 (y), 2 (x)]: rows and weights
    ys = torch.stack((y0, y0 + 1), dim=-1)[..., :, None]
    xs = torch.stack((x0, x0 + 1), dim=-1)[..., None, :]
    weights = torch.stack((1 - ly, ly), dim=-1)[..., :, None] * torch.stack((1 - lx, lx), dim=-1)[..., None, :]
    weights = weights * ((ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1))
    if mask is not None:
        weights = weights * mask.view(b, k, ho, wo).permute(0, 2, 3, 1)[..., None, None]
    rows = (torch.arange(b, device=x.device) * (h * w)).view(b, 1, 1, 1, 1, 1) \
        + (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).long()
    # row-major [B*H*W, C]: with B = 1 the reshape alone is a column-major view, ~4x slower to gather from
    table = x.permute(0, 2, 3, 1).reshape(b * h * w, c).contiguous()
    cols = F.embedding_bag(rows.reshape(-1, 4), table, per_sample_weights=weights.reshape(-1, 4).to(x.dtype),
                           mode="sum").view(b * ho * wo, k * c)  # per position: tap-major, then channel
    kernel = weight.permute(0, 2, 3, 1).reshape(cout, k * c).to(cols.dtype)
    out = torch.mm(cols, kernel.t()) if bias is None else torch.addmm(bias.to(cols.dtype), cols, kernel.t())
    return out.view(b, ho, wo, cout).permute(0, 3, 1, 2)


def modulated_deform_conv(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, stride: int,
                          padding: int, mask: Tensor, impl: str) -> Tensor:
    """Dispatch on `EncoderConfig.deform_impl`: "torchvision", "sampled", "bags", or "auto" (bags on CPU, where
    torchvision's kernel is slow; torchvision's CUDA kernel elsewhere)."""
    if impl == "auto":
        impl = "bags" if x.device.type == "cpu" else "torchvision"
    if impl == "sampled":
        return deform_conv2d_sampled(x, offset, weight, bias, stride, padding, 1, mask)
    if impl == "bags":
        return deform_conv2d_bags(x, offset, weight, bias, stride, padding, 1, mask)
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
