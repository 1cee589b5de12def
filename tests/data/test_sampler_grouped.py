"""GroupedBatchSampler: aspect-grouped training batches that cover the epoch once, keep one orientation per
batch (but at most one leftover batch), resume mid-epoch exactly and split across ranks without overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynamic_detr.config import Config
from dynamic_detr.data.collate import build_loader
from dynamic_detr.data.sampler import GroupedBatchSampler, ResumableSampler


def _groups(n: int, seed: int = 0, portrait: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < portrait).astype(np.int8)


def _sampler(n: int, batch: int, *, seed: int = 0, world: int = 1, rank: int = 0,
             groups: np.ndarray | None = None) -> GroupedBatchSampler:
    base = ResumableSampler(n, shuffle=True, seed=seed, num_replicas=world, rank=rank)
    return GroupedBatchSampler(base, _groups(n) if groups is None else groups, batch)


@pytest.mark.parametrize(("n", "batch"), [(0, 2), (1, 2), (7, 3), (50, 4), (101, 8), (5, 16)])
def test_every_index_once_all_batches_full_but_the_last(n, batch):
    s = _sampler(n, batch)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) == math.ceil(n / batch)
        assert sorted(i for b in batches for i, _ in b) == list(range(n))
        assert all(len(b) == batch for b in batches[:-1])
        assert not batches or 1 <= len(batches[-1]) <= batch


@pytest.mark.parametrize(("n", "batch", "portrait"), [(200, 4, 0.3), (97, 6, 0.5), (40, 8, 0.05), (30, 2, 1.0)])
def test_batches_are_single_orientation_but_one_leftover_batch(n, batch, portrait):
    groups = _groups(n, seed=3, portrait=portrait)
    s = _sampler(n, batch, groups=groups)
    for epoch in range(4):
        s.set_epoch(epoch)
        batches = list(s)
        mixed = [k for k, b in enumerate(batches) if len({int(groups[i]) for i, _ in b}) > 1]
        assert len(mixed) <= 1, mixed
        assert not mixed or mixed[0] >= len(batches) - 2  # the leftovers end the epoch
        # the leftovers: fewer than `batch` of each group, so at most two (partial) batches after the grouped ones
        tail = [b for b in batches if len(b) < batch or len({int(groups[i]) for i, _ in b}) > 1]
        assert len(tail) <= 2


def test_same_seeds_as_the_plain_sampler_and_deterministic():
    n, batch = 60, 4
    plain = ResumableSampler(n, shuffle=True, seed=5)
    plain.set_epoch(2)
    seeds = dict(plain)
    s = _sampler(n, batch, seed=5)
    s.set_epoch(2)
    first = list(s)
    assert all(seeds[i] == seed for b in first for i, seed in b)  # augmentation does not depend on grouping
    s.set_epoch(3)
    assert list(s) != first
    again = _sampler(n, batch, seed=5)
    again.set_epoch(2)
    assert list(again) == first


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_resume_mid_epoch_gives_identical_remaining_batches(batch):
    n = 43
    s = _sampler(n, batch)
    s.set_epoch(1)
    whole = list(s)
    for k in range(len(whole) + 1):
        done = sum(len(b) for b in whole[:k])  # what the trainer counts in `epoch_samples`
        resumed = _sampler(n, batch)  # a new process: nothing carried over but (epoch, samples done)
        resumed.set_epoch(1, start=done)
        assert list(resumed) == whole[k:]
        assert len(resumed) == len(whole) - k


def test_resume_inside_a_batch_serves_its_rest():
    s = _sampler(20, 4)
    s.set_epoch(0)
    whole = list(s)
    s.set_epoch(0, start=6)
    rest = list(s)
    assert rest[0] == whole[1][2:] and rest[1:] == whole[2:] and len(s) == len(rest)


@pytest.mark.parametrize(("n", "world"), [(48, 4), (50, 4), (9, 2), (3, 4)])
def test_ranks_split_the_epoch_without_overlap(n, world):
    batch = 3
    per_rank = []
    for rank in range(world):
        s = _sampler(n, batch, world=world, rank=rank)
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s) == math.ceil(s.per_rank() / batch)  # same count on every rank (DDP)
        per_rank.append([i for b in batches for i, _ in b])
    assert len({len(p) for p in per_rank}) == 1
    seen = [i for p in per_rank for i in p]
    assert sorted(set(seen)) == list(range(n))
    # only the wrap-around padding (as DistributedSampler's) repeats an index, and only when n % world != 0
    padding = -n % world
    assert len(seen) - len(set(seen)) == padding
    if padding == 0:
        for a in range(world):
            for b in range(a + 1, world):
                assert not set(per_rank[a]) & set(per_rank[b])


def test_rejects_mismatched_groups_and_bad_batch_size():
    with pytest.raises(ValueError, match="group ids"):
        GroupedBatchSampler(ResumableSampler(5, shuffle=True), [0, 1], 2)
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(ResumableSampler(5, shuffle=True), [0] * 5, 0)


class _Sized(torch.utils.data.Dataset):
    """Blank images of given (h, w); target image_id = index."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        h, w = self.sizes[i]
        return torch.zeros(3, h, w, dtype=torch.uint8), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0),
                                                         "image_id": i, "orig_size": torch.tensor([h, w])}


@pytest.mark.parametrize("workers", [0, 2])
def test_build_loader_serves_the_grouped_batches(workers):
    sizes = [(64, 96) if i % 3 else (96, 64) for i in range(23)]
    groups = np.array([h > w for h, w in sizes], dtype=np.int8)
    s = _sampler(len(sizes), 4, groups=groups)
    s.set_epoch(0)
    expected = [[i for i, _ in b] for b in s]
    loader = build_loader(_Sized(sizes), 4, train=True, num_workers=workers, sampler=s, size_divisibility=1)
    assert len(loader) == len(expected)
    got = [[t["image_id"] for t in batch.targets] for batch in loader]
    assert got == expected
    s.set_epoch(0, start=8)
    assert len(loader) == len(expected) - 2


def test_grouping_is_on_by_default():
    assert Config().data.group_by_aspect is True
