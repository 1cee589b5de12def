"""Inference on image files: stream, batch, postprocess, draw, and write per-file JSON (memory stays bounded).

Bad inputs (files that do not decode, images over `records.MAX_ASPECT_RATIO`:1) are reported and skipped; an
output folder that holds any input is refused, so drawn copies never overwrite (or mix with) the inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torchvision import tv_tensors

from ..config import Config
from ..errors import UserError
from .visualize import draw_detections

if TYPE_CHECKING:
    from ..data.collate import Batch


class Predictor:
    """Wraps a model in eval mode with the config's eval transform."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: torch.device) -> None:
        from ..data.transforms import build_transforms

        self.model = model.eval()
        self.cfg = cfg
        self.device = device
        self.transform = build_transforms(cfg.data, train=False)
        self.names = dict(zip(cfg.model.category_ids, cfg.model.class_names, strict=False))

    def batch(self, images: list[torch.Tensor]) -> Batch:
        """uint8 [3, H, W] images -> the model's input on `self.device`: eval transform, padding, masks."""
        from ..data.collate import collate

        samples = []
        for i, img in enumerate(images):
            h, w = img.shape[-2:]
            target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
                      "labels": torch.zeros(0, dtype=torch.int64), "image_id": i,
                      "orig_size": torch.tensor([h, w])}
            samples.append(self.transform(tv_tensors.Image(img), target))
        return collate(samples, self.cfg.data.size_divisibility).to(self.device)

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """uint8 [3, H, W] images -> per image `boxes` (xyxy original pixels), `scores`, `labels` (category ids)."""
        batch = self.batch(images)
        outputs = self.model(batch.images, batch.masks)
        orig = torch.stack([t["orig_size"] for t in batch.targets]).to(self.device)
        return [{k: v.cpu() for k, v in r.items()} for r in self.model.postprocess(outputs, orig)]

    def _read(self, files: list[Path], failed: list[str]) -> Iterator[tuple[Path, torch.Tensor]]:
        from ..data.image_io import read_image
        from ..data.records import aspect_problem

        for path in files:
            try:
                image = read_image(path)
            except UserError as e:
                failed.append(str(e))
                continue
            except MemoryError:
                failed.append(f"{path}: image too large to decode in memory")
                continue
            problem = aspect_problem(int(image.shape[-1]), int(image.shape[-2]))
            if problem:
                failed.append(f"{path}: {problem}; skipped")
                continue
            yield path, torch.Tensor.as_subclass(image, torch.Tensor)

    def predict_files(self, files: list[Path], out: Path, threshold: float,
                      batch_size: int = 4) -> tuple[int, int, list[str]]:
        """Write `out/<stem>.png` (drawn) and `out/<stem>.json` per file; returns (images done, detections
        written, messages for skipped files). Only `batch_size` decoded images are held at a time.
        Raises UserError when `out` holds any of `files` (`check_output_folder`)."""
        from PIL import Image

        check_output_folder(files, out)
        failed: list[str] = []
        used: set[str] = set()
        n_ok = n_dets = 0
        chunk: list[tuple[Path, torch.Tensor]] = []

        def flush() -> None:
            nonlocal n_ok, n_dets
            results = self([img for _, img in chunk])
            for (path, img), res in zip(chunk, results, strict=True):
                stem = _unique(path.stem, used)
                keep = res["scores"] >= threshold
                dets = [_detection(b, s, c, self.names) for b, s, c in
                        zip(res["boxes"][keep], res["scores"][keep], res["labels"][keep], strict=True)]
                drawn = draw_detections(img, res["boxes"], res["scores"], res["labels"], self.names, threshold)
                Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy()).save(out / f"{stem}.png")
                record: dict[str, Any] = {"file": str(path), "height": int(img.shape[-2]),
                                          "width": int(img.shape[-1]), "threshold": threshold, "detections": dets}
                (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
                n_ok += 1
                n_dets += len(dets)
            chunk.clear()

        for item in self._read(files, failed):
            chunk.append(item)
            if len(chunk) == batch_size:
                flush()
        if chunk:
            flush()
        return n_ok, n_dets, failed


def check_output_folder(files: list[Path], out: Path) -> None:
    """Refuse an output folder that holds any input file: `<stem>.png` drawings would overwrite inputs of
    that name, and a later run over the folder would read the drawings back as inputs."""
    if not out.is_dir():
        return  # a folder that does not exist yet holds nothing
    seen: set[Path] = set()
    for path in files:
        for parent in (path.parent, path.resolve().parent):  # as given, and behind symlinks
            if parent in seen:
                continue
            seen.add(parent)
            try:
                same = parent.samefile(out)  # also through symlinks and case-insensitive names
            except OSError:
                continue
            if same:
                raise UserError(f"{out}: the output folder holds the input {path}; drawn copies would overwrite "
                                "or mix with the inputs: choose another --out")


def _detection(box: torch.Tensor, score: torch.Tensor, label: torch.Tensor, names: dict[int, str]) -> dict:
    cat = int(label)
    return {"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "category_id": cat,
            "category": names.get(cat, str(cat))}


def _unique(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        name = f"{stem}_{k}"
        k += 1
    used.add(name)
    return name
