"""The suite's builders, one per kind of fixture: a tiny config (`tiny_config`), a COCO dataset (`write_coco`,
with its records `image` / `ann`), the shapes datasets drawn for training and evaluation (`shapes_dataset`,
`overfit_dataset`), a saved model (`save_untrained_tiny`) and a trained one (`overfit_run`). Each takes
parameters for what its callers set differently."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from dynamic_detr.config import Config, apply_overrides, get_preset

SHAPES = {3: "square", 7: "disc"}
"""The shapes datasets' categories, id -> name (non-contiguous ids); the models of the tests that predict or
evaluate on them use these classes too."""


# ------------------------------------------------------------------------------------------------ configs
def tiny_config(changes: dict[str, Any] | None = None, *, classes: dict[int, str] | int | None = None,
                px: int | None = None, run: bool = False, **train: Any) -> Config:
    """cpu_tiny, changed only as asked (without arguments: the preset itself):

    - `changes`: dotted key -> value, as a preset declares them ({"model.decoder.num_stages": 3}).
    - `classes`: {category id: name} sets num_classes, category_ids and class_names; a number sets num_classes
      only (contiguous ids, no names).
    - `px`: images evaluated at short side `px`, long side at most 4/3 of it (96 -> 96 / 128); with `run` also
      trained at that one size, without random crop.
    - `run`: set up for short training runs in the test process: no loader workers, deterministic, no warmup.
    - `**train`: train.<key> = value.
    """
    cfg = get_preset("cpu_tiny")
    if isinstance(classes, int):
        cfg.model.num_classes = classes
    elif classes is not None:
        m = cfg.model
        m.num_classes, m.category_ids, m.class_names = len(classes), list(classes), list(classes.values())
    d = cfg.data
    if px is not None:
        d.eval_short_side, d.eval_max_size = px, px * 4 // 3
        if run:
            d.train_short_sides, d.train_max_size, d.crop_prob = [px], px * 4 // 3, 0.0
    if run:
        d.num_workers = 0
        cfg.train.deterministic = True
        cfg.train.warmup_iters = 0
    for key, value in (changes or {}).items():
        *path, name = key.split(".")
        section = cfg
        for part in path:
            section = getattr(section, part)
        if not hasattr(section, name):
            raise AttributeError(f"tiny_config: no field {key!r}")
        setattr(section, name, value)
    for key, value in train.items():
        if not hasattr(cfg.train, key):
            raise AttributeError(f"tiny_config: no field 'train.{key}'")
        setattr(cfg.train, key, value)
    return cfg


# ------------------------------------------------------------------------------------------------ datasets
def write_coco(root: Path, split: str = "train", *, images: list[dict[str, Any]],
               annotations: list[dict[str, Any]], categories: list[dict[str, Any]] | None = None,
               write_images: bool = True, pictures: dict[str, Image.Image] | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write `root/annotations/instances_<split>.json` and (unless told not to) each image under `root/<split>/`:
    `pictures[file_name]` where given, else a grey PNG of the JSON's size. Returns the root. The one writer of
    COCO annotation files in the suite (the tests of malformed files write their bytes themselves)."""
    categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
    pictures = pictures or {}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    if write_images:
        for img in images:
            if img["file_name"].startswith("/") or ".." in img["file_name"]:
                continue  # never write outside the dataset (path-escape tests)
            path = root / split / img["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = pictures.get(img["file_name"])
            if picture is None:
                picture = Image.new("RGB", (img["width"], img["height"]), (90, 90, 90))
            picture.save(path)
    data = {"images": images, "annotations": annotations, "categories": categories, **(extra or {})}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def image(iid: int, w: int = 40, h: int = 30, name: str | None = None) -> dict[str, Any]:
    """A COCO image record."""
    return {"id": iid, "file_name": name or f"{iid:04d}.png", "width": w, "height": h}


def ann(aid: int, iid: int, bbox: list[float], cat: int = 1, **kw: Any) -> dict[str, Any]:
    """A COCO annotation record."""
    return {"id": aid, "image_id": iid, "category_id": cat, "bbox": bbox, "area": 1.0, "iscrowd": 0, **kw}


def shapes_dataset(root: Path, splits: dict[str, int | Sequence[tuple[int, int]]], size: int = 96, seed: int = 0,
                   corner: bool = True) -> Path:
    """An easy COCO dataset: each image holds 1 or 2 (alternately) large shapes, red squares and blue discs
    (`SHAPES`), on a noisy background. `splits`: split -> a number of `size` x `size` images, or the (h, w) of
    each. `corner`: the second shape of an image sits in its top-right corner (else anywhere, as the first)."""
    rng = np.random.default_rng(seed)
    categories = [{"id": cid, "name": name} for cid, name in SHAPES.items()]
    cats = list(SHAPES)
    for split, spec in splits.items():
        sizes = [(size, size)] * spec if isinstance(spec, int) else list(spec)
        images, anns, pictures = [], [], {}
        for i, (h, w) in enumerate(sizes):
            picture = Image.fromarray(rng.integers(90, 150, size=(h, w, 3), dtype=np.uint8))
            draw = ImageDraw.Draw(picture)
            for k in range(1 + i % 2):
                side = int(rng.integers(min(h, w) // 4, min(h, w) // 2))
                if k == 0 or not corner:
                    x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
                else:
                    x0, y0 = w - side - 1, 0
                cat = cats[(i + k) % 2]
                box = [x0, y0, x0 + side, y0 + side]
                if SHAPES[cat] == "square":
                    draw.rectangle(box, fill=(220, 30, 30))
                else:
                    draw.ellipse(box, fill=(30, 30, 220))
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                             "bbox": [x0, y0, side + 1, side + 1], "area": float((side + 1) ** 2), "iscrowd": 0})
            name = f"{i:04d}.png"
            pictures[name] = picture
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        write_coco(root, split, images=images, annotations=anns, categories=categories, pictures=pictures)
    return root


def overfit_dataset(root: Path, images: int | Sequence[tuple[int, int]] = 4, corner: bool = True,
                    repeats: int = 16) -> Path:
    """A few shapes images to fit (`shapes_dataset(root, {"train": images}, corner=corner)`, seed 0): split
    `val` is them, split `train` lists them `repeats` times (an epoch of that many passes, ids offset by 100
    per pass), from one image folder."""
    shapes_dataset(root, {"train": images}, corner=corner)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    (root / "val").symlink_to(root / "train")
    write_coco(root, "val", images=coco["images"], annotations=coco["annotations"], categories=coco["categories"],
               write_images=False)
    passes = range(repeats)
    write_coco(root, "train", images=[{**im, "id": im["id"] + 100 * r} for r in passes for im in coco["images"]],
               annotations=[{**a, "id": a["id"] + 100 * r, "image_id": a["image_id"] + 100 * r}
                            for r in passes for a in coco["annotations"]],
               categories=coco["categories"], write_images=False)
    return root


# ------------------------------------------------------------------------------------------------ models
def save_untrained_tiny(out: Path) -> Path:
    """An untrained cpu_tiny model (`SHAPES`' classes) saved as a model folder at `out`: for tests of what
    `predict` writes, not of what it finds."""
    from dynamic_detr.api import save_pretrained
    from dynamic_detr.model import DynamicDETR

    cfg = tiny_config(classes=SHAPES)
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model)
    model.run_config = cfg
    save_pretrained(model, out)
    return out


def overfit_config(amp: str = "none", overrides: Sequence[str] = ()) -> Config:
    """The config of `overfit_run`: cpu_tiny at 96 px, batch 4, lr 6e-4 everywhere dropped after epoch 10,
    gradient clip 1, no flips, evaluated at the end only; `overrides` as `dynamic-detr train` takes them."""
    cfg = tiny_config(px=96, run=True, batch_size=4, lr=6e-4, lr_backbone=6e-4, lr_drop_epochs=[10],
                      eval_every=1000, clip_max_norm=1.0, amp=amp)
    cfg = apply_overrides(cfg, list(overrides))
    cfg.data.hflip_prob = 0.0
    return cfg


def overfit_run(root: Path, amp: str = "none", overrides: Sequence[str] = (), *, epochs: int = 12,
                images: int | Sequence[tuple[int, int]] = 4, corner: bool = True, threads: int | None = 2) -> Path:
    """Fit `overfit_dataset(root / "data", images, corner)` (16 passes of batch 4 an epoch: 192 steps in 12
    epochs of 4 images) with `overfit_config(amp, overrides)`, evaluated on the same images at the end; returns
    the run folder `root / "run"` (its metrics.json: those final metrics).

    `threads`: torch's thread count during the run (None: the worker's). The run's numerics depend on it
    (reduction order), and a 192-step fit depends on its numerics (see tests/train/test_overfit.py): the
    overfit tests' bounds were set at 2 threads, kept here whatever pytest-xdist gives the worker (at 1 thread
    the fp32 fit ends at AP 47.4 / AP50 79.9)."""
    from dynamic_detr.train.trainer import Trainer

    data = overfit_dataset(root / "data", images, corner)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        result = Trainer(overfit_config(amp, overrides), data, root / "run", epochs=epochs, progress=False).fit()
    finally:
        torch.set_num_threads(before)
    assert result.status == "finished", result.status
    return root / "run"
