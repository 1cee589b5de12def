"""Batching: pad images to a common size, DETR-style padding masks, boxes in the model's frame."""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from torchvision.ops import box_convert


@dataclass
class Batch:
    """images float [B, 3, H, W] (zero padding bottom / right); masks bool [B, H, W] (True = padding);
    targets: per image `boxes` float [N, 4] cxcywh normalised by the image's own unpadded size, `labels`
    int64 [N], `image_id` int, `orig_size` int64 [2] (h, w of the file), `size` int64 [2] (h, w unpadded).
    unreadable: (image id, message) of the images the dataset could not serve while building this batch (see
    `collate`); in evaluation their stand-ins are dropped, so a batch may hold fewer images, or none."""

    images: torch.Tensor
    masks: torch.Tensor
    targets: list[dict[str, Any]]
    unreadable: list[tuple[int, str]] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        def move(v: Any) -> Any:
            return v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v

        return Batch(images=move(self.images), masks=move(self.masks),
                     targets=[{k: move(v) for k, v in t.items()} for t in self.targets], unreadable=self.unreadable)

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        def pin(v: Any) -> Any:
            return v.pin_memory() if torch.is_tensor(v) else v

        return Batch(images=pin(self.images), masks=pin(self.masks),
                     targets=[{k: pin(v) for k, v in t.items()} for t in self.targets], unreadable=self.unreadable)

    def __len__(self) -> int:
        return self.images.shape[0]


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple if multiple > 1 else x


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]], size_divisibility: int = 32,
            drop_unreadable: bool = False) -> Batch:
    """`(image, target)` pairs after transforms (image [3, h, w] float in [0, 1], or uint8 which is scaled;
    target `boxes` XYXY absolute in that image) -> `Batch`.

    A sample whose target has `unreadable` (`CocoDetection`'s stand-in for undecodable images) is kept in
    training (it carries its own target) and dropped with `drop_unreadable` (evaluation: it is served again
    at its own index, and scoring it twice would be wrong); either way the failures go to `Batch.unreadable`.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    unreadable = [(int(u[0]), str(u[1])) for _, t in batch for u in t.get("unreadable", ())]
    if drop_unreadable:
        batch = [(img, t) for img, t in batch if not t.get("unreadable")]
        if not batch:  # every sample stood in for a failed image
            return Batch(images=torch.zeros(0, 3, 0, 0), masks=torch.zeros(0, 0, 0, dtype=torch.bool),
                         targets=[], unreadable=unreadable)
    images = [torch.Tensor.as_subclass(img, torch.Tensor) for img, _ in batch]
    images = [img.float().div_(255) if img.dtype == torch.uint8 else img for img in images]
    h_max = _round_up(max(img.shape[-2] for img in images), size_divisibility)
    w_max = _round_up(max(img.shape[-1] for img in images), size_divisibility)
    out = images[0].new_zeros((len(images), images[0].shape[0], h_max, w_max))
    masks = torch.ones((len(images), h_max, w_max), dtype=torch.bool, device=out.device)
    targets = []
    for i, (img, (_, t)) in enumerate(zip(images, batch, strict=True)):
        h, w = img.shape[-2:]
        out[i, :, :h, :w].copy_(img)
        masks[i, :h, :w] = False
        boxes = torch.Tensor.as_subclass(t["boxes"], torch.Tensor).float().reshape(-1, 4)
        scale = boxes.new_tensor([w, h, w, h])
        targets.append({
            "boxes": box_convert(boxes, "xyxy", "cxcywh") / scale,
            "labels": torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1),
            "image_id": int(t["image_id"]),
            "orig_size": torch.as_tensor(t["orig_size"], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
        })
    return Batch(images=out, masks=masks, targets=targets, unreadable=unreadable)


def worker_init(worker_id: int) -> None:
    """`worker_init_fn` of `build_loader`: `gc.freeze()` what a forked worker inherited, so that its garbage
    collections never walk the parent's objects (a collection writes to every object it visits, which copies
    their memory pages into the worker: copy-on-write growth that is not the worker's own)."""
    gc.freeze()


def build_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0,
                 size_divisibility: int = 32, sampler: Sampler | None = None, seed: int = 0) -> DataLoader:
    """A DataLoader of `Batch`es: shuffled when `train` and no `sampler`; seeded generator; persistent
    workers when `num_workers > 0` (started with `worker_init`); pinned memory when CUDA is available;
    drop_last=False. Not `train`: stand-ins for undecodable images are dropped (`collate(drop_unreadable=True)`).
    A `BatchSampler` (e.g.
    `data.sampler.GroupedBatchSampler`) forms the batches itself: `batch_size` is then its own."""
    batches = isinstance(sampler, BatchSampler)
    return DataLoader(
        dataset,
        batch_size=1 if batches else batch_size,  # 1: DataLoader's default, required with batch_sampler
        shuffle=train and sampler is None,
        sampler=None if batches else sampler,
        batch_sampler=sampler if batches else None,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility, drop_unreadable=not train),
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        persistent_workers=num_workers > 0,
        worker_init_fn=worker_init,
        generator=torch.Generator().manual_seed(seed),
    )
