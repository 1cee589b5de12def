"""The lr schedules (linear warm-up, then step drops or DEIM's flat-cosine, at fractions of the run) and the
progress the trainer gives them and the augmentation policy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from builders import shapes_dataset, tiny_config
from dynamic_detr.config import TrainConfig
from dynamic_detr.train.loop import train_one_epoch
from dynamic_detr.train.schedule import FlatCosineSchedule, WarmupStepSchedule, build_schedule
from dynamic_detr.train.stopping import StopFlag
from dynamic_detr.train.trainer import Trainer


def test_schedule_warmup_and_drop():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupStepSchedule([1.0], warmup_iters=10, warmup_factor=0.1, drop_at=[11 / 12], gamma=0.1)
    assert sched.apply(opt, 0, 0.0) == 0.1
    assert abs(sched.apply(opt, 5, 0.1) - 0.55) < 1e-9
    assert sched.apply(opt, 10, 0.5) == 1.0
    assert abs(sched.apply(opt, 100, 0.95) - 0.1) < 1e-12


def test_flat_cosine_warms_up_stays_flat_goes_down_a_cosine_and_holds_its_floor():
    """DEIM's shape on fractions of the run: warm-up (steps), peak until 0.5, half cosine to 0.2x at 0.8, floor."""
    s = FlatCosineSchedule([1.0, 0.1], warmup_iters=10, warmup_factor=0.1, flat_until=0.5, floor_from=0.8,
                           min_factor=0.2)
    assert s.factor(0, 0.0) == pytest.approx(0.1) and s.factor(5, 0.01) == pytest.approx(0.55)
    assert [s.factor(step, p) for step, p in ((10, 0.02), (500, 0.3), (900, 0.4999))] == [1.0, 1.0, 1.0]
    assert s.factor(1000, 0.5) == pytest.approx(1.0)  # continuous where the cosine starts
    assert s.factor(1000, 0.65) == pytest.approx(0.2 + 0.8 * 0.5)  # half way down: the mean of peak and floor
    assert s.factor(1000, 0.5 + 0.3 / 3) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert s.factor(1000, 0.7999999) == pytest.approx(0.2, abs=1e-9)  # continuous where the floor starts
    assert [s.factor(2000, p) for p in (0.8, 0.9, 1.0)] == [0.2, 0.2, 0.2]
    curve = [s.factor(1000, 0.5 + k * 0.3 / 50) for k in range(51)]
    assert all(a > b for a, b in itertools.pairwise(curve))  # strictly down the whole way
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                           {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
    assert s.apply(opt, 1000, 0.9) == pytest.approx(0.2) and opt.param_groups[1]["lr"] == pytest.approx(0.02)


def test_flat_cosine_without_a_cosine_steps_to_its_floor():
    s = FlatCosineSchedule([1.0], 0, 1.0, flat_until=0.6, floor_from=0.6, min_factor=0.5)
    assert (s.factor(0, 0.59), s.factor(0, 0.6)) == (1.0, 0.5)


def test_the_config_picks_the_schedule_and_a_rebuilt_one_gives_the_same_lr():
    """`train.lr_schedule`; the floor at `floor_from` (the trainer passes data.aug_stop). The schedule keeps no
    state: a resumed run rebuilds it and lands on the lr of the uninterrupted run at the same step and progress
    (both restored from the checkpoint: tests/train/test_trainer.py)."""
    step = build_schedule(TrainConfig(epochs=12, lr_drop_epochs=[11]), [1.0])
    assert isinstance(step, WarmupStepSchedule) and step.drop_at == [11 / 12]
    t = TrainConfig(lr_schedule="flat_cosine", lr_flat_until=0.4, lr_min_factor=0.3, warmup_iters=5)
    s = build_schedule(t, [2e-4, 2e-5], floor_from=0.9)
    assert isinstance(s, FlatCosineSchedule) and (s.flat_until, s.floor_from, s.min_factor) == (0.4, 0.9, 0.3)
    assert build_schedule(t, [2e-4, 2e-5]).floor_from == 1.0  # no tail: the cosine ends with the run
    again = build_schedule(t, [2e-4, 2e-5], floor_from=0.9)
    assert all(s.factor(k, k / 100) == again.factor(k, k / 100) for k in range(101))


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """8 train images: 4 batches of 2 per epoch."""
    return shapes_dataset(tmp_path_factory.mktemp("easy"), {"train": 8, "val": 4})


def test_each_epoch_gives_its_samples_the_progress_of_the_step_that_trains_them(easy, tmp_path):
    """8 images, batch 2, 4 epochs: 4 steps an epoch, 16 in the run; a sample's progress is its step's, which
    depends on its position in the epoch only (a resume gives it the same); with accumulation the windows of
    each epoch; with a time budget the share of the minutes when it is further."""
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, tmp_path / "run", epochs=4, progress=False)
    assert [trainer.sample_progress(e, k) for e, k in ((0, 0), (0, 1), (0, 2), (1, 5), (3, 7))] == [
        0, 0, 1 / 16, 6 / 16, 15 / 16]
    trainer.train_loader = []  # the epoch loop without batches: only what it sets up
    with StopFlag() as stop:
        train_one_epoch(trainer, stop)
    assert trainer.train_sampler.epoch == 0 and trainer.train_sampler.progress(5) == 2 / 16
    trainer.cfg.train.accumulate = 3  # 4 batches: windows of 3 and 1, 2 steps an epoch
    assert [trainer.sample_progress(1, k) for k in (0, 5, 6, 7)] == [2 / 8, 2 / 8, 3 / 8, 3 / 8]
    trainer.minutes, trainer.state["elapsed"] = 2.0, 90.0
    assert trainer.sample_progress(0, 0) == 0.75 and trainer.sample_progress(3, 7) == 0.875
