"""One builder for datasets and loaders: training, in-run validation, `eval`, `data show` and the benchmarks read a
split and batch it the same way (docs/data.md)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Sampler

from ..config import DataConfig
from .coco import CocoDetection
from .collate import build_loader
from .layout import split_source
from .policy import TrainSamples
from .sampler import GroupedBatchSampler, ResumableSampler, SeededDataset
from .transforms import build_transforms


def load_split(root: str | Path, split: str, data: DataConfig) -> CocoDetection:
    """Split `split` of the dataset at `root`, found where the config's format and any-path fields say
    (`layout.split_source`), read and validated."""
    return CocoDetection(root, split, source=split_source(root, split, data))


def train_loader(dataset: CocoDetection, data: DataConfig, batch_size: int, seed: int, *, world_size: int = 1,
                 rank: int = 0) -> tuple[DataLoader, Sampler]:
    """The training loader of `dataset` and its sampler (`set_epoch(epoch, start=..., progress=...)` before each
    epoch): this rank's share of each epoch's shuffle, resumable mid-epoch; batches of one orientation when
    `data.group_by_aspect`; augmentations seeded per (seed, epoch, index), chosen by the augmentation policy
    (`policy.TrainSamples`: mosaics, warm-up, no-augmentation tail) from the progress the sampler attaches."""
    sampler: Sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed, num_replicas=world_size, rank=rank)
    if data.group_by_aspect:  # batches of one orientation; same set_epoch / per_rank, built per rank
        sampler = GroupedBatchSampler(sampler, dataset.aspect_groups(), batch_size)
    loader = build_loader(TrainSamples(dataset, data), batch_size, train=True,
                          num_workers=data.num_workers, size_divisibility=data.size_divisibility, sampler=sampler,
                          seed=seed)
    return loader, sampler


def eval_loader(dataset: CocoDetection, data: DataConfig, batch_size: int, *, num_workers: int | None = None,
                world_size: int = 1, rank: int = 0, seed: int = 0) -> DataLoader:
    """The evaluation loader of `dataset`: this rank's share in order, no padding (each image evaluated once), the
    eval resize of `build_transforms(train=False)`; `num_workers` defaults to `data.num_workers`."""
    sampler = ResumableSampler(len(dataset), shuffle=False, pad=False, num_replicas=world_size, rank=rank)
    workers = data.num_workers if num_workers is None else num_workers
    return build_loader(SeededDataset(dataset, build_transforms(data, train=False)), batch_size, train=False,
                        num_workers=workers, size_divisibility=data.size_divisibility, sampler=sampler, seed=seed)
