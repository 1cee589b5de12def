"""RoI pooling of the pyramid at each query's box: F = RoIAlign(pyramid, B) (PAPER.md, Dynamic decoder)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

CANONICAL_SIZE = 224
CANONICAL_LEVEL = 4
"""FPN (Lin et al. 2017, eq. 1): a 224x224 box is pooled from P4, each doubling of its size one level up."""


def assign_levels(boxes: Tensor, levels: tuple[int, ...]) -> Tensor:
    """Index into `levels` (e.g. (3, ..., 7)) for each box.

    boxes: [N, 4] xyxy in input pixels -> [N] long, floor(4 + log2(sqrt(wh) / 224)) clamped to the pyramid.
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    size = (wh[:, 0] * wh[:, 1]).sqrt()
    k = torch.floor(CANONICAL_LEVEL + torch.log2(size / CANONICAL_SIZE + 1e-6))
    return (k.clamp(min=levels[0], max=levels[-1]) - levels[0]).long()


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign (aligned=True) of each box from its FPN level: one batched `roi_align` call per level.

    torchvision's MultiScaleRoIAlign infers each level's scale from feature / image size, which fails for
    small odd sizes (P7 of 97x131 is 1x2); the strides are known exactly here, so they are passed in.

    Args:
        strides: stride of each level, powers of 2 (P3..P7: 8..128).
        output_size: S of the S x S output.
        sampling_ratio: bilinear samples per bin side (2, as Sparse R-CNN).
    """

    def __init__(self, strides: tuple[int, ...], output_size: int, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.strides = tuple(strides)
        self.levels = tuple(round(math.log2(s)) for s in self.strides)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """feats: [B, C, H_l, W_l] per level; rois: [N, 5] (batch index, x1, y1, x2, y2) in input pixels
        -> [N, C, S, S] float32."""
        level = assign_levels(rois[:, 1:], self.levels)
        s = self.output_size
        order, pooled = [], []
        for i, (f, stride) in enumerate(zip(feats, self.strides, strict=True)):
            idx = torch.nonzero(level == i).squeeze(1)
            order.append(idx)
            pooled.append(roi_align(f.float(), rois[idx].float(), (s, s), spatial_scale=1.0 / stride,
                                    sampling_ratio=self.sampling_ratio, aligned=True))
        # rows grouped by level -> back to the rois' order (one gather instead of a scatter per level)
        return torch.cat(pooled).index_select(0, torch.cat(order).argsort())
