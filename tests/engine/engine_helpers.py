"""An easy COCO dataset for engine tests: big shapes of two classes with non-contiguous category ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dynamic_detr.config import Config, get_preset

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]


def make_easy_dataset(root: Path, splits: dict[str, int], size: int = 96, seed: int = 0) -> Path:
    """`splits`: {split: number of images}; each image holds 1-2 large shapes on a noisy background."""
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            noise = rng.integers(90, 150, size=(size, size, 3), dtype=np.uint8)
            img = Image.fromarray(noise)
            draw = ImageDraw.Draw(img)
            for k in range(1 + i % 2):
                side = int(rng.integers(size // 4, size // 2))
                x0 = int(rng.integers(0, size - side)) if k == 0 else size - side - 1
                y0 = int(rng.integers(0, size - side)) if k == 0 else 0
                cat = CATEGORIES[(i + k) % 2]
                box = [x0, y0, x0 + side, y0 + side]
                if cat["name"] == "square":
                    draw.rectangle(box, fill=(220, 30, 30))
                else:
                    draw.ellipse(box, fill=(30, 30, 220))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat["id"],
                             "bbox": [x0, y0, side + 1, side + 1], "area": float((side + 1) ** 2), "iscrowd": 0})
            img.save(root / split / f"{i:04d}.png")
            images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": size, "height": size})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return root


def tiny_config(**train) -> Config:
    """cpu_tiny at 96 px, no random crop, deterministic."""
    cfg = get_preset("cpu_tiny")
    d = cfg.data
    d.train_short_sides, d.train_max_size, d.crop_prob = [96], 128, 0.0
    d.eval_short_side, d.eval_max_size = 96, 128
    d.num_workers = 0
    cfg.train.deterministic = True
    cfg.train.warmup_iters = 0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg
