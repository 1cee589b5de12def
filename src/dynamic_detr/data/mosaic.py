"""Mosaic, the augmentation behind DEIM's Dense O2O (Huang et al. 2025, "DEIM: DETR with Improved Matching for
Fast Convergence"): four training images in one, so that the one-to-one matching of a DETR sees about four
times the targets per image, and more positives per step, without changing the model or the matching.

As DEIM's `Mosaic` transform: each image is resized to a short side of `size`; the four are tiled 2 x 2 on a
canvas twice the largest tile's height and width (each tile at its quarter's top-left corner, the rest filled
with 0); a random affine (rotation, translation, scale, the canvas keeping its size) moves the whole canvas.
Boxes follow every step as `tv_tensors.BoundingBoxes`, are clipped to the canvas, and the ones left under 1 px
are dropped together with their labels (and `area` / `iscrowd` when a target has them; their values are not
rescaled: nothing in training reads them). Which three images join a sample, and when mosaics are made at all,
is the augmentation policy's business (data/policy.py); all randomness is torch's, so a seeded sample is
reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .transforms import PER_BOX_KEYS, ResizeShortSide, per_box_tensors


class Mosaic:
    """`Mosaic(size, degrees, translate, scale)(samples)`: four `(image, target)` pairs (uint8 `tv_tensors.Image`,
    target with XYXY `boxes` and `labels`, as `CocoDetection` serves them) -> one. The result keeps the first
    sample's other entries (`image_id`, `orig_size`) and lists the `unreadable` stand-ins of all four."""

    def __init__(self, size: int, degrees: float = 10.0, translate: float = 0.1,
                 scale: Sequence[float] = (0.5, 1.5), fill: int = 0) -> None:
        if size < 1:
            raise ValueError(f"Mosaic needs a positive size, got {size}")
        self.resize = ResizeShortSide(size)
        self.affine = v2.RandomAffine(degrees=degrees, translate=(translate, translate),
                                      scale=(float(scale[0]), float(scale[1])), fill=fill)
        # the affine clips the boxes to the canvas itself (the boxes' default "soft" clamping mode)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=per_box_tensors)

    def __call__(self, samples: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tv_tensors.Image,
                                                                                          dict[str, Any]]:
        if len(samples) != 4:
            raise ValueError(f"Mosaic takes 4 samples, got {len(samples)}")
        tiles = [self.resize(image, target) for image, target in samples]
        image, target = tile_2x2(tiles)
        return self.sanitize(*self.affine(image, target))


def tile_2x2(tiles: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """Four `(image, target)` on one canvas of twice the largest tile's height and width, tile k at the top-left
    corner of quarter k (row-major: top-left, top-right, bottom-left, bottom-right), zeros elsewhere; boxes
    shifted with their tile."""
    h = max(int(img.shape[-2]) for img, _ in tiles)
    w = max(int(img.shape[-1]) for img, _ in tiles)
    first_image, first = tiles[0]
    canvas = first_image.new_zeros((first_image.shape[0], 2 * h, 2 * w))
    boxes, per_box = [], {k: [] for k in PER_BOX_KEYS if k in first}
    for k, (img, t) in enumerate(tiles):
        top, left = (k // 2) * h, (k % 2) * w
        canvas[:, top:top + img.shape[-2], left:left + img.shape[-1]] = img
        b = torch.Tensor.as_subclass(t["boxes"], torch.Tensor).reshape(-1, 4)
        boxes.append(b + b.new_tensor([left, top, left, top]))
        for key, values in per_box.items():
            values.append(t[key])
    target = {key: value for key, value in first.items() if key not in ("boxes", "unreadable", *PER_BOX_KEYS)}
    target["boxes"] = tv_tensors.BoundingBoxes(torch.cat(boxes), format="XYXY", canvas_size=(2 * h, 2 * w))
    target.update({key: torch.cat(values) for key, values in per_box.items()})
    unreadable = [u for _, t in tiles for u in t.get("unreadable", ())]
    if unreadable:
        target["unreadable"] = unreadable
    return tv_tensors.Image(canvas), target
