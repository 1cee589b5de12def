"""The augmentation policy: which augmentations a training sample gets, by how far into the run it is trained.

DEIM's four stages (its `stop_epoch` policy with three epochs), here as fractions of the run (`DataConfig`):

    [0, aug_start)                     warm-up: no strong augmentation ("plain": flip, multi-scale resize)
    [aug_start, mosaic_stop)           a mosaic with probability `mosaic_prob` (then "plain"), else "full"
    [mosaic_stop, aug_stop)            "full" (the paper's recipe: flip, multi-scale resize or resize-crop)
    [aug_stop, 1]                      the no-augmentation tail ("tail": flip, the eval resize)

(RT-DETR's `stop_epoch` is the last stage alone.) The defaults (mosaic_prob 0, aug_start 0, aug_stop 1) make
every sample "full": the paper's recipe. The "strong" augmentations are the mosaic and the crop branch (DETR's
resize-crop, what DEIM's RandomIoUCrop / RandomZoomOut are to it); the tail also stops the multi-scale resize,
as DEIM's and RT-DETR's collate stop theirs at the same epoch, so the last steps train at the eval size.

The progress of a sample is the fraction of the run done at the optimizer step it is trained in: the training
sampler attaches it to each item (`data.sampler.ResumableSampler.set_epoch(progress=...)`), computed in the main
process, so it reaches every DataLoader worker (persistent ones too) with the item itself, and a resumed run
gives each sample the progress the uninterrupted run gave it (epoch budgets; with a time budget the fraction of
the minutes is read when the item is drawn, as the lr reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import DataConfig
from .mosaic import Mosaic
from .sampler import SeededDataset
from .transforms import build_transforms


@dataclass(frozen=True)
class AugmentPolicy:
    """The stage of a training sample by its progress (the fraction of the run done when it is trained)."""

    mosaic_prob: float = 0.0
    aug_start: float = 0.0
    mosaic_stop: float = 1.0
    aug_stop: float = 1.0

    @classmethod
    def from_config(cls, d: DataConfig) -> AugmentPolicy:
        return cls(d.mosaic_prob, d.aug_start, d.mosaic_stop, d.aug_stop)

    def stage(self, progress: float | None) -> str:
        """"plain" (warm-up), "full" or "tail" (never with `aug_stop` 1: off, though a time budget's progress
        reaches 1); None (no progress known: `data show`, a plain DataLoader): "full"."""
        if progress is None:
            return "full"
        if progress < self.aug_start:
            return "plain"
        return "tail" if self.aug_stop < 1.0 and progress >= self.aug_stop else "full"

    def mosaic_chance(self, progress: float | None) -> float:
        """The probability of a mosaic at `progress`: `mosaic_prob` inside [aug_start, min(mosaic_stop, aug_stop)),
        0 outside; None: `mosaic_prob`."""
        if progress is None:
            return self.mosaic_prob
        inside = self.aug_start <= progress < min(self.mosaic_stop, self.aug_stop)
        return self.mosaic_prob if inside else 0.0


class TrainSamples(SeededDataset):
    """The training samples of `dataset` (a `CocoDetection` without transforms) under the augmentation policy of
    `cfg`: `ds[(index, seed, progress)]` is sample `index` augmented for `progress` under torch's RNG seeded
    with `seed` (`(index, seed)` and plain integers: progress unknown, the "full" stage with mosaics at
    `mosaic_prob`). A mosaic draws its three other images uniformly from the whole dataset (DEIM: with
    replacement, the sample itself possible)."""

    def __init__(self, dataset: Any, cfg: DataConfig) -> None:
        super().__init__(dataset, build_transforms(cfg, train=True))
        self.policy = AugmentPolicy.from_config(cfg)
        self.stages = {"full": self.transforms, "plain": build_transforms(cfg, train=True, stage="plain"),
                       "tail": build_transforms(cfg, train=True, stage="tail")}
        self.mosaic = Mosaic(cfg.mosaic_size, cfg.mosaic_degrees, cfg.mosaic_translate, cfg.mosaic_scale)

    def sample(self, index: int, progress: float | None = None) -> tuple[Any, dict[str, Any]]:
        stage = self.policy.stage(progress)
        chance = self.policy.mosaic_chance(progress)
        if chance > 0 and float(torch.rand(())) < chance:
            others = torch.randint(len(self.dataset), (3,)).tolist()
            image, target = self.mosaic([self.dataset[i] for i in (index, *others)])
            return self.stages["plain"](image, target)
        image, target = self.dataset[index]
        return self.stages[stage](image, target)
