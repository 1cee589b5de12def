"""Drawing detections with `torchvision.utils.draw_bounding_boxes`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    text = [f"{names.get(int(c), str(int(c)))} {float(s):.2f}" for c, s in zip(labels, scores, strict=True)]
    return _draw(image, boxes, text, [_color(int(c), names) for c in labels])


def gt_beside_predictions(image: torch.Tensor, gts: list[dict[str, Any]], dets: list[dict[str, Any]],
                          names: dict[int, str], threshold: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """`image` (uint8 [3, H, W]) twice: with its ground-truth objects (COCO annotations; crowd regions grey) and
    with its detections (COCO results, xywh) scoring >= `threshold`, in the same class colours."""
    gt_boxes = _xyxy([g["bbox"] for g in gts])
    text = [names.get(g["category_id"], str(g["category_id"])) + (" (crowd)" if g.get("iscrowd") else "")
            for g in gts]
    colors = ["#a0a0a0" if g.get("iscrowd") else _color(g["category_id"], names) for g in gts]
    left = _draw(image, gt_boxes, text, colors)
    scores = torch.tensor([float(d["score"]) for d in dets])
    labels = torch.tensor([int(d["category_id"]) for d in dets], dtype=torch.int64)
    right = draw_detections(image, _xyxy([d["bbox"] for d in dets]), scores, labels, names, threshold)
    return left, right


def save_pair_grid(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], path: Path, size: int = 320,
                   caption: str | None = None) -> None:
    """Image pairs side by side (each image resized to `size` x `size`), two pairs a row, as one PNG; `caption`
    on a strip above."""
    from PIL import Image, ImageDraw
    from torchvision.transforms.v2.functional import resize

    gap = torch.full((3, size, 8), 255, dtype=torch.uint8)
    tiles = [torch.cat([resize(a, [size, size], antialias=True), gap, resize(b, [size, size], antialias=True)], 2)
             for a, b in pairs]
    grid = make_grid(torch.stack(tiles), nrow=2, padding=8, pad_value=255)
    picture = Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy())
    if caption:
        framed = Image.new("RGB", (picture.width, picture.height + 20), "white")
        framed.paste(picture, (0, 20))
        ImageDraw.Draw(framed).text((8, 5), caption, fill="black")
        picture = framed
    picture.save(path)


def dataset_images(dataset: Any, n: int) -> list[tuple[int, torch.Tensor]]:
    """The first `n` images of a `CocoDetection` (as decoded, untransformed) with their image ids; an unreadable
    image's stand-in (the next readable one) is not repeated."""
    out: list[tuple[int, torch.Tensor]] = []
    for i in range(len(dataset)):
        if len(out) >= n:
            break
        image, target = dataset[i]
        image_id = int(target["image_id"])
        if all(image_id != seen for seen, _ in out):
            out.append((image_id, torch.as_tensor(image)))
    return out


def _color(category_id: int, names: dict[int, str]) -> str:
    return _PALETTE[sorted(names).index(category_id) % len(_PALETTE)] if category_id in names else "#ffffff"


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def _draw(image: torch.Tensor, boxes: torch.Tensor, text: list[str], colors: list[str]) -> torch.Tensor:
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
