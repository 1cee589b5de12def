"""`dynamic-detr data show`: look at a dataset as the model is shown it.

* samples: N images with their ground-truth boxes and class names drawn. With `augment`, after the training
  augmentations as the trainer applies them at full strength (`policy.TrainSamples` without a progress: the
  paper's recipe, and Dense O2O's mosaics at `data.mosaic_prob`; not the warm-up's or the tail's lighter
  recipes) under the per-sample seed of `ResumableSampler` (`data/sampler.py`): with the augmentation policy
  off (the default), the N pictures are the first N samples of epoch 0 of a one-process run with
  `train.seed = seed`. A crop, flip or mosaic that moves the image but not the boxes shows here. Without
  `augment` the same N images as read from disk.
* summary: objects per class, object size (sqrt of the COCO `area`, px, with COCO's small / medium / large
  boundaries at 32 and 96, as COCO AP and `data check` count them) and boxes per image. Counts include crowd
  annotations, as `data check`'s do (training ignores them, DETR).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig
from ..visualize import draw_ground_truth
from .coco import CocoDetection
from .policy import TrainSamples
from .records import Records
from .sampler import ResumableSampler, SeededDataset

SIZE_BOUNDS = (32, 96)
"""COCO's small / medium / large boundaries on sqrt(area), px."""


@dataclass
class DatasetStats:
    """What the summary plots: per class (category order) its name and object count, every object's
    sqrt(COCO area) in px, every image's number of objects (image order)."""

    classes: list[str]
    objects_per_class: list[int]
    sqrt_areas: list[float]
    boxes_per_image: list[int]

    @property
    def num_objects(self) -> int:
        return sum(self.objects_per_class)

    def size_counts(self) -> tuple[int, int, int]:
        """(small, medium, large) object counts by COCO's area rule."""
        lo, hi = SIZE_BOUNDS
        small = sum(s < lo for s in self.sqrt_areas)
        medium = sum(lo <= s < hi for s in self.sqrt_areas)
        return small, medium, len(self.sqrt_areas) - small - medium


def dataset_stats(records: Records) -> DatasetStats:
    """Statistics over the images and annotations the dataset serves (crowd ones included)."""
    index = {c["id"]: i for i, c in enumerate(records.categories)}
    per_class = [0] * len(index)
    sqrt_areas: list[float] = []
    per_image: list[int] = []
    for i in range(len(records)):
        anns = records.annotations(i)
        per_image.append(len(anns))
        for a in anns:
            per_class[index[a["category_id"]]] += 1
            sqrt_areas.append(math.sqrt(max(float(a["area"]), 0.0)))
    return DatasetStats([c["name"] for c in records.categories], per_class, sqrt_areas, per_image)


def show_samples(root: Path, split: str, out: Path, n: int, seed: int, augment: bool,
                 data_cfg: DataConfig, dataset: CocoDetection | None = None) -> list[Path]:
    """Write `out/<k>_<image stem>.png` for the first `n` samples of epoch 0 (`ResumableSampler` order with
    `seed`), ground truth drawn, augmented as in training when `augment`. Returns the written paths."""
    if dataset is None:  # not `or`: an empty dataset is falsy
        from .loaders import load_split

        dataset = load_split(root, split, data_cfg)
    view = TrainSamples(dataset, data_cfg) if augment else SeededDataset(dataset, None)
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed)
    sampler.set_epoch(0)
    records = dataset.records
    stems = {records.image_id(i): Path(records.file_name(i)).stem for i in range(len(records))}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, key in enumerate(itertools.islice(iter(sampler), n)):
        image, target = view[key]
        drawn = draw_ground_truth(to_uint8(image), torch.Tensor.as_subclass(target["boxes"], torch.Tensor),
                                  target["labels"], dataset.class_names)
        path = out / f"{k:03d}_{stems.get(int(target['image_id']), target['image_id'])}.png"
        save_png(drawn, path)
        written.append(path)
    return written


def plot_summary(stats: DatasetStats, path: Path, title: str = "") -> None:
    """One PNG (1500 x 450 px): objects per class (bars), object size histogram with the COCO boundaries,
    boxes per image histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cls, ax_size, ax_img) = plt.subplots(1, 3, figsize=(15, 4.5))
    x = range(len(stats.classes))
    ax_cls.bar(x, stats.objects_per_class, color="#4363d8")
    many = len(stats.classes) > 6
    ax_cls.set_xticks(list(x), stats.classes, rotation=45 if many else 0, ha="right" if many else "center",
                      fontsize=8 if len(stats.classes) > 20 else 10)
    ax_cls.set_ylabel("objects")
    ax_cls.set_title(f"objects per class ({stats.num_objects} in all)")

    top = max([*stats.sqrt_areas, SIZE_BOUNDS[1] * 1.1])
    ax_size.hist(stats.sqrt_areas, bins=min(60, max(10, len(stats.sqrt_areas) // 10)), range=(0, top),
                 color="#3cb44b")
    for bound in SIZE_BOUNDS:
        ax_size.axvline(bound, color="k", linestyle="--", linewidth=1)
    small, medium, large = stats.size_counts()
    total = max(len(stats.sqrt_areas), 1)
    ax_size.set_title(f"object size: small {100 * small / total:.0f}%, medium {100 * medium / total:.0f}%, "
                      f"large {100 * large / total:.0f}%")
    ax_size.set_xlabel("sqrt(area) px (COCO boundaries 32, 96)")
    ax_size.set_ylabel("objects")

    most = max([*stats.boxes_per_image, 1])
    ax_img.hist(stats.boxes_per_image, bins=[b - 0.5 for b in range(most + 2)], color="#f58231")
    ax_img.set_xlabel("objects per image")
    ax_img.set_ylabel("images")
    ax_img.set_title(f"{len(stats.boxes_per_image)} images, {sum(n == 0 for n in stats.boxes_per_image)} empty")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A plain uint8 [3, H, W] tensor from a uint8 or float-in-[0, 1] image (tv_tensors unwrapped)."""
    image = torch.Tensor.as_subclass(image, torch.Tensor)
    if image.dtype == torch.uint8:
        return image
    return (image.float() * 255).round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: Path) -> None:
    """uint8 [3, H, W] -> PNG."""
    from PIL import Image

    Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy()).save(path)
