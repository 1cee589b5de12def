"""The augmentation policy (DEIM's warm-up / mosaic window / no-augmentation tail, as fractions of the run): the
stage of each progress, the samples it makes, the progress the training sampler attaches to each item (resumed
runs included), and that it reaches a persistent DataLoader worker."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from dynamic_detr.config import DataConfig
from dynamic_detr.data.collate import build_loader
from dynamic_detr.data.policy import AugmentPolicy, TrainSamples
from dynamic_detr.data.sampler import GroupedBatchSampler, ResumableSampler


class Squares(torch.utils.data.Dataset):
    """`n` images of 30 x 60 px, each with one 20 x 20 px box (label = index): a module-level class, so that a
    DataLoader worker can be given it under any start method."""

    def __init__(self, n: int = 4) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image = torch.zeros(3, 30, 60, dtype=torch.uint8)
        image[:, 5:25, 10:30] = 200
        boxes = tv_tensors.BoundingBoxes([[10.0, 5.0, 30.0, 25.0]], format="XYXY", canvas_size=(30, 60))
        return tv_tensors.Image(image), {"boxes": boxes, "labels": torch.tensor([i]), "image_id": i,
                                         "orig_size": torch.tensor([30, 60])}


def policy_config(**kw) -> DataConfig:
    """Each stage shows in the output: "full" always crops (a square, 48 x 48), "plain" is the whole image at
    short side 48 (48 x 96), "tail" at the eval size (64 x 128), a mosaic holds 4 boxes (no affine motion)."""
    base = dict(train_short_sides=[48], train_max_size=200, crop_prob=1.0, crop_resize_sides=[40],
                crop_size=[24, 24], eval_short_side=64, eval_max_size=200, hflip_prob=0.0,
                mosaic_prob=1.0, mosaic_size=16, mosaic_degrees=0.0, mosaic_translate=0.0, mosaic_scale=[1.0, 1.0],
                aug_start=0.1, mosaic_stop=0.5, aug_stop=0.8)
    return DataConfig(**{**base, **kw})


def kind(sample) -> str:
    image, target = sample
    if len(target["labels"]) == 4:
        return "mosaic"
    return {(48, 48): "full", (48, 96): "plain", (64, 128): "tail"}[tuple(image.shape[-2:])]


@pytest.mark.parametrize("progress, stage, chance", [
    (0.0, "plain", 0.0), (0.099, "plain", 0.0),  # warm-up: no strong augmentation
    (0.1, "full", 0.5), (0.49, "full", 0.5),  # the mosaic window
    (0.5, "full", 0.0), (0.79, "full", 0.0),  # the paper's recipe, no more mosaics
    (0.8, "tail", 0.0), (1.0, "tail", 0.0),  # the no-augmentation tail
    (None, "full", 0.5),  # no progress known (data show, a plain DataLoader): every augmentation on
])
def test_the_stage_of_each_progress(progress, stage, chance):
    policy = AugmentPolicy(mosaic_prob=0.5, aug_start=0.1, mosaic_stop=0.5, aug_stop=0.8)
    assert (policy.stage(progress), policy.mosaic_chance(progress)) == (stage, chance)


def test_the_tail_ends_the_mosaic_window_and_the_defaults_are_the_papers_recipe():
    assert AugmentPolicy(mosaic_prob=1.0, mosaic_stop=1.0, aug_stop=0.6).mosaic_chance(0.7) == 0.0
    paper = AugmentPolicy.from_config(DataConfig())
    assert {paper.stage(p) for p in (0.0, 0.5, 1.0)} == {"full"} and paper.mosaic_chance(0.3) == 0.0


def test_train_samples_follow_the_policy_and_are_seeded():
    ds = TrainSamples(Squares(), policy_config())
    assert [kind(ds[(1, 7, p)]) for p in (0.0, 0.2, 0.6, 0.9)] == ["plain", "mosaic", "full", "tail"]
    assert kind(ds[(1, 7)]) == "mosaic" and kind(ds[1]) == "mosaic"  # no progress: "full" with mosaics
    # a mosaic is sample 1 plus three drawn by the seed: the same seed, the same four images
    a, b, c = (ds[(1, seed, 0.2)][1]["labels"].tolist() for seed in (7, 7, 8))
    assert a == b and a[0] == 1 and a != c
    half = TrainSamples(Squares(), policy_config(mosaic_prob=0.5))
    kinds = [kind(half[(0, seed, 0.2)]) for seed in range(40)]
    assert 8 <= kinds.count("mosaic") <= 32 and set(kinds) == {"mosaic", "full"}


def test_the_sampler_attaches_the_progress_of_each_position_and_resumes_at_the_same():
    progress = [i / 10 for i in range(10)].__getitem__
    s = ResumableSampler(10, shuffle=True, seed=3)
    s.set_epoch(2, progress=progress)
    items = list(s)
    assert [p for _, _, p in items] == [i / 10 for i in range(10)]
    s.set_epoch(2, start=6, progress=progress)
    assert list(s) == items[6:]  # a resume: the same (index, seed, progress) items
    s.set_epoch(2)
    assert list(s) == [(i, seed) for i, seed, _ in items]  # without: the plain items


def test_grouped_batches_carry_the_progress_of_their_positions():
    """The positions of a grouped epoch are those of its batches (the order the steps train them in)."""
    inner = ResumableSampler(10, shuffle=True, seed=0)
    s = GroupedBatchSampler(inner, [i % 2 for i in range(10)], batch_size=3)
    s.set_epoch(1, progress=lambda position: position / 100)
    batches = list(s)
    assert [p for b in batches for _, _, p in b] == [k / 100 for k in range(10)]
    s.set_epoch(1, start=6, progress=lambda position: position / 100)
    assert list(s) == batches[2:]


def test_the_policy_reaches_a_persistent_worker():
    """num_workers=1 (persistent, forked once): the worker's copy of the dataset never changes, and each epoch's
    progress still switches its samples: warm-up, mosaics, the tail."""
    sampler = ResumableSampler(4, shuffle=True, seed=0)
    loader = build_loader(TrainSamples(Squares(), policy_config()), batch_size=2, train=True, num_workers=1,
                          size_divisibility=1, sampler=sampler)
    assert loader.persistent_workers
    seen = []
    for epoch, progress in enumerate((0.0, 0.2, 0.9)):
        sampler.set_epoch(epoch, progress=lambda position, p=progress: p)
        seen.append([(len(t["labels"]), tuple(t["size"].tolist())) for batch in loader for t in batch.targets])
    assert seen == [[(1, (48, 96))] * 4, [(4, (48, 96))] * 4, [(1, (64, 128))] * 4]
