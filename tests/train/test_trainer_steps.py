"""Trainer steps: the fp16 loss scaler on an overflow, gradient accumulation across epoch ends, the
training-time budget across a resume."""

from __future__ import annotations

import csv
import signal

import pytest
import torch

from builders import shapes_dataset, tiny_config
from dynamic_detr.checkpoint import load_checkpoint
from dynamic_detr.train.trainer import Trainer
from run_helpers import inject_nonfinite, nonfinite_tensors


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """8 train images: 4 batches of 2 per epoch."""
    return shapes_dataset(tmp_path_factory.mktemp("easy"), {"train": 8, "val": 4})


def test_grad_scaler_skips_an_inf_gradient_backs_off_and_goes_on(easy, tmp_path):
    """fp16's GradScaler (its CPU version here: fp16 autocast is CUDA-only, the scaler is not) meets an inf
    gradient at step 2 of 4: it skips that step itself, halves its scale, and training goes on. The old loop
    skipped scaler.update() as well, so the next unscale_() raised and fp16 runs died on their first overflow."""
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, run, epochs=1, progress=False)
    trainer.optim.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    inject_nonfinite(trainer, "gradient", lambda n: n == 2)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = trainer.fit()
    assert result.status == "finished"
    state = load_checkpoint(run / "last.pt")
    assert (state["step"], state["nonfinite_total"]) == (3, 1)
    assert state["scaler"]["scale"] == 2.0**7  # backed off once (no growth: growth_interval is 2000)
    assert not nonfinite_tensors(state["model"]) and not nonfinite_tensors(state["optimizer"])
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["skipped_steps"] for r in rows] == ["1"]


def test_accumulation_steps_at_epoch_end_and_leaves_no_gradient(easy, tmp_path):
    """4 batches per epoch, accumulate 3: windows of 3 and 1 batches in each epoch, the short one stepping at the
    epoch's end. The old loop stepped once per epoch and carried the 4th batch's gradient into the next epoch
    (windows [3, 4]), and the last epoch's into nowhere."""
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=2, accumulate=3), easy, tmp_path / "run", epochs=2,
                      progress=False)
    counts = {"backward": 0}
    windows: list[int] = []  # batches accumulated into each optimizer step

    def on_grad(grad):
        counts["backward"] += 1
        return grad

    def on_step(optimizer, args, kwargs):
        windows.append(counts["backward"])
        counts["backward"] = 0

    next(p for p in trainer.model.parameters() if p.requires_grad).register_hook(on_grad)
    trainer.optim.optimizer.register_step_pre_hook(on_step)
    assert trainer.fit().status == "finished"
    assert windows == [3, 1, 3, 1]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4
    assert all(p.grad is None for p in trainer.model.parameters())


def test_accumulate_beyond_an_epoch_warns_and_steps_once_per_epoch(easy, tmp_path):
    """accumulate 8 > 4 batches per epoch: the old loop never took a step, silently."""
    with pytest.warns(UserWarning, match="more than the 4 batches of an epoch"):
        trainer = Trainer(tiny_config(px=96, run=True, batch_size=2, accumulate=8), easy, tmp_path / "run", epochs=2,
                          progress=False)
    assert trainer.fit().status == "finished"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


def test_resume_mid_epoch_counts_training_time_once(easy, tmp_path, monkeypatch):
    """A clock that moves 10 s per batch and a 65 s budget. Stopped after batch 3 (30 s) and resumed, the run
    must stop after batch 7 (70 s), as an uninterrupted one would. The old loop counted the interrupted epoch's
    30 s again on resume and stopped after batch 4 (its 'elapsed' 70 s); a time-based lr drop came early too."""
    from dynamic_detr.objective.criterion import SetCriterion
    from dynamic_detr.train import stopping

    calls = {"n": 0}
    original = SetCriterion.forward

    def counting(self, outputs, targets):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # finish this step, checkpoint, stop
        return original(self, outputs, targets)

    monkeypatch.setattr(SetCriterion, "forward", counting)
    monkeypatch.setattr(stopping, "clock", lambda: 10.0 * calls["n"])
    run = tmp_path / "run"
    first = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, run, epochs=2, minutes=65 / 60,
                    progress=False).fit()
    assert first.status == "interrupted"
    state = load_checkpoint(run / "last.pt")
    assert (state["step"], state["elapsed"], state["epoch_stats"]["seconds"]) == (3, 30.0, 30.0)
    second = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, run, resume=True, progress=False).fit()
    assert second.status == "time budget"
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["step"]) == (2, 7)
    assert state["elapsed"] == pytest.approx(70.0)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [float(r["epoch_time_s"]) for r in rows] == [40.0, 30.0]  # epoch 1: 30 s before the stop + 10 after
