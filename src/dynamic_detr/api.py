"""The Python face of the package, on top of everything else: load a trained model, save it, detect objects.

    import dynamic_detr
    model = dynamic_detr.from_pretrained("runs/mine")        # best.pt, EMA weights when present
    dynamic_detr.save_pretrained(model, "models/mine")      # config.json + model.safetensors
    results = dynamic_detr.detect(model, ["a.jpg", Image.open("b.png")], threshold=0.5)
    results = dynamic_detr.detect(model, "aerial.png", tile=512)              # tiled: small objects, large image
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .checkpoint import save_weights
from .config import Config
from .data.image_io import read_image
from .errors import UserError
from .fileio import atomic_write_text
from .model.detector import DynamicDETR, modes_kept
from .model.loading import load_model
from .predict.predictor import Predictor
from .predict.tiling import TiledPredictor, TileOptions, as_tile_options


def from_pretrained(path: str | Path, device: torch.device | str = "cpu") -> DynamicDETR:
    """A model in eval mode from a `save_pretrained` directory, a run folder, a training checkpoint (EMA weights
    when present) or a weights .safetensors file; raises CheckpointError (one line) on a bad file."""
    return load_model(path, device)[0]


def save_pretrained(model: DynamicDETR, path: str | Path) -> None:
    """Write the directory `path`: `config.json` (the full config) and `model.safetensors` (weights, the config
    again in its metadata), each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    text = json.dumps((model.run_config or Config(model=model.cfg)).to_dict(), indent=1)
    save_weights(path / "model.safetensors", model.state_dict(), {"config": text})
    atomic_write_text(path / "config.json", text)


@torch.no_grad()
def detect(model: DynamicDETR, images: Any, threshold: float = 0.5, batch_size: int = 8,
           tile: TileOptions | int | None = None) -> list[dict[str, Any]]:
    """Detect objects; the config's eval transform (resize) is applied, `batch_size` images at a time. Runs in eval
    mode and leaves every module's training mode as it was (a check inside a training loop).

    Args:
        images: one image or a list of them; each a PIL image, a numpy HWC (or HW) uint8 array, a tensor
            [3, H, W] (uint8, or float in [0, 1]) or an image file path.
        threshold: minimum score kept.
        tile: tiled inference (docs/tiling.md): `TileOptions`, or a tile side in pixels (the other options at
            their defaults). Each image is cut into overlapping tiles at its original resolution, `batch_size`
            tiles at a time go through the model, and the detections are merged. None: the whole image.
    Returns:
        per image {"boxes": [n, 4] xyxy in original pixels, "scores": [n], "labels": [n] dataset category ids,
        "names": n category names}, highest score first.
    """
    options = as_tile_options(tile)
    items = images if isinstance(images, list | tuple) else [images]
    device = next(model.parameters()).device
    results = []
    with modes_kept(model):
        predictor = Predictor(model, model.run_config or Config(model=model.cfg), device)
        detect = predictor if options is None else TiledPredictor(predictor, options, batch_size, min_score=threshold)
        step = batch_size if options is None else 1  # tiled: one image at a time, its tiles batched
        for start in range(0, len(items), step):
            for res in detect([as_image_tensor(x) for x in items[start:start + step]]):
                keep = res["scores"] >= threshold
                res = {k: v[keep] for k, v in res.items()}
                res["names"] = [predictor.names.get(int(c), str(int(c))) for c in res["labels"]]
                results.append(res)
    return results


def as_image_tensor(image: Any) -> Tensor:
    """PIL image, numpy HWC / HW array, tensor [3, H, W] or path -> tensor [3, H, W] (uint8 or float)."""
    if isinstance(image, str | Path):
        return torch.Tensor.as_subclass(read_image(Path(image)), Tensor)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UserError(f"numpy image must be HxWx3 (or HxW), got shape {image.shape}")
        return torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)  # a copy: arrays may be read-only
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UserError(f"tensor image must be [3, H, W], got {list(image.shape)}")
        return image.cpu()
    raise UserError(f"cannot read an image from a {type(image).__name__} (PIL image, numpy array, tensor or path)")
