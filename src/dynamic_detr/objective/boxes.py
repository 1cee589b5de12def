"""Box helper shared by the matcher and the loss: a GIoU-safe cxcywh -> xyxy conversion."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

MIN_SIZE = 1e-4
"""Smallest width / height (normalised units) a predicted box gets before GIoU: a collapsed or inverted
prediction must not make GIoU divide by a zero area."""


def safe_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy, width / height clamped to >= MIN_SIZE (NaN stays NaN)."""
    sized = torch.cat([boxes[..., :2], boxes[..., 2:].clamp(min=MIN_SIZE)], dim=-1)
    return box_convert(sized, in_fmt="cxcywh", out_fmt="xyxy")
