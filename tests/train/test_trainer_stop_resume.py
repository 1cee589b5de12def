"""Trainer stop and resume: a stop request during evaluation keeps the epoch, the signal handler does
no I/O, `--resume` applies the overrides that are safe to change and refuses the others."""

from __future__ import annotations

import csv
import signal
import sys

import pytest

from builders import shapes_dataset, tiny_config
from dynamic_detr.checkpoint import load_checkpoint
from dynamic_detr.train.trainer import Trainer


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """8 train images: 4 batches of 2 per epoch."""
    return shapes_dataset(tmp_path_factory.mktemp("easy"), {"train": 8, "val": 4})


@pytest.mark.parametrize("how", ["flag", "worker death"])
def test_stop_during_evaluation_keeps_the_epoch_and_resumes(easy, tmp_path, monkeypatch, how):
    """SIGTERM while epoch 1 is being evaluated: "flag" (no workers: the evaluation sees the request at its next
    batch) or "worker death" (the signal also killed the val loader's workers, which raises in the loader).
    Either way the run stops with epoch 1 trained and checkpointed but not ended, and a resume evaluates it and
    goes on. The old loop crashed on the loader's error (the epoch lost), or finished the evaluation and
    stopped one step into epoch 2."""
    from dynamic_detr.train import validation

    original = validation.evaluate_model
    calls = {"n": 0}

    def evaluate_model(model, loader, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            signal.raise_signal(signal.SIGTERM)
            if how == "worker death":
                raise RuntimeError("DataLoader worker (pid 12345) is killed by signal: Terminated. ")
        return original(model, loader, *args, **kwargs)

    monkeypatch.setattr(validation, "evaluate_model", evaluate_model)
    run = tmp_path / "run"
    first = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, run, epochs=2, progress=False).fit()
    assert first.status == "interrupted" and first.metrics is None
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["epoch_samples"], state["step"]) == (0, 8, 4)
    assert state["epoch_stats"]["count"] == 4  # the epoch's loss sums are kept for its row
    assert not (run / "results.csv").exists()

    monkeypatch.setattr(validation, "evaluate_model", original)
    second = Trainer(tiny_config(px=96, run=True, batch_size=2), easy, run, resume=True, progress=False).fit()
    assert second.status == "finished" and second.epochs_done == 2
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "4"), ("2", "8")]
    assert all(r["AP"] != "" and r["loss"] not in ("", "nan") for r in rows), rows


def test_stop_signal_handler_does_no_io(capsys):
    """The handler only sets the flag: a print there can land inside tqdm's write to stderr and raise
    "reentrant call". The notice comes once, from `announce`, outside the handler."""
    from dynamic_detr.train.stopping import StopFlag

    class Busy:
        def write(self, text):
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

        def flush(self):
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

    with StopFlag() as stop:
        real, sys.stderr = sys.stderr, Busy()
        try:
            stop._handle(signal.SIGTERM, None)
        finally:
            sys.stderr = real
        assert stop.requested
        stop.announce()
        stop.announce()
    err = capsys.readouterr().err
    assert err.count("SIGTERM: stopping") == 1, err


def test_resume_applies_safe_overrides_and_says_so(easy, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny_config(px=96, run=True, batch_size=4), easy, run, epochs=1, progress=False).fit()
    capsys.readouterr()
    overrides = ["train.epochs=3", "train.eval_every=3", "train.checkpoint_every=1", "data.num_workers=0",
                 "train.batch_size=4"]  # the last two are the run's values already: nothing to apply
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=4), easy, run, resume=True, overrides=overrides,
                      progress=False)
    t = trainer.cfg.train
    assert (t.epochs, t.eval_every, t.checkpoint_every, t.batch_size) == (3, 3, 1, 4)
    out = capsys.readouterr().out
    assert "train.epochs=3, train.eval_every=3, train.checkpoint_every=1" in out, out
    assert "num_workers" not in out and "batch_size" not in out, out
    result = trainer.fit()
    assert result.status == "finished" and result.epochs_done == 3
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["AP"] != "" for r in rows] == [True, False, True]  # eval_every=3: epoch 2 not evaluated, 3 is the last
    assert load_checkpoint(run / "last.pt")["config"]["train"]["eval_every"] == 3


def test_resume_refuses_overrides_that_change_the_run(easy, tmp_path):
    from dynamic_detr.errors import ConfigError

    run = tmp_path / "run"
    Trainer(tiny_config(px=96, run=True, batch_size=4), easy, run, epochs=1, progress=False).fit()
    before = (run / "last.pt").read_bytes()
    overrides = ["train.lr=1e-3", "train.epochs=2", "model.hidden_dim=32", "train.batch_size=2"]
    with pytest.raises(ConfigError, match=r"train\.lr, model\.hidden_dim, train\.batch_size") as err:
        Trainer(tiny_config(px=96, run=True, batch_size=4), easy, run, resume=True, overrides=overrides, progress=False)
    assert "\n" not in str(err.value) and "train.epochs" not in str(err.value).split("(")[0]
    assert (run / "last.pt").read_bytes() == before
