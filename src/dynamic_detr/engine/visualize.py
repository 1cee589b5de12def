"""Drawing detections with `torchvision.utils.draw_bounding_boxes`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.utils import draw_bounding_boxes, make_grid

# a fixed palette so a class keeps its colour across images
_PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
            "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000"]


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                    names: dict[int, str], threshold: float = 0.3) -> torch.Tensor:
    """Boxes above `threshold` drawn on `image` (uint8 [3, H, W]); `labels` are category ids."""
    keep = scores >= threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    ids = sorted(names)
    text = [f"{names.get(int(c), str(int(c)))} {float(s):.2f}" for c, s in zip(labels, scores, strict=True)]
    colors = [_PALETTE[ids.index(int(c)) % len(_PALETTE)] if int(c) in names else "#ffffff" for c in labels]
    if len(boxes) == 0:
        return image
    width = max(1, round(min(image.shape[-2:]) / 256))
    return draw_bounding_boxes(image, boxes.float(), labels=text, colors=colors, width=width)


def save_grid(images: Sequence[torch.Tensor], path: Path, size: int = 320) -> None:
    """Resize uint8 images to a common size and save them as one PNG grid."""
    from PIL import Image
    from torchvision.transforms.v2.functional import resize

    tiles = [resize(img, [size, size], antialias=True) for img in images]
    grid = make_grid(torch.stack(tiles), nrow=max(1, math.ceil(math.sqrt(len(tiles)))), padding=4, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy()).save(path)


def draw_ground_truth(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                      class_names: Sequence[str]) -> torch.Tensor:
    """Ground-truth boxes (xyxy pixels) with their class names on `image` (uint8 [3, H, W]); `labels` are
    contiguous (index into `class_names`) and take the colour `draw_detections` gives the same class."""
    if len(boxes) == 0:
        return image
    text = [class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c)) for c in labels]
    colors = [_PALETTE[int(c) % len(_PALETTE)] for c in labels]
    width = max(1, round(min(image.shape[-2:]) / 256))
    return draw_bounding_boxes(image, boxes.float(), labels=text, colors=colors, width=width)
