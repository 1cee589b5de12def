"""A resumable, seeded sampler: same order and same augmentations for a given (seed, epoch), any rank count.

Each item is `(index, sample_seed)`: the dataset wrapper seeds the augmentation RNG with `sample_seed`, so a
sample's random flip/scale/crop depends only on (seed, epoch, index), not on worker count, prefetching or
where a run was interrupted. This is what makes resumed runs identical to uninterrupted ones. Given a
`progress` function at `set_epoch` (training), an item is `(index, sample_seed, progress)`: the fraction of the
run at which the sample is trained, for the augmentation policy (data/policy.py), computed here in the main
process from the sample's position in the epoch, so that DataLoader workers receive it with the item.

`GroupedBatchSampler` forms the training batches from a `ResumableSampler`'s order by aspect group
(`data.group_by_aspect`), with the same `set_epoch` / `per_rank` interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler


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
        self.progress: Callable[[int], float] | None = None

    def set_epoch(self, epoch: int, start: int = 0, progress: Callable[[int], float] | None = None) -> None:
        """Select the epoch's order; skip the first `start` samples of this rank's share (resume). `progress`
        maps a position in this rank's epoch (0 = its first sample) to the run's progress there; with it the
        items carry their progress."""
        self.epoch = epoch
        self.start = start
        self.progress = progress

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

    def __iter__(self) -> Iterator[tuple[int, int] | tuple[int, int, float]]:
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        progress = self.progress
        for position, i in enumerate(self._indices()[self.start:], start=self.start):
            if progress is None:
                yield i, (base + i) % (2**63 - 1)
            else:
                yield i, (base + i) % (2**63 - 1), progress(position)


class GroupedBatchSampler(BatchSampler):
    """Batches of one aspect group (portrait h > w / landscape), as detectron2's AspectRatioGroupedDataset and
    mmdetection's GroupSampler: less padding in the padded batch.

    Per rank: this rank's share of `sampler`'s epoch order (shuffled, sharded, padded, as without grouping) is
    dealt into one bucket per group, and a bucket is emitted as a batch when it holds `batch_size` items. The
    leftovers (fewer than `batch_size` per group) end the epoch: group 0's, then group 1's, cut into
    `batch_size` pieces, so at most one batch per epoch and rank mixes groups and every batch but the last is
    full: `ceil(per_rank / batch_size)` batches per rank, the same count on every rank (DDP) and without
    grouping, and nothing dropped. Deterministic per (seed, epoch, rank, world size, batch size);
    `set_epoch(epoch, start)` skips the first `start` samples of the epoch's batches (a resume; `start` is a
    whole number of batches when it comes from the trainer's `epoch_samples`).
    """

    def __init__(self, sampler: ResumableSampler, groups: Sequence[int] | np.ndarray, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        groups = np.asarray(groups, dtype=np.int8)  # one byte per index, shared by forked workers
        if len(groups) != sampler.size:
            raise ValueError(f"{len(groups)} group ids for a sampler over {sampler.size} indices")
        self.sampler = sampler
        self.groups = groups
        self.batch_size = batch_size
        self.drop_last = False
        self.start = 0
        self.progress: Callable[[int], float] | None = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int, start: int = 0, progress: Callable[[int], float] | None = None) -> None:
        """As `ResumableSampler.set_epoch`; positions count the samples of this rank's batches in their order."""
        self.sampler.set_epoch(epoch)  # the whole epoch's order: the batches depend on all of it
        self.start = start
        self.progress = progress

    def per_rank(self) -> int:
        return self.sampler.per_rank()

    def batches(self) -> list[list[tuple[int, int]]]:
        """The epoch's batches of this rank, from its first sample (`start` not applied)."""
        b = self.batch_size
        buckets: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        out = []
        groups = self.groups.tolist()
        for item in self.sampler:
            g = 1 if groups[item[0]] else 0
            bucket = buckets[g]
            bucket.append(item)
            if len(bucket) == b:
                out.append(bucket)
                buckets[g] = []
        rest = buckets[0] + buckets[1]
        out += [rest[k:k + b] for k in range(0, len(rest), b)]
        return out

    def __len__(self) -> int:
        n = self.per_rank()
        return 0 if self.start >= n else -(-n // self.batch_size) - self.start // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]] | list[tuple[int, int, float]]]:
        skip, position, progress = self.start, 0, self.progress
        for batch in self.batches():
            if progress is not None:
                batch = [(*item, progress(position + k)) for k, item in enumerate(batch)]
            position += len(batch)
            if skip >= len(batch):
                skip -= len(batch)
                continue
            yield batch[skip:]
            skip = 0


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset without transforms: `ds[(i, seed)]` (or `(i, seed, progress)`: a training sampler's
    item) is `sample(i, progress)`, run under a forked RNG seeded with `seed` (torch, which transforms.v2 uses).
    Plain integer keys use the ambient RNG. `sample` applies `transforms`; `data.policy.TrainSamples` makes it
    depend on the progress."""

    def __init__(self, dataset, transforms) -> None:
        self.dataset = dataset
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int, progress: float | None = None):
        image, target = self.dataset[index]
        return (image, target) if self.transforms is None else self.transforms(image, target)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed, *progress = key
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.sample(index, *progress)
        return self.sample(key)
