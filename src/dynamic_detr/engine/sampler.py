"""A resumable, seeded sampler: same order and same augmentations for a given (seed, epoch), any rank count.

Each item is `(index, sample_seed)`: the dataset wrapper seeds the augmentation RNG with `sample_seed`, so a
sample's random flip/scale/crop depends only on (seed, epoch, index), not on worker count, prefetching or
where a run was interrupted. This is what makes resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled (or sequential) indices, sharded across `num_replicas` ranks, starting at `start` batches in.

    Like `DistributedSampler`, the index list is padded by wrapping so every rank gets the same count.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 pad: bool = True) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip the first `start` samples of this rank's share (resume)."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size and len(order) % self.num_replicas:
            extra = self.num_replicas - len(order) % self.num_replicas
            order += (order * (extra // len(order) + 1))[:extra]
        return order[self.rank::self.num_replicas]

    def per_rank(self) -> int:
        if self.pad:
            return -(-self.size // self.num_replicas)
        return len(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return max(self.per_rank() - self.start, 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for i in self._indices()[self.start:]:
            yield i, (base + i) % (2**63 - 1)


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset without transforms: `ds[(i, seed)]` applies `transforms` under a forked RNG seeded
    with `seed` (torch, which transforms.v2 uses). Plain integer keys use the ambient RNG."""

    def __init__(self, dataset, transforms) -> None:
        self.dataset = dataset
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            image, target = self.dataset[index]
            if self.transforms is None:
                return image, target
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.transforms(image, target)
        image, target = self.dataset[key]
        return (image, target) if self.transforms is None else self.transforms(image, target)
