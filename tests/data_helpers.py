"""Helpers for the data tests: write tiny hand-made COCO datasets and test images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_coco(root: Path, split: str = "train", *, images: list[dict[str, Any]],
               annotations: list[dict[str, Any]], categories: list[dict[str, Any]] | None = None,
               write_images: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Write `root/annotations/instances_<split>.json` and (unless told not to) a grey PNG per image of the
    JSON's size. Returns the root."""
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    if write_images:
        for img in images:
            if img["file_name"].startswith("/") or ".." in img["file_name"]:
                continue  # never write outside the dataset (path-escape tests)
            path = root / split / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (img["width"], img["height"]), (90, 90, 90)).save(path)
    data = {"images": images, "annotations": annotations, "categories": categories, **(extra or {})}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def image(iid: int, w: int = 40, h: int = 30, name: str | None = None) -> dict[str, Any]:
    return {"id": iid, "file_name": name or f"{iid:04d}.png", "width": w, "height": h}


def ann(aid: int, iid: int, bbox: list[float], cat: int = 1, **kw: Any) -> dict[str, Any]:
    return {"id": aid, "image_id": iid, "category_id": cat, "bbox": bbox, "area": 1.0, "iscrowd": 0, **kw}


def rect_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """[h, w, 3] uint8 black with a white filled rectangle at box = (x0, y0, x1, y1) (exclusive ends)."""
    a = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    return a
