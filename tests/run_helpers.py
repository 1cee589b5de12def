"""Engine test helpers: an easy COCO dataset (big shapes of two classes with non-contiguous category ids), a tiny
config, non-finite injection into a trainer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from dynamic_detr.api import save_pretrained
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


def inject_nonfinite(trainer, kind: str, due: Callable[[int], bool]) -> None:
    """Make the n-th training forward (or backward) of `trainer` non-finite when `due(n)` (n = 1, 2, ...).

    "loss": a NaN loss. "activation": NaN class logits of the last decoder stage; they also go through a
    BatchNorm added to the model as `nan_probe`, whose running statistics take the NaN as a real BatchNorm's
    would (NaN images or features cannot be used here: NaN boxes break the RoI level assignment).
    "gradient": an inf gradient on the model's first parameter.
    """
    calls = {"n": 0}

    def fire() -> bool:
        calls["n"] += 1
        return due(calls["n"])

    nan = float("nan")
    if kind == "loss":
        def nan_loss(module, args, out):
            return {**out, "loss": out["loss"] * nan} if fire() else None

        trainer.criterion.register_forward_hook(nan_loss)
    elif kind == "activation":
        probe = torch.nn.BatchNorm1d(1, affine=False).to(trainer.device)
        trainer.model.add_module("nan_probe", probe)

        def nan_logits(module, args, out):
            if not module.training:
                return None
            last = out["stages"][-1]
            logits = last["logits"] * nan if fire() else last["logits"]
            probe(logits.detach().float().reshape(-1, 1))
            last["logits"] = out["logits"] = logits
            return out

        trainer.model.register_forward_hook(nan_logits)
    elif kind == "gradient":
        param = next(p for p in trainer.model.parameters() if p.requires_grad)
        param.register_hook(lambda g: torch.full_like(g, float("inf")) if fire() else g)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def nonfinite_tensors(obj: Any, where: str = "") -> list[str]:
    """Paths of the floating-point tensors in `obj` (nested dicts / lists / tuples) that hold NaN or inf."""
    if torch.is_tensor(obj):
        return [where] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_tensors(v, f"{where}.{k}")]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in nonfinite_tensors(v, f"{where}[{i}]")]
    return []


def save_untrained_tiny(out: Path) -> Path:
    """An untrained cpu_tiny model (2 classes, category ids 3 and 7) saved as a model folder at `out`: for tests
    of what `predict` writes, not of what it finds."""
    from dynamic_detr.model import DynamicDETR

    cfg = get_preset("cpu_tiny")
    cfg.model.num_classes, cfg.model.category_ids, cfg.model.class_names = 2, [3, 7], ["square", "disc"]
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model)
    model.run_config = cfg
    save_pretrained(model, out)
    return out
