"""Early stopping (`train.patience`, `train.min_delta`; train/early_stopping.py): the rule on AP histories (ties,
min_delta, patience 0 = off, evaluations every k epochs), a tiny run whose AP cannot move (lr 0) stopping at
its patience with best.pt kept, what `--resume` does with such a run, and torchrun's ranks stopping together."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys

import pytest

from builders import shapes_dataset, tiny_config
from dynamic_detr.checkpoint import load_checkpoint
from dynamic_detr.cli.main import main
from dynamic_detr.train.early_stopping import can_stop, plateau, stopped_line
from dynamic_detr.train.trainer import Trainer


def first_stop(aps, patience, min_delta=0.0, every=1):
    """The epoch at which a run with these evaluated APs (one every `every` epochs) stops; None if it never does."""
    history = [(every * (i + 1), ap) for i, ap in enumerate(aps)]
    for n in range(1, len(history) + 1):
        p = plateau(history[:n], patience, min_delta)
        if p.stop:
            return p.epoch
    return None


# ------------------------------------------------------------------------------------------------ the rule
def test_nothing_evaluated_yet_is_no_plateau():
    assert plateau([], patience=3, min_delta=0.0) is None


def test_an_equal_ap_is_no_gain():
    assert first_stop([5.0, 5.0, 5.0, 5.0], patience=2) == 3  # epochs 2 and 3 tie epoch 1's AP
    assert first_stop([5.0, 5.0, 5.0, 5.0], patience=3) == 4
    assert first_stop([5.0, 5.0, 5.0], patience=3) is None


def test_any_gain_restarts_the_count_without_min_delta():
    assert first_stop([5.0, 5.0, 5.01, 5.01, 5.01], patience=2) == 5  # 5.01 at epoch 3: counted from there
    p = plateau([(1, 5.0), (2, 5.0), (3, 5.01)], patience=2, min_delta=0.0)
    assert (p.gain_epoch, p.epochs_without_gain, p.stop) == (3, 0, False)


def test_gains_of_min_delta_or_less_do_not_count_but_the_best_ap_is_still_the_highest():
    history = [(1, 10.0), (2, 10.05), (3, 10.08), (4, 10.09)]
    p = plateau(history, patience=3, min_delta=0.1)
    assert (p.gain_epoch, p.epochs_without_gain, p.stop) == (1, 3, True)
    assert (p.best_ap, p.best_epoch) == (10.09, 4)  # best.pt is epoch 4's; the count runs from epoch 1's AP
    assert first_stop([10.0, 10.05, 10.3, 10.35, 10.38], patience=3, min_delta=0.1) is None  # 10.3: a gain
    assert first_stop([10.0, 10.05, 10.3, 10.35, 10.38, 10.39], patience=3, min_delta=0.1) == 6


def test_a_drop_does_not_move_the_reference():
    p = plateau([(1, 10.0), (2, 12.0), (3, 11.0), (4, 11.5), (5, 11.9)], patience=3, min_delta=0.0)
    assert (p.gain_epoch, p.epochs_without_gain, p.stop, p.best_ap, p.best_epoch) == (2, 3, True, 12.0, 2)


def test_patience_zero_is_off_and_still_counts():
    assert first_stop([5.0] * 20, patience=0) is None
    p = plateau([(e, 5.0) for e in range(1, 21)], patience=0, min_delta=0.0)
    assert (p.epochs_without_gain, p.stop) == (19, False)


def test_patience_counts_epochs_when_evaluations_are_k_epochs_apart():
    # evaluated at epochs 2, 4, 6, ...: patience 3 stops at the first evaluation 3 or more epochs after the gain
    assert first_stop([5.0, 5.0, 5.0], patience=3, every=2) == 6
    assert first_stop([5.0, 5.0, 5.0], patience=4, every=2) == 6
    assert first_stop([5.0, 5.0], patience=2, every=2) == 4


def test_a_nan_ap_never_gains_and_a_number_after_nan_does():
    p = plateau([(1, math.nan), (2, 4.0), (3, 4.0)], patience=2, min_delta=0.0)
    assert (p.gain_epoch, p.best_ap, p.best_epoch) == (2, 4.0, 2)
    assert first_stop([4.0, math.nan, math.nan], patience=2) == 3


def test_can_stop_says_whether_a_flat_run_would_stop_before_its_last_epoch():
    for epochs in range(1, 13):
        for every in (1, 2, 3, 5):
            for patience in range(every, 9):  # below `every`: refused by the config
                evaluated = range(every, epochs, every)  # the evaluations before the last epoch
                stops = first_stop([1.0] * len(evaluated), patience, every=every) is not None
                assert can_stop(patience, every, epochs) == stops, (patience, every, epochs)
    assert not can_stop(0, 1, 12)


def test_the_summary_line():
    p = plateau([(1, 3.0), (2, 7.25), (3, 7.0), (4, 7.2), (5, 7.1)], patience=3, min_delta=0.5)
    assert stopped_line(p, 0.5) == ("stopped early at epoch 5: no AP gain over min_delta (0.5) for 3 epochs "
                                    "(best 7.25 at epoch 2)")


def test_a_resume_may_change_patience_and_min_delta():
    from dynamic_detr.train.state import resume_config

    cfg, applied = resume_config(flat_config(patience=2), ["train.patience=5", "train.min_delta=0.25"])
    assert (cfg.train.patience, cfg.train.min_delta) == (5, 0.25)
    assert applied == ["train.patience=5", "train.min_delta=0.25"]


# ------------------------------------------------------------------------------------------------ runs
def flat_config(**train):
    """cpu_tiny at 96 px, batch 4, whose AP cannot move: lr 0 everywhere and frozen BN statistics."""
    cfg = tiny_config(px=96, run=True, batch_size=4, lr=0.0, lr_backbone=0.0, **train)
    cfg.model.backbone.norm = "frozen_bn"
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 train images (one step of 4 an epoch), 2 val images."""
    return shapes_dataset(tmp_path_factory.mktemp("flat"), {"train": 4, "val": 2})


def rows(run):
    with (run / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run of at most 10 epochs, patience 2: its flat AP stops it at epoch 3. Returns (run folder, result,
    printed output)."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("stopped") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = Trainer(flat_config(patience=2), data, run, epochs=10, progress=False).fit()
    return run, result, printed.getvalue()


def test_a_run_without_ap_gain_stops_at_its_patience_and_keeps_best_pt(stopped_run):
    run, result, printed = stopped_run
    assert (result.status, result.epochs_done) == ("stopped early", 3)
    table = rows(run)
    assert [r["epoch"] for r in table] == ["1", "2", "3"]
    assert len({r["AP"] for r in table}) == 1, table  # flat, as lr 0 makes it
    assert [r["epochs_without_gain"] for r in table] == ["0", "1", "2"]
    ap = float(table[0]["AP"])
    line = f"stopped early at epoch 3: no AP gain over min_delta (0) for 2 epochs (best {ap:.2f} at epoch 1)"
    assert line in printed, printed
    # it ends as a finished run: best.pt (epoch 1, the first and best AP), last.pt, metrics.json saying why
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 3 and [e for e, _ in last["val_history"]] == [1, 2, 3]
    assert (run / "weights" / "best.safetensors").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 3 and result.metrics is not None
    assert metrics["stopped_early"] == {"epoch": 3, "patience": 2, "min_delta": 0.0, "epochs_without_gain": 2,
                                        "best_AP": pytest.approx(ap, abs=0.01), "best_epoch": 1}


def test_resuming_a_run_that_stopped_early_trains_only_with_a_larger_patience(stopped_run, data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped_run[0], run)
    last, metrics = (run / "last.pt").read_bytes(), (run / "metrics.json").read_bytes()
    # the same patience (or the budget alone raised): nothing to train, and the CLI says so and exits 0
    assert main(["train", "--data", str(data), "--out", str(run), "--resume", "--epochs", "12"]) == 0
    out = capsys.readouterr().out
    assert "stopped early at epoch 3" in out and "there is nothing to train" in out, out
    assert "stopped early after 3 epoch(s)" in out, out
    assert (run / "last.pt").read_bytes() == last and (run / "metrics.json").read_bytes() == metrics
    assert len(rows(run)) == 3

    # a larger patience trains on from epoch 4, and stops again once it is used up (4 epochs after epoch 1)
    result = Trainer(flat_config(), data, run, resume=True, overrides=["train.patience=4"], progress=False).fit()
    assert (result.status, result.epochs_done) == ("stopped early", 5)
    assert [r["epochs_without_gain"] for r in rows(run)] == ["0", "1", "2", "3", "4"]
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert json.loads((run / "metrics.json").read_text())["stopped_early"]["epoch"] == 5
    # patience 0 (off) finishes the run's budget
    result = Trainer(flat_config(), data, run, resume=True, overrides=["train.patience=0"], epochs=6,
                     progress=False).fit()
    assert (result.status, result.epochs_done) == ("finished", 6)


@pytest.mark.parametrize("status, code", [("finished", 0), ("time budget", 0), ("stopped early", 0),
                                          ("stopped: non-finite", 1), ("interrupted", 130)])
def test_the_train_command_exits_0_for_a_run_that_stopped_early(status, code, data, tmp_path, monkeypatch):
    """A run that stopped early is a finished run; "stopped: non-finite" alone is a failure."""
    from types import SimpleNamespace

    from dynamic_detr.train import trainer as trainer_module

    class Ended:
        def __init__(self, cfg, data, out, **kwargs):
            self.out, self.dist = out, SimpleNamespace(is_main=True)

        def fit(self):
            return trainer_module.TrainResult(self.out, None, 3, status)

    monkeypatch.setattr(trainer_module, "Trainer", Ended)
    assert main(["train", "--data", str(data), "--preset", "cpu_tiny", "--out", str(tmp_path / "run")]) == code


def test_a_patience_used_up_at_the_last_epoch_is_a_finished_run_and_warned_about(data, tmp_path):
    with pytest.warns(UserWarning, match=r"train\.patience=2 cannot end this run early"):
        trainer = Trainer(flat_config(patience=2), data, tmp_path / "run", epochs=3, progress=False)
    result = trainer.fit()
    assert (result.status, result.epochs_done) == ("finished", 3)  # not "stopped early" at its last epoch
    assert "stopped_early" not in json.loads((tmp_path / "run" / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_torchrun_ranks_stop_early_together(data, tmp_path, free_port):
    """2 CPU processes: only rank 0 evaluates, so a stop taken from its metrics alone would leave rank 1
    training into a collective nobody joins (a hang). Both ranks stop after epoch 3 and torchrun exits 0."""
    cfg = flat_config(patience=2)
    cfg.train.batch_size = 2  # per process: one step of 2 x 2 an epoch
    cfg.dump(tmp_path / "ddp.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), "-m", "dynamic_detr.cli.main", "train", "--data", str(data), "--config",
           str(tmp_path / "ddp.yaml"), "--out", str(tmp_path / "run"), "--epochs", "10", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # hung ranks: end the whole group, workers included
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("the ranks hung (one stopped, the other did not): " + err[-2000:])
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    assert out.count("stopped early at epoch 3: no AP gain") == 1, out
    assert [r["epoch"] for r in rows(tmp_path / "run")] == ["1", "2", "3"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3
