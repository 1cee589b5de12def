"""Tiled inference: a large image cut into overlapping tiles at their original resolution, each tile run through a
`Predictor` (resized to the model's eval size, as any image), the detections shifted back and merged.

Why: the eval transform shrinks a 2,000 px canvas to the model's eval size, and a 10 px object becomes a few pixels
the model cannot see. Tiles keep small objects at their size (docs/tiling.md).

How the detections are merged (pure functions on tensors, one row per box, each box with its window: the tile it
was seen in, or the whole image):
1. `cut_flags`: a box that touches an inner edge of its tile (an edge that is not the image border) is *cut*.
2. `resolve_cuts`: a cut box loses to a box of the same class from another window that is not cut and covers the
   same object; two cut boxes of the same class from different windows that cover the same object (a large object
   no tile sees whole) are joined into one box (their union, the higher score). "The same object" is measured
   inside the region both windows see (`shared_iou`): both boxes clipped to it, their IoU at least `iou` (tiles
   that only abut: the IoU of the extents along their common edge of boxes that reach it).
3. `merge_nms` (class-wise, torchvision's `batched_nms`) or `merge_weighted` (each cluster of same-class boxes
   over `iou` becomes their score-weighted mean box, with the cluster's highest score).
4. The image's top-k by score, after merging: the model's query count caps a tile, not the image.

Memory is bounded: tiles are cropped as views and sent `batch_size` at a time, and only the detections are kept
(at most the model's top-k per tile)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..errors import UserError

Detect = Callable[[list[Tensor]], list[dict[str, Tensor]]]
"""`Predictor.__call__`'s contract: uint8 [3, H, W] images -> per image `boxes` (xyxy), `scores`, `labels`."""

MERGES = ("nms", "weighted")
MIN_TILE = 16
"""Smallest tile side accepted (pixels): smaller tiles hold nothing a detector can use."""
EDGE_MARGIN = 0.02
"""A box edge within this fraction of the tile side (at least 2 px) of an inner tile edge counts as touching it:
predicted boxes of a cut object end at the edge only approximately."""


@dataclass(frozen=True)
class TileOptions:
    """How an image is tiled and its tiles' detections merged."""

    size: int
    """Tile side in original pixels (a tile is `size` x `size`, less at an image smaller than it)."""
    overlap: float = 0.2
    """Fraction of `size` shared by neighbouring tiles, in [0, 0.9]; an object smaller than the overlap is seen
    whole by some tile."""
    full_image: bool = False
    """Also run the whole image (resized as usual) and merge its detections in: large objects are seen whole."""
    merge: str = "nms"
    """"nms" (class-wise, torchvision `batched_nms`) or "weighted" (score-weighted mean boxes)."""
    iou: float = 0.5
    """IoU at which two boxes of one class are the same object (merging, and cut boxes inside shared regions)."""

    def check(self, names: Mapping[str, str] | None = None) -> None:
        """Raise UserError naming the option on a bad value; `names` maps a field to the name its caller knows it
        by (the CLI: {"size": "--tile", ...}), else "tile size", "tile overlap", "tile merge", "tile merge iou"."""
        name = {"size": "tile size", "overlap": "tile overlap", "merge": "tile merge", "iou": "tile merge iou",
                **(names or {})}
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < MIN_TILE:
            raise UserError(f"{name['size']} must be at least {MIN_TILE} pixels (an integer), got {self.size!r}")
        if not isinstance(self.overlap, int | float) or not 0 <= self.overlap <= 0.9:
            raise UserError(f"{name['overlap']} must be a fraction in [0, 0.9], got {self.overlap!r}")
        if self.merge not in MERGES:
            raise UserError(f"{name['merge']} must be one of {', '.join(MERGES)}, got {self.merge!r}")
        if not isinstance(self.iou, int | float) or not 0 < self.iou <= 1:
            raise UserError(f"{name['iou']} must be in (0, 1], got {self.iou!r}")


def as_tile_options(tile: TileOptions | int | None) -> TileOptions | None:
    """`TileOptions` from what a caller gives: options, a tile size (other options at their defaults) or None."""
    if tile is None or isinstance(tile, TileOptions):
        options = tile
    elif isinstance(tile, int) and not isinstance(tile, bool):
        options = TileOptions(size=tile)
    else:
        raise UserError(f"tile must be TileOptions, a tile size (int) or None, got {type(tile).__name__}")
    if options is not None:
        options.check()
    return options


# ------------------------------------------------------------------------------------------------ the grid
def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets along one side: a step of `size * (1 - overlap)`, the last tile flush with the end; [0] when
    the side is no longer than a tile."""
    if length <= size:
        return [0]
    step = max(1, round(size * (1 - overlap)))
    starts = list(range(0, length - size, step))
    return [*starts, length - size]


def tile_grid(height: int, width: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Tile windows (x0, y0, x1, y1) covering an image, row by row; one window = the whole image when it fits."""
    return [(x, y, min(x + size, width), min(y + size, height))
            for y in tile_starts(height, size, overlap) for x in tile_starts(width, size, overlap)]


# ------------------------------------------------------------------------------------------------ merging
def cut_flags(boxes: Tensor, window: tuple[int, int, int, int], image_size: tuple[int, int],
              margin: float) -> Tensor:
    """[N] bool: which boxes (xyxy, image pixels) touch an inner edge of `window` (x0, y0, x1, y1), within
    `margin` pixels. An edge on the image border (`image_size` = (h, w)) is not inner."""
    x0, y0, x1, y1 = window
    h, w = image_size
    cut = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        cut |= boxes[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= boxes[:, 1] <= y0 + margin
    if x1 < w:
        cut |= boxes[:, 2] >= x1 - margin
    if y1 < h:
        cut |= boxes[:, 3] >= y1 - margin
    return cut


def shared_iou(boxes_a: Tensor, window_a: Tensor, boxes_b: Tensor, window_b: Tensor, margin: float = 2.0) -> Tensor:
    """[Na, Nb] IoU of boxes seen in two windows, both clipped to the region the two windows share: what both
    views saw of an object agrees there, even when one view cut it. 0 where a clipped box is empty.

    Windows that only abut (overlap 0: the region is a line) share no area: there, two boxes that both reach the
    line (within `margin` pixels) are compared by the IoU of their extents along it."""
    region = torch.cat([torch.maximum(window_a[:2], window_b[:2]), torch.minimum(window_a[2:], window_b[2:])])
    width, height = float(region[2] - region[0]), float(region[3] - region[1])
    if width > 0 and height > 0:
        a, b = _clip(boxes_a, region), _clip(boxes_b, region)
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        area_a, area_b = _area(a), _area(b)
        union = area_a[:, None] + area_b[None, :] - inter
        return inter / union.clamp(min=1e-6) * (area_a[:, None] > 0) * (area_b[None, :] > 0)
    if (width == 0) == (height == 0) or min(width, height) < 0:  # apart, or meeting at a corner
        return torch.zeros(len(boxes_a), len(boxes_b))
    across, along = (0, 1) if width == 0 else (1, 0)  # the line is x = region[0] (width 0) or y = region[1]
    line = float(region[across])

    def reach(boxes: Tensor) -> Tensor:
        return (boxes[:, across] <= line + margin) & (boxes[:, across + 2] >= line - margin)

    lo, hi = float(region[along]), float(region[along + 2])
    a0, a1 = boxes_a[:, along].clamp(lo, hi), boxes_a[:, along + 2].clamp(lo, hi)
    b0, b1 = boxes_b[:, along].clamp(lo, hi), boxes_b[:, along + 2].clamp(lo, hi)
    inter = (torch.minimum(a1[:, None], b1[None, :]) - torch.maximum(a0[:, None], b0[None, :])).clamp(min=0)
    union = (a1 - a0)[:, None] + (b1 - b0)[None, :] - inter
    return inter / union.clamp(min=1e-6) * reach(boxes_a)[:, None] * reach(boxes_b)[None, :]


def resolve_cuts(boxes: Tensor, scores: Tensor, labels: Tensor, cut: Tensor, windows: Tensor,
                 iou: float, margin: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """Cut boxes (`cut_flags`) settled against the other windows' views (see the module docstring, step 2).

    Args: boxes [N, 4] xyxy image pixels, scores [N], labels [N], cut [N] bool, windows [N, 4] each box's window
    (x0, y0, x1, y1); iou: the shared-region IoU at which two boxes are one object; margin: how near (pixels) a box
    must come to the line between two abutting windows to be compared across it (`shared_iou`).
    Returns boxes, scores, labels with the cut boxes that lost removed and each group of joined fragments
    replaced by one box; the order of the untouched boxes is kept, joined boxes come last."""
    n = len(boxes)
    if n == 0 or not bool(cut.any()):
        return boxes, scores, labels
    uniq, which = torch.unique(windows, dim=0, return_inverse=True)
    members = torch.split(which.argsort(stable=True), torch.bincount(which, minlength=len(uniq)).tolist())
    lost = torch.zeros(n, dtype=torch.bool)
    parent = list(range(n))  # union-find over cut fragments

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(len(uniq)):
        ia = members[a]
        cut_a = ia[cut[ia]]
        if len(cut_a) == 0:
            continue
        side = torch.minimum(uniq[a, 2:], uniq[:, 2:]) - torch.maximum(uniq[a, :2], uniq[:, :2])
        touching = (side >= 0).all(-1) & (side > 0).any(-1)  # windows sharing a region or abutting along an edge
        for b in torch.nonzero(touching).flatten().tolist():
            if b == a:
                continue
            ib = members[b]
            same = (shared_iou(boxes[cut_a], uniq[a].float(), boxes[ib], uniq[b].float(), margin) >= iou) \
                & (labels[cut_a][:, None] == labels[ib][None, :])
            whole = same & ~cut[ib][None, :]
            lost[cut_a[whole.any(1)]] = True
            if b > a:  # each pair of windows once for the fragments
                for i, j in torch.nonzero(same & cut[ib][None, :]).tolist():
                    parent[root(int(cut_a[i]))] = root(int(ib[j]))
    groups: dict[int, list[int]] = {}
    for i in torch.nonzero(cut & ~lost).flatten().tolist():
        groups.setdefault(root(i), []).append(i)
    keep = ~cut | ~lost
    joined = [g for g in groups.values() if len(g) > 1]
    for g in joined:
        keep[g] = False
    out_boxes, out_scores, out_labels = [boxes[keep]], [scores[keep]], [labels[keep]]
    for g in joined:
        part = boxes[g]
        out_boxes.append(torch.cat([part[:, :2].min(0).values, part[:, 2:].max(0).values])[None])
        out_scores.append(scores[g].max()[None])
        out_labels.append(labels[g[0]][None])
    return torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)


def merge_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise NMS (torchvision `batched_nms`): the kept boxes, highest score first."""
    keep = batched_nms(boxes.float(), scores.float(), labels, iou)
    return boxes[keep], scores[keep], labels[keep]


def merge_weighted(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> tuple[Tensor, Tensor, Tensor]:
    """Score-weighted merge: the highest-scoring box left takes every box of its class with IoU >= `iou` to it;
    the cluster becomes their score-weighted mean box with the cluster's highest score. Highest score first.
    Memory grows with the number of boxes (one row of IoUs at a time), not with its square."""
    out_boxes, out_scores, out_labels = [], [], []
    for label in labels.unique().tolist():
        idx = torch.nonzero(labels == label).flatten()
        idx = idx[scores[idx].argsort(descending=True)]
        cls_boxes, cls_scores = boxes[idx].float(), scores[idx]
        left = torch.ones(len(idx), dtype=torch.bool)
        for i in range(len(idx)):
            if not left[i]:
                continue
            overlap = box_iou(cls_boxes[i:i + 1], cls_boxes)[0].nan_to_num(0.0) >= iou
            overlap[i] = True  # a box of zero area (0 / 0 IoU) is its own cluster
            cluster = torch.nonzero(overlap & left).flatten()
            left[cluster] = False
            weights = cls_scores[cluster].float().clamp(min=1e-6)
            out_boxes.append((cls_boxes[cluster] * weights[:, None]).sum(0) / weights.sum())
            out_scores.append(cls_scores[i])
            out_labels.append(labels[idx[i]])
    if not out_boxes:
        return boxes, scores, labels
    merged_scores = torch.stack(out_scores)
    order = merged_scores.argsort(descending=True)
    return torch.stack(out_boxes)[order], merged_scores[order], torch.stack(out_labels)[order]


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, cut: Tensor, windows: Tensor, merge: str,
                     iou: float, top_k: int, margin: float = 2.0) -> dict[str, Tensor]:
    """Steps 2-4 of the module docstring: cut boxes settled, duplicates merged, the top-k by score."""
    boxes, scores, labels = resolve_cuts(boxes, scores, labels, cut, windows, iou, margin)
    boxes, scores, labels = (merge_nms if merge == "nms" else merge_weighted)(boxes, scores, labels, iou)
    order = scores.argsort(descending=True)[:top_k]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


def _clip(boxes: Tensor, region: Tensor) -> Tensor:
    return torch.cat([torch.maximum(boxes[:, :2], region[:2]), torch.minimum(boxes[:, 2:], region[2:])], 1)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)


# ------------------------------------------------------------------------------------------------ the predictor
class TiledPredictor:
    """A `Predictor` (or any callable with its contract) run over tiles of each image; same contract as
    `Predictor.__call__`: uint8 [3, H, W] images -> per image `boxes` (xyxy original pixels), `scores`, `labels`,
    highest score first, at most `top_k`.

    `batch_size` tiles go through the predictor at a time, whatever the image size. `min_score` drops a tile's
    boxes under it before merging (a caller that thresholds anyway saves merge time on huge images; a dropped box
    no longer suppresses a cut box)."""

    def __init__(self, predictor: Detect, options: TileOptions, batch_size: int = 8, top_k: int = 100, *,
                 min_score: float = 0.0) -> None:
        options.check()
        if batch_size < 1:
            raise UserError(f"tile batch size must be at least 1, got {batch_size}")
        if top_k < 1:
            raise UserError(f"top-k must be at least 1, got {top_k}")
        self.predictor = predictor
        self.options = options
        self.batch_size = batch_size
        self.top_k = top_k
        self.min_score = min_score
        self.names: dict[int, str] = getattr(predictor, "names", {})

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return [self.predict_one(image) for image in images]

    def predict_one(self, image: Tensor) -> dict[str, Tensor]:
        """One image's merged detections."""
        h, w = int(image.shape[-2]), int(image.shape[-1])
        grid = tile_grid(h, w, self.options.size, self.options.overlap)
        if len(grid) == 1:  # the image fits in a tile: the plain path
            res = self.predictor([image])[0]
            return {k: v[:self.top_k] for k, v in res.items()}
        margin = max(2.0, EDGE_MARGIN * self.options.size)
        parts: dict[str, list[Tensor]] = {"boxes": [], "scores": [], "labels": [], "cut": [], "windows": []}

        def add(res: dict[str, Tensor], window: tuple[int, int, int, int], whole: bool) -> None:
            keep = res["scores"] >= self.min_score
            boxes = res["boxes"][keep].float() + torch.tensor([window[0], window[1]] * 2, dtype=torch.float32)
            cut = torch.zeros(len(boxes), dtype=torch.bool) if whole else cut_flags(boxes, window, (h, w), margin)
            parts["boxes"].append(boxes)
            parts["scores"].append(res["scores"][keep].float())
            parts["labels"].append(res["labels"][keep].to(torch.int64))
            parts["cut"].append(cut)
            parts["windows"].append(torch.tensor([window], dtype=torch.float32).expand(len(boxes), 4))

        if self.options.full_image:
            add(self.predictor([image])[0], (0, 0, w, h), whole=True)
        for windows in _chunks(grid, self.batch_size):
            crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows]  # views, not copies
            for res, window in zip(self.predictor(crops), windows, strict=True):
                add(res, window, whole=False)
        merged = merge_detections(*(torch.cat(parts[k]) for k in ("boxes", "scores", "labels", "cut", "windows")),
                                  merge=self.options.merge, iou=self.options.iou, top_k=self.top_k, margin=margin)
        size = torch.tensor([w, h, w, h], dtype=torch.float32)
        merged["boxes"] = torch.minimum(merged["boxes"].clamp(min=0), size)
        return merged


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def tile_count(height: int, width: int, options: TileOptions) -> int:
    """How many tiles `TiledPredictor` runs for an image of this size (the whole image counted when asked)."""
    n = len(tile_grid(height, width, options.size, options.overlap))
    return 1 if n == 1 else n + int(options.full_image)

