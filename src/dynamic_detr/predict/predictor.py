"""Inference on images: the model in eval mode behind its eval transform; streamed inputs (images, video frames:
`data.sources`) batched, drawn and written (`predict_writer`), memory bounded.

Bad inputs (files that do not decode, images over `validate.MAX_ASPECT_RATIO`:1) are reported and skipped; an
output folder that holds any input is refused, so drawn copies never overwrite (or mix with) the inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torchvision import tv_tensors

from ..config import Config
from ..errors import UserError
from .writer import PredictSummary, write_predictions

if TYPE_CHECKING:
    from ..data.collate import Batch
    from ..data.sources import Item, Skipped


class Predictor:
    """Wraps a model in eval mode with the config's eval transform."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: torch.device) -> None:
        from ..data.transforms import build_transforms

        self.model = model.eval()
        self.cfg = cfg
        self.device = device
        self.transform = build_transforms(cfg.data, train=False)
        self.names = cfg.model.names()

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

    def predict_items(self, items: Iterable[Item | Skipped], out: Path, threshold: float,
                      batch_size: int = 4) -> PredictSummary:
        """Detect, draw and write every item of `data.sources.iter_items` (`predict_writer.write_predictions`)."""
        return write_predictions(self, self.names, items, out, threshold, batch_size)

    def predict_files(self, files: list[Path], out: Path, threshold: float,
                      batch_size: int = 4) -> tuple[int, int, list[str]]:
        """Write `out/<stem>.png` (drawn) and `out/<stem>.json` per file; returns (images done, detections
        written, messages for skipped files). Only `batch_size` decoded images are held at a time.
        Raises UserError when `out` holds any of `files` (`check_output_folder`)."""
        from ..data.sources import Source, iter_items, unique_name

        check_output_folder(files, out)
        used: set[str] = set()
        sources = (Source("image", str(path), unique_name(path.stem, used)) for path in files)
        summary = self.predict_items(iter_items(sources), out, threshold, batch_size)
        return summary.images, summary.detections, summary.failed


def check_output_folder(files: list[Path], out: Path, nested: bool = False) -> None:
    """Refuse an output folder that holds any input file: `<stem>.png` drawings would overwrite inputs of
    that name, and a later run over the folder would read the drawings back as inputs. `nested`: also an
    input in any sub-folder of it (`predict` mirrors sub-folders into the output folder)."""
    if not out.is_dir():
        return  # a folder that does not exist yet holds nothing
    seen: set[Path] = set()
    for path in files:
        parents = [path.parent, path.resolve().parent]  # as given, and behind symlinks
        if nested:
            parents += [*path.parent.parents, *path.resolve().parent.parents]
        for parent in parents:
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
