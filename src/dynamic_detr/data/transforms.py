"""Augmentation recipes with `torchvision.transforms.v2` (images, boxes and labels transformed together).

Train (DETR / paper recipe): horizontal flip; then with probability 1 - crop_prob a multi-scale resize
(short side drawn from `train_short_sides`, long side capped at `train_max_size`), else resize-crop-resize
(short side from `crop_resize_sides`, a random crop with sides in `crop_size`, then the multi-scale resize);
drop boxes the crop emptied; uint8 -> float32 in [0, 1]. No mean/std normalisation: the model does it.
Eval: resize the short side to `eval_short_side` (long side capped at `eval_max_size`), to float.
The augmentation policy (data/policy.py) picks a train recipe per sample from `TRAIN_STAGES`: "full" (the
above), "plain" (no crop branch: the augmentation warm-up, and what a mosaic gets) and "tail" (the flip and the
eval resize: the no-augmentation tail).

The resize (`ResizeShortSide`) is `v2.Resize([s], max_size=m)`'s rule, "short side = s unless the long side would
exceed m, then long side = m" (tests/data check it), except that no side goes below 1 px (torchvision floors
the capped short side of a 1 x 1000 image to 0); it needs m > s, which the config's checks ensure
(`config/validate.py`).
All randomness comes from torch's RNG, so `data.sampler.SeededDataset` makes it reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..config import DataConfig, check_data


class RandomSizeCrop(v2.Transform):
    """Crop a random `h x w` window, each side uniform in [min_size, max_size] (capped by the image), at a
    uniformly random position (DETR's RandomSizeCrop). Boxes are shifted and clipped to the window; the ones
    left empty are removed by a later `SanitizeBoundingBoxes`."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def _side(self, limit: int) -> int:
        hi = min(limit, self.max_size)
        lo = min(self.min_size, hi)
        return int(torch.randint(lo, hi + 1, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        h, w = self._side(height), self._side(width)
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def resized_size(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) after "short side = `short_side` unless the long side would exceed `max_size`, then long side =
    `max_size`" (torchvision's `Resize([s], max_size=m)` rule, sides floored), with no side below 1 px: at an
    extreme aspect ratio the capped short side would floor to 0 (1 x 1000 at a 288 px cap)."""
    if max_size is not None and max_size <= short_side:
        raise ValueError(f"max_size ({max_size}) must exceed the short side ({short_side})")
    short, long = (width, height) if width <= height else (height, width)
    if short < 1:
        raise ValueError(f"cannot resize an empty {height}x{width} image")
    new_short, new_long = short_side, int(short_side * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    new_short = max(new_short, 1)
    return (new_long, new_short) if width <= height else (new_short, new_long)


class ResizeShortSide(v2.Transform):
    """Resize to `resized_size` (short side `size`, long side capped at `max_size`, every side >= 1 px);
    boxes follow. Bilinear with antialiasing, as `v2.Resize`."""

    def __init__(self, size: int, max_size: int | None = None) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"ResizeShortSide needs a positive size, got {size}")
        resized_size(1, 1, size, max_size)  # checks max_size
        self.size = size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"size": list(resized_size(height, width, self.size, self.max_size))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], antialias=True)


def resize_short_side(sizes: list[int], max_size: int | None) -> v2.Transform:
    """Resize the short side to one of `sizes` (uniformly chosen), capping the long side at `max_size`."""
    resizes = [ResizeShortSide(s, max_size) for s in sizes]
    return resizes[0] if len(resizes) == 1 else v2.RandomChoice(resizes)


TRAIN_STAGES = ("full", "plain", "tail")
"""The train recipes `build_transforms` makes: "full" the paper's (flip, multi-scale resize or resize-crop),
"plain" without the crop branch, "tail" the flip and the eval resize."""


PER_BOX_KEYS = ("labels", "area", "iscrowd")
"""Target entries with one value per box (`area` / `iscrowd` when a target has them): dropped with their box."""


def per_box_tensors(inputs: Any) -> tuple[torch.Tensor, ...]:
    """`SanitizeBoundingBoxes`' `labels_getter`: the target's `PER_BOX_KEYS` tensors, so that the boxes it drops
    leave them aligned. `inputs` is `(image, target)`."""
    target = inputs[1]
    return tuple(target[k] for k in PER_BOX_KEYS if k in target)


def build_transforms(cfg: DataConfig, train: bool, stage: str = "full") -> v2.Compose:
    """The train recipe of `stage` (`TRAIN_STAGES`) or the eval recipe; takes and returns `(image, target)` as
    served by `CocoDetection`. A data section the config's checks refuse (sizes, probabilities) is a ConfigError
    from them (`config/validate.py`)."""
    check_data(cfg)
    if stage not in TRAIN_STAGES:
        raise ValueError(f"stage must be one of {', '.join(TRAIN_STAGES)}, got '{stage}'")
    to_float = v2.ToDtype(torch.float32, scale=True)
    if not train:
        return v2.Compose([resize_short_side([cfg.eval_short_side], cfg.eval_max_size), to_float])
    if stage == "tail":
        resize: v2.Transform = resize_short_side([cfg.eval_short_side], cfg.eval_max_size)
    elif stage == "plain":
        resize = resize_short_side(cfg.train_short_sides, cfg.train_max_size)
    else:
        multi_scale = resize_short_side(cfg.train_short_sides, cfg.train_max_size)
        crop_branch = v2.Compose([
            resize_short_side(cfg.crop_resize_sides, None),
            RandomSizeCrop(cfg.crop_size[0], cfg.crop_size[1]),
            multi_scale,
        ])
        resize = v2.RandomChoice([multi_scale, crop_branch], p=[1.0 - cfg.crop_prob, cfg.crop_prob])
    return v2.Compose([
        v2.RandomHorizontalFlip(cfg.hflip_prob),
        resize,
        v2.ClampBoundingBoxes(),  # float round-off at the right / bottom edge must not drop a box
        v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=per_box_tensors),
        to_float,
    ])
