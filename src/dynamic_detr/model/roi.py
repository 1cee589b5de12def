"""RoI pooling of the pyramid at each query's box: F = RoIAlign(pyramid, B) (docs/paper.md, Dynamic decoder).

Two kernels give the same RoIAlign (aligned=True, fixed sampling ratio): torchvision's `roi_align`, and
`roi_align_bags`, one `embedding_bag` over all levels whose bags are the bins' bilinear taps. torchvision's
CPU backward runs on one thread (15% of a cpu_small training step here); `DecoderConfig.roi_impl` picks,
"auto" = bags on CPU, torchvision on CUDA. ONNX export uses torchvision's (an ONNX RoiAlign node).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

CANONICAL_SIZE = 224
CANONICAL_LEVEL = 4
"""FPN (Lin et al. 2017, eq. 1): a 224x224 box is pooled from P4, each doubling of its size one level up."""


def assign_levels(boxes: Tensor, levels: tuple[int, ...], canonical_size: float = CANONICAL_SIZE) -> Tensor:
    """Index into `levels` (e.g. (3, ..., 7)) for each box.

    boxes: [N, 4] xyxy in input pixels -> [N] long, floor(4 + log2(sqrt(wh) / canonical)) clamped to the
    pyramid (FPN: canonical 224).
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    size = (wh[:, 0] * wh[:, 1]).sqrt()
    k = torch.floor(CANONICAL_LEVEL + torch.log2(size / canonical_size + 1e-6))
    return (k.clamp(min=levels[0], max=levels[-1]) - levels[0]).long()


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (aligned=True) of each box from its FPN level: one batched `roi_align` call per level.

    torchvision's MultiScaleRoIAlign infers each level's scale from feature / image size, which fails for
    small odd sizes (P7 of 97x131 is 1x2); the strides are known exactly here, so they are passed in.

    Args:
        strides: stride of each level, powers of 2 (P3..P7: 8..128).
        output_size: S of the S x S output.
        sampling_ratio: bilinear samples per bin side (2, as Sparse R-CNN).
        impl: "torchvision", "bags" (`roi_align_bags`) or "auto" (bags on CPU).
        canonical_size: the box size pooled from P4 (`DecoderConfig.roi_canonical_size`).
    """

    def __init__(self, strides: tuple[int, ...], output_size: int, sampling_ratio: int = 2,
                 impl: str = "auto", canonical_size: int = CANONICAL_SIZE) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.levels = tuple(round(math.log2(s)) for s in self.strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.impl = impl
        self.canonical_size = canonical_size

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """feats: [B, C, H_l, W_l] per level; rois: [N, 5] (batch index, x1, y1, x2, y2) in input pixels
        -> [N, C, S, S] float32."""
        level = assign_levels(rois[:, 1:], self.levels, self.canonical_size)
        impl = self.impl if self.impl != "auto" else ("bags" if rois.device.type == "cpu" else "torchvision")
        if impl == "bags":
            return roi_align_bags(feats, self.strides, rois, level, self.output_size, self.sampling_ratio)
        s = self.output_size
        order, pooled = [], []
        for i, (f, stride) in enumerate(zip(feats, self.strides, strict=True)):
            idx = torch.nonzero(level == i).squeeze(1)
            order.append(idx)
            pooled.append(roi_align(f.float(), rois[idx].float(), (s, s), spatial_scale=1.0 / stride,
                                    sampling_ratio=self.sampling_ratio, aligned=True))
        # rows grouped by level -> back to the rois' order (one gather instead of a scatter per level)
        return torch.cat(pooled).index_select(0, torch.cat(order).argsort())


def roi_align_bags(feats: list[Tensor], strides: tuple[int, ...], rois: Tensor, level: Tensor,
                   output_size: int, sampling_ratio: int) -> Tensor:
    """RoIAlign (aligned=True) of each roi from its level, as one weighted `embedding_bag`: the pyramid is a
    table of [C] rows (every pixel of every level and image) and each output bin is the bag of its
    r x r samples' 4 bilinear taps, weighted by the bilinear weight / r^2. Equal to torchvision's
    `roi_align`: a sample within one pixel outside the map is clamped onto it, beyond that it counts zero;
    no gradient reaches the rois.

    feats: [B, C, H_l, W_l]; rois: [N, 5] (batch index, x1, y1, x2, y2) input pixels; level: [N] index into
    `feats` -> [N, C, S, S] float32 (a channels-last view: [N, S*S, C] is contiguous).
    """
    s, r = output_size, sampling_ratio
    n = s * r
    c = feats[0].shape[1]
    dev = rois.device
    sizes = [f.shape[-2:] for f in feats]
    counts = [int(h) * int(w) for h, w in sizes]
    # [B*T, C], row-major: with B = 1 the reshape is a column-major view, over which embedding_bag is ~4x slower
    # (50 RoIs of cpu_small: 5.8 ms against 1.5 a stage, paid at every stage of a batch-1 inference)
    table = torch.cat([f.float().flatten(2) for f in feats], dim=2).transpose(1, 2).reshape(-1, c).contiguous()
    h = torch.tensor([float(hw[0]) for hw in sizes], device=dev)[level]  # [N]
    w = torch.tensor([float(hw[1]) for hw in sizes], device=dev)[level]
    start = torch.tensor([0, *counts[:-1]], device=dev).cumsum(0)[level]
    stride = torch.tensor([float(v) for v in strides], device=dev)[level]
    rois = rois.detach().float()
    base = rois[:, 0].long() * sum(counts) + start  # [N] first row of the roi's level in its image

    steps = (torch.arange(n, device=dev, dtype=torch.float32) + 0.5) / n
    box = rois[:, 1:] / stride[:, None] - 0.5  # aligned=True: pixel centres at +0.5

    def taps(lo: Tensor, hi: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        """Sample coordinates [N, n] along one axis -> tap indices [N, n, 2] and weights [N, n, 2]."""
        p = lo[:, None] + (hi - lo)[:, None] * steps
        valid = (p >= -1) & (p <= size[:, None])
        p = p.clamp(min=0)
        p0 = p.floor()
        last = p0 >= size[:, None] - 1
        p0 = torch.where(last, size[:, None] - 1, p0)
        p = torch.where(last, p0, p)
        p1 = torch.where(last, p0, p0 + 1)
        frac = p - p0
        weight = torch.stack((1 - frac, frac), dim=-1) * valid[..., None]
        return torch.stack((p0, p1), dim=-1).long(), weight

    ys, wy = taps(box[:, 1], box[:, 3], h)
    xs, wx = taps(box[:, 0], box[:, 2], w)
    # [N, S(bin y), S(bin x), r(sample y), r(sample x), 2(tap y), 2(tap x)]
    ys, wy = ys.view(-1, s, 1, r, 1, 2, 1), wy.view(-1, s, 1, r, 1, 2, 1)
    xs, wx = xs.view(-1, 1, s, 1, r, 1, 2), wx.view(-1, 1, s, 1, r, 1, 2)
    index = base.view(-1, 1, 1, 1, 1, 1, 1) + ys * w.long().view(-1, 1, 1, 1, 1, 1, 1) + xs
    weight = wy * wx / (r * r)
    bags = 4 * r * r
    pooled = F.embedding_bag(index.reshape(-1, bags), table, per_sample_weights=weight.reshape(-1, bags),
                             mode="sum")  # [N*S*S, C]
    return pooled.view(-1, s * s, c).transpose(1, 2).unflatten(2, (s, s))
