"""Deterministic synthetic COCO dataset of shapes on cluttered backgrounds (the demo's data).

Six classes told apart by shape only (colours are drawn independently of the class): circle, square,
triangle, star, ring, cross. Each image has 2-8 objects whose nominal size is log-uniform between 6 px and
40% of the long side (at 320 px about half the objects are COCO-small, area < 32^2), on a background of
gradients, low-frequency blotches, stripes and noise, with distractors that are not objects (line segments,
elongated blobs, irregular polygons). Later objects may hide at most 30% of an earlier one; boxes are the
**visible extent** of each shape as drawn and `area` its visible pixel count (COCO's convention for masks).

Image sizes: the long side is `image_size`; half the images are square, the others landscape or portrait
with the short side in [0.75, 1] x `image_size`, so batches exercise padding.

Everything is seeded per image from (seed, split, index): an image can be regenerated alone and the JSON is
byte-identical for a given seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write_text

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross")
SPLITS = {"train": 0, "val": 1}
MIN_SIDE = 6
"""Smallest box side in pixels (small objects must stay recognisable)."""
MAX_FRACTION = 0.4
"""Largest nominal object size, as a fraction of the long side."""
SIZE_GAMMA = 0.7
"""Nominal size = MIN_SIDE * (max / MIN_SIDE) ** (u ** SIZE_GAMMA), u ~ U(0, 1): log-uniform tilted towards
larger sizes (gamma = 1 would make about 65% of the objects small at 320 px; 0.7 gives about half)."""
OBJECTS_PER_IMAGE = (2, 8)
MAX_HIDDEN = 0.3
"""A new object may hide at most this fraction of an earlier object's pixels."""
DEFAULTS = {"train": 1000, "val": 200, "image_size": 320}
"""Demo defaults: about a minute to generate on one core, enough for a small detector to learn."""


# --------------------------------------------------------------------------- geometry
def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    a = phase + np.arange(n) * 2 * math.pi / n
    return radius * np.stack([np.cos(a), np.sin(a)], 1)


def _shape_polygons(cls: str, size: float, rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Polygons (centred at 0) whose union is the shape, and the ring width (0 for filled shapes)."""
    r = size / 2
    if cls in ("circle", "ring"):
        return [_regular(48, r, 0.0)], (max(2.0, 0.2 * size) if cls == "ring" else 0.0)
    if cls == "square":
        sq = np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.9
        return [_rotate(sq, rng.uniform(-0.26, 0.26))], 0.0
    if cls == "triangle":
        return [_regular(3, r * 1.1, rng.uniform(0, 2 * math.pi))], 0.0
    if cls == "star":
        phase = rng.uniform(0, 2 * math.pi)
        outer, inner = _regular(5, r * 1.1, phase), _regular(5, r * 0.45, phase + math.pi / 5)
        return [np.stack([outer, inner], 1).reshape(10, 2)], 0.0
    if cls == "cross":
        t = max(1.0, size / 6)  # half arm thickness: arms are a third of the size
        bar = np.array([[-r, -t], [r, -t], [r, t], [-r, t]])
        bars = [bar, bar[:, ::-1]]
        angle = rng.uniform(-0.35, 0.35)
        return [_rotate(b, angle) for b in bars], 0.0
    raise ValueError(f"unknown class {cls}")


def _raster(polys: list[np.ndarray], ring: float, cx: float, cy: float) -> tuple[np.ndarray, int, int]:
    """Boolean mask of the shape and the (x, y) of its top-left pixel in image coordinates."""
    pts = np.concatenate(polys)
    x0, y0 = math.floor(cx + pts[:, 0].min()), math.floor(cy + pts[:, 1].min())
    x1, y1 = math.ceil(cx + pts[:, 0].max()), math.ceil(cy + pts[:, 1].max())
    canvas = Image.new("L", (x1 - x0 + 1, y1 - y0 + 1), 0)
    draw = ImageDraw.Draw(canvas)
    for p in polys:
        draw.polygon([(float(x) + cx - x0, float(y) + cy - y0) for x, y in p], fill=255)
    if ring:
        inner = polys[0] * max(0.0, 1 - 2 * ring / (x1 - x0))
        draw.polygon([(float(x) + cx - x0, float(y) + cy - y0) for x, y in inner], fill=0)
    return np.asarray(canvas) > 0, x0, y0


# --------------------------------------------------------------------------- background and clutter
def _luma(c: np.ndarray) -> float:
    return float(c[0] * 0.299 + c[1] * 0.587 + c[2] * 0.114)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """[h, w, 3] float32: gradient + low-frequency blotches + optional stripes + noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c1 + (c2 - c1) * t[..., None]
    grid = rng.uniform(-1, 1, (rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    blot = np.stack([np.asarray(Image.fromarray(grid[..., k]).resize((w, h), Image.BICUBIC))
                     for k in range(3)], -1)
    img += rng.uniform(10, 45) * blot
    if rng.random() < 0.5:
        phi, period = rng.uniform(0, math.pi), rng.uniform(6, 40)
        stripes = np.sign(np.sin(2 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period))
        img += (rng.uniform(8, 30) * stripes)[..., None] * rng.uniform(0.3, 1.0, 3)
    img += rng.normal(0, rng.uniform(1.5, 8), (h, w, 1)).astype(np.float32)
    return img.astype(np.float32)


def _distractors(rng: np.random.Generator, canvas: Image.Image, long_side: int) -> None:
    """Lines, elongated blobs and irregular polygons: texture that is not an object class."""
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    for _ in range(int(rng.integers(1, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        size = rng.uniform(8, 0.3 * long_side)
        kind = rng.integers(3)
        if kind == 0:  # line segment
            a = rng.uniform(0, math.pi)
            dx, dy = size * math.cos(a), size * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:  # elongated blob (aspect >= 2.5: never a circle)
            ell = _regular(32, 1.0, 0.0) * np.array([size / 2, size / 2 / rng.uniform(2.5, 4.5)])
            ell = _rotate(ell, rng.uniform(0, math.pi)) + np.array([cx, cy])
            draw.polygon([tuple(p) for p in ell.tolist()], fill=colour)
        else:  # irregular polygon: 5-8 vertices at jittered, evenly spread angles and random radii
            n = int(rng.integers(5, 9))
            a = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * math.pi / n + rng.uniform(0, 2 * math.pi)
            rad = size / 2 * rng.uniform(0.35, 1.0, n)
            pts = np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1)
            draw.polygon([tuple(p) for p in pts.tolist()], fill=colour)


def _contrasting_colour(rng: np.random.Generator, local: np.ndarray) -> np.ndarray:
    """A random colour whose luma differs from the local background mean by at least 70."""
    colour = rng.uniform(0, 255, 3)
    bg = _luma(local.reshape(-1, 3).mean(0))
    y = _luma(colour)
    if abs(y - bg) < 70:
        target = bg + 90 if bg < 128 else bg - 90
        colour = np.clip(colour + (target - y), 0, 255)
    return colour


# --------------------------------------------------------------------------- one image
def render(seed: int, split: str, index: int,
           image_size: int = DEFAULTS["image_size"]) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Image `index` of `split`: an RGB PIL image and its objects ({category_id, bbox [x,y,w,h], area})."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    long_side = image_size
    short = long_side if rng.random() < 0.5 else round(long_side * rng.uniform(0.75, 1.0))
    w, h = (long_side, short) if rng.random() < 0.5 else (short, long_side)

    canvas = Image.fromarray(np.clip(_background(rng, w, h), 0, 255).astype(np.uint8))
    _distractors(rng, canvas, long_side)
    img = np.asarray(canvas).astype(np.float32)

    ids = np.zeros((h, w), np.int32)  # 0 = background, k + 1 = object k on top
    full: list[int] = []  # drawn pixel count of each object
    visible: list[int] = []  # pixels of each object still on top
    placed: list[tuple[int, np.ndarray, int, int]] = []  # (class index, mask, x0, y0)
    max_size = max(MIN_SIDE + 1.0, MAX_FRACTION * long_side)
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        cls = int(rng.integers(len(CLASSES)))
        size = MIN_SIDE * (max_size / MIN_SIDE) ** (rng.random() ** SIZE_GAMMA)
        polys, ring = _shape_polygons(CLASSES[cls], size, rng)
        pts = np.concatenate(polys)
        extent = pts.max(0) - pts.min(0)
        if extent.min() < MIN_SIDE:  # keep every box side >= MIN_SIDE
            k = MIN_SIDE / extent.min()
            polys, ring, pts, extent = [p * k for p in polys], ring * k, pts * k, extent * k
        if extent[0] >= w - 4 or extent[1] >= h - 4:
            continue
        for _attempt in range(15):
            cx = rng.uniform(-pts[:, 0].min() + 1, w - pts[:, 0].max() - 2)
            cy = rng.uniform(-pts[:, 1].min() + 1, h - pts[:, 1].max() - 2)
            mask, x0, y0 = _raster(polys, ring, cx, cy)
            mh, mw = mask.shape
            region = ids[y0:y0 + mh, x0:x0 + mw]
            mask = mask[:region.shape[0], :region.shape[1]]
            hidden = np.bincount(region[mask], minlength=len(full) + 1)[1:]
            if all(visible[j] - hidden[j] >= (1 - MAX_HIDDEN) * full[j] for j in np.flatnonzero(hidden)):
                break
        else:
            continue  # no place where it hides too much of the others: skip this object
        colour = _contrasting_colour(rng, img[y0:y0 + mh, x0:x0 + mw][mask])
        img[y0:y0 + mh, x0:x0 + mw][mask] = colour
        region[mask] = len(full) + 1
        for j in np.flatnonzero(hidden):
            visible[j] -= int(hidden[j])
        full.append(int(mask.sum()))
        visible.append(full[-1])
        placed.append((cls, mask, x0, y0))

    img += rng.normal(0, rng.uniform(1, 3), (h, w, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))

    objects = []
    for k, (cls, mask, x0, y0) in enumerate(placed):
        mh, mw = mask.shape
        vis = ids[y0:y0 + mh, x0:x0 + mw] == k + 1
        area = int(vis.sum())
        if area < 0.5 * full[k]:
            continue  # mostly hidden (cannot happen with MAX_HIDDEN < 0.5, kept as the stated rule)
        ys, xs = np.nonzero(vis)
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        bw, bh = int(xs.max()) - int(xs.min()) + 1, int(ys.max()) - int(ys.min()) + 1
        objects.append({"category_id": cls + 1, "bbox": [bx, by, bw, bh], "area": area})
    return image, objects


# --------------------------------------------------------------------------- a split, a dataset
def _split_stats(images: list[dict], anns: list[dict]) -> dict[str, Any]:
    n = max(len(anns), 1)
    per_image = np.bincount([a["image_id"] for a in anns], minlength=len(images) + 1)[1:]
    areas = np.array([a["area"] for a in anns]) if anns else np.zeros(0)
    sides = np.array([a["bbox"][2:] for a in anns]) if anns else np.zeros((0, 2))
    return {
        "images": len(images),
        "objects": len(anns),
        "objects_per_image": {"min": int(per_image.min()) if len(images) else 0,
                              "max": int(per_image.max()) if len(images) else 0,
                              "mean": round(float(per_image.mean()) if len(images) else 0.0, 3)},
        "per_class": {c: sum(1 for a in anns if a["category_id"] == i + 1) for i, c in enumerate(CLASSES)},
        "small": round(float((areas < 32**2).sum()) / n, 4),
        "medium": round(float(((areas >= 32**2) & (areas < 96**2)).sum()) / n, 4),
        "large": round(float((areas >= 96**2).sum()) / n, 4),
        "min_side": int(sides.min()) if anns else 0,
        "max_side": int(sides.max()) if anns else 0,
    }


def generate_split(out: Path, split: str, count: int, image_size: int = 320, seed: int = 0,
                   progress: bool = False) -> dict[str, Any]:
    """Write `out/<split>/*.png` and `out/annotations/instances_<split>.json`; return the split's stats."""
    from tqdm import tqdm

    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for index in tqdm(range(count), desc=f"synth {split}", unit="img", disable=not progress):
        image, objects = render(seed, split, index, image_size)
        image_id = index + 1
        name = f"{image_id:06d}.png"
        image.save(out / split / name, compress_level=1)
        images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height,
                       "license": 1})
        for obj in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, **obj, "iscrowd": 0})
    coco = {
        "info": {"description": "dynamic-detr synthetic shapes", "version": "1.0", "year": 2021,
                 "contributor": "dynamic_detr.data.synthetic", "seed": seed, "image_size": image_size,
                 "split": split},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)],
    }
    atomic_write_text(out / "annotations" / f"instances_{split}.json", json.dumps(coco, indent=1) + "\n")
    return _split_stats(images, anns)


def generate(out: Path, train: int = DEFAULTS["train"], val: int = DEFAULTS["val"],
             image_size: int = DEFAULTS["image_size"], seed: int = 0,
             progress: bool = False) -> dict[str, Any]:
    """Write a train and a val split under `out` (COCO layout); return {"out", "seed", "image_size",
    "classes", "train": stats, "val": stats} with per-split counts, per-class counts and size shares."""
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}")
    stats: dict[str, Any] = {"out": str(out), "seed": seed, "image_size": image_size,
                             "classes": list(CLASSES)}
    for split, count in (("train", train), ("val", val)):
        stats[split] = generate_split(Path(out), split, count, image_size, seed, progress)
    return stats
