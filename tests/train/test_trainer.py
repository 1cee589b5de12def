"""Trainer: run folder contents, resume equality, time budget, non-finite steps, EMA, bf16 steps (the
overfits: test_overfit.py)."""

from __future__ import annotations

import csv
import json
import signal

import pytest
import torch

from builders import shapes_dataset, tiny_config
from dynamic_detr.checkpoint import load_checkpoint, load_weights
from dynamic_detr.evaluate.inference import autocast, cpu_has_fast_bf16
from dynamic_detr.train.trainer import Trainer
from run_helpers import inject_nonfinite, nonfinite_tensors


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    return shapes_dataset(tmp_path_factory.mktemp("easy"), {"train": 8, "val": 4})


def _weights(run):
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="no native bf16 on this CPU: train.amp=bf16 runs in float32")
def test_bf16_step_matches_fp32(easy, tmp_path):
    """One batch, same weights: the loss and gradient of a bf16 autocast step are those of a float32 step
    (measured at random init: loss 25.157 vs 25.173, gradient cosine 0.944; after 3 epochs 0.9994)."""
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=4, amp="bf16"), easy, tmp_path / "run", epochs=1,
                      progress=False)
    batch = next(iter(trainer.train_loader))
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    def step(amp: str) -> tuple[float, torch.Tensor]:
        trainer.model.zero_grad()
        torch.manual_seed(0)
        with autocast(trainer.device, amp):
            outputs = trainer.model(batch.images, batch.masks, batch.targets)
        loss = trainer.criterion(outputs, batch.targets)["loss"]
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in params if p.grad is not None])

    loss32, grad32 = step("none")
    loss16, grad16 = step("bf16")
    assert abs(loss16 - loss32) < 0.01 * loss32, (loss16, loss32)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.85
    assert 0.9 < grad16.norm() / grad32.norm() < 1.1


def test_run_folder_contents(easy, tmp_path):
    run = tmp_path / "run"
    result = Trainer(tiny_config(px=96, run=True, batch_size=4), easy, run, epochs=2, progress=False).fit()
    assert result.status == "finished" and result.epochs_done == 2
    for name in ("config.yaml", "results.csv", "last.pt", "best.pt", "metrics.json",
                 "weights/last.safetensors", "weights/best.safetensors",
                 "plots/loss.png", "plots/ap.png", "plots/val_predictions.png",
                 "plots/pr_curves.png", "plots/pr_curves.json", "plots/confusion_matrix.png",
                 "plots/confusion_matrix.csv", "plots/confusion_matrix.json", "plots/errors.png", "plots/errors.json",
                 "plots/val_gt_vs_pred.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "loss_class_0", "loss_bbox_1", "loss_giou_1", "lr", "epoch_time_s", "AP", "AP50", "APs",
                "enc_b1_scale_P3", "enc_b1_offset_P7"):  # the encoder's (DynamicEncoder.stats), each epoch
        assert key in rows[0], key
    assert float(rows[1]["enc_b1_offset_P3"]) > 0  # the offsets left their zero init
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"square", "disc"}
    assert 0 <= metrics["AP"] <= 100
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["category_ids"] == [3, 7]
    assert "optimizer" in ckpt and len(ckpt["rng"]) == 1 and ckpt["rng"][0]["numpy"] is not None  # per rank


def test_resume_mid_epoch_equals_uninterrupted(easy, tmp_path, monkeypatch):
    """Stop by SIGINT after 3 steps of epoch 1 (8 images, batch 2 -> 4 steps/epoch), resume: same weights."""
    cfg = tiny_config(px=96, run=True, batch_size=2)
    Trainer(cfg, easy, tmp_path / "a", epochs=2, progress=False).fit()

    from dynamic_detr.objective.criterion import SetCriterion

    calls = {"n": 0}
    original = SetCriterion.forward

    def counting(self, outputs, targets):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # the real Ctrl-C path: finish this step, checkpoint, stop
        return original(self, outputs, targets)

    monkeypatch.setattr(SetCriterion, "forward", counting)
    cfg = tiny_config(px=96, run=True, batch_size=2)
    first = Trainer(cfg, easy, tmp_path / "b", epochs=2, progress=False).fit()
    assert first.status == "interrupted"
    state = load_checkpoint(tmp_path / "b" / "last.pt")
    assert (state["epoch"], state["epoch_samples"], state["step"]) == (0, 6, 3)
    monkeypatch.setattr(SetCriterion, "forward", original)
    second = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, tmp_path / "b", resume=True,
                     progress=False).fit()
    assert second.status == "finished" and second.epochs_done == 2
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_time_budget_stops_and_evaluates(easy, tmp_path):
    result = Trainer(tiny_config(px=96, run=True, batch_size=4), easy, tmp_path / "run", epochs=1000, minutes=0.02,
                     progress=False).fit()
    assert result.status == "time budget"
    assert 1 <= result.epochs_done < 1000
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("kind", ["loss", "activation", "gradient"])
def test_nonfinite_loss_skips_then_stops(easy, tmp_path, kind):
    """A non-finite loss, activation or gradient at one step: that step is skipped (results.csv skipped_steps),
    training recovers, and nothing non-finite is left in the weights, the buffers (the NaN activation went
    through a BatchNorm's running statistics) or the optimizer state. Non-finite at every step:
    `max_nonfinite_steps` in a row stop the run, and the checkpoint it leaves is finite."""
    once = tmp_path / "once"
    cfg = tiny_config(px=96, run=True, batch_size=2, max_nonfinite_steps=3)
    trainer = Trainer(cfg, easy, once, epochs=2, progress=False)
    inject_nonfinite(trainer, kind, lambda n: n == 2)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = trainer.fit()
    assert result.status == "finished"
    state = load_checkpoint(once / "last.pt")
    assert (state["step"], state["nonfinite_total"]) == (7, 1)  # 8 batches, one skipped
    rows = list(csv.DictReader((once / "results.csv").open()))
    assert [r["skipped_steps"] for r in rows] == ["1", "0"]
    assert all(r["loss"] not in ("", "nan") for r in rows), rows
    assert not nonfinite_tensors(state["model"]) and not nonfinite_tensors(state["optimizer"])
    assert not nonfinite_tensors(load_weights(once / "weights" / "last.safetensors")[0])

    always = tmp_path / "always"
    cfg = tiny_config(px=96, run=True, batch_size=2, max_nonfinite_steps=3)
    trainer = Trainer(cfg, easy, always, epochs=2, progress=False)
    inject_nonfinite(trainer, kind, lambda n: True)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = trainer.fit()
    assert result.status == "stopped: non-finite"
    state = load_checkpoint(always / "last.pt")  # a usable checkpoint is left behind
    assert state["nonfinite_total"] == 3 and state["step"] == 0
    assert not nonfinite_tensors(state["model"])
    assert (kind == "activation") == ("nan_probe.running_mean" in state["model"])


def test_ema_evaluated_alongside_raw(easy, tmp_path, capsys):
    """EMA on: both weight sets are evaluated (metrics["raw"], the raw_AP column; each reports its progress, a
    plain line off a terminal), the EMA weights differ from the raw ones, and the EMA weights are the ones
    written for use: weights/{last,best}.safetensors and what `load_model` (eval, predict, export) takes from
    best.pt."""
    from dynamic_detr.model.loading import load_model

    run = tmp_path / "run"
    result = Trainer(tiny_config(px=96, run=True, batch_size=4, ema=True, ema_decay=0.9), easy, run, epochs=1,
                     progress=False).fit()
    assert set(result.metrics["raw"]) >= {"AP", "AP50"}
    err = capsys.readouterr().err
    assert "val: 1/1 (100%) batch" in err and "val (EMA): 1/1 (100%) batch" in err
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert "raw_AP" in rows[0]
    ckpt = load_checkpoint(run / "last.pt")
    raw = ckpt["model"]
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert ema.keys() == raw.keys()
    floats = [k for k, v in raw.items() if v.is_floating_point()]
    differ = [k for k in floats if not torch.equal(ema[k], raw[k])]
    # 2 steps at decay 0.9: the average is 0.9 x step 1 + 0.1 x step 2, behind the raw weights
    assert len(differ) > len(floats) // 2, (len(differ), len(floats))
    for name in ("last", "best"):
        weights, _ = load_weights(run / "weights" / f"{name}.safetensors")
        assert weights.keys() == ema.keys(), name
        for k, v in weights.items():
            torch.testing.assert_close(v, ema[k], rtol=0, atol=0, msg=f"{name}: {k}")
    model, _ = load_model(run / "best.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=0, atol=0, msg=f"load_model: {k}")


def test_resume_without_checkpoint_starts_fresh_only_under_torchrun(easy, tmp_path, monkeypatch):
    """`--resume` on an empty run folder is an error for a user (a typo must not silently start over), but under
    torchrun it means "resume if there is anything": the first launch starts fresh, an elastic restart
    (--max-restarts) resumes from last.pt."""
    from dynamic_detr.errors import CheckpointError

    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        Trainer(tiny_config(px=96, run=True, batch_size=4), easy, tmp_path / "a", epochs=1, resume=True,
                progress=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=4), easy, tmp_path / "b", epochs=1, resume=True,
                      progress=False)
    assert not trainer.resumed and trainer.state["step"] == 0
    trainer.fit()
    again = Trainer(tiny_config(px=96, run=True, batch_size=4), easy, tmp_path / "b", epochs=2, resume=True,
                    progress=False)
    assert again.resumed and again.state["epoch"] == 1


def test_param_groups_split_offsets_and_dynamic_filters():
    from dynamic_detr.model import DynamicDETR
    from dynamic_detr.train.optim import param_groups

    cfg = tiny_config(px=96, run=True, lr=1e-3, lr_backbone=1e-4, lr_offset_mult=0.1, lr_dynamic_mult=0.5)
    cfg.model.num_classes = 2
    model = DynamicDETR(cfg.model)
    groups = param_groups(model, cfg.train)
    assert [g["name"] for g in groups] == ["rest", "backbone", "offsets", "dynamic"]
    assert [g["lr"] for g in groups] == [1e-3, 1e-4, 1e-4, 5e-4]
    names = {id(p): n for n, p in model.named_parameters()}
    by = {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}
    assert by["offsets"] and all(".offset." in n and n.startswith("encoder.") for n in by["offsets"])
    assert by["dynamic"] and all("dynamic_layer" in n for n in by["dynamic"])
    assert all(n.startswith("backbone.body.") for n in by["backbone"])
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    # multipliers of 1: no extra groups (checkpoints of earlier runs keep their two groups)
    plain = param_groups(model, tiny_config(px=96, run=True).train)
    assert [g["name"] for g in plain] == ["rest", "backbone"]
