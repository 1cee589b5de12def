"""ResumableSampler / SeededDataset: sharding, resuming mid-epoch, per-sample seeded augmentation."""

from __future__ import annotations

import torch

from dynamic_detr.data.sampler import ResumableSampler, SeededDataset


def test_shards_cover_the_epoch_once():
    full = [i for i, _ in ResumableSampler(10, shuffle=True, seed=3)]
    shards = []
    for rank in range(3):
        s = ResumableSampler(10, shuffle=True, seed=3, num_replicas=3, rank=rank)
        shards.append([i for i, _ in s])
        assert len(shards[-1]) == len(s) == 4  # padded to equal length
    assert sorted({i for shard in shards for i in shard}) == list(range(10))
    assert sorted(full) == list(range(10))


def test_epochs_differ_and_repeat():
    s = ResumableSampler(20, shuffle=True, seed=0)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    assert list(s) == e0


def test_resume_skips_exactly():
    s = ResumableSampler(9, shuffle=True, seed=1)
    s.set_epoch(2)
    whole = list(s)
    s.set_epoch(2, start=5)
    assert list(s) == whole[5:] and len(s) == 4


def test_eval_sharding_without_padding():
    parts = [list(ResumableSampler(5, shuffle=False, pad=False, num_replicas=2, rank=r)) for r in range(2)]
    assert sorted(i for p in parts for i, _ in p) == [0, 1, 2, 3, 4]


def test_seeded_dataset_repeats_augmentation():
    class Ds:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(1), {}

    ds = SeededDataset(Ds(), lambda x, t: (x + torch.rand(1), t))
    a, b, c = ds[(0, 5)][0], ds[(0, 5)][0], ds[(0, 6)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
