"""Fault injection: training killed with SIGKILL mid-step, mid-checkpoint-write and mid-evaluation, then
resumed until it finishes (deterministic mode: the same weights as an uninterrupted run); SIGTERM to the
whole process group with DataLoader workers stops gracefully with a checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from builders import shapes_dataset, tiny_config
from dynamic_detr.checkpoint import load_checkpoint

DRIVER = Path(__file__).with_name("fault_driver.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
EPOCHS = 2  # 8 train images, batch 2: 4 steps per epoch, 8 in all
TIMEOUT = 300  # per subprocess (or wait for one)
# per test (pytest-timeout): several training runs of a few tens of seconds each, and room for one of them to
# hang until its own TIMEOUT, which then fails the test with its output
TEST_TIMEOUT = 1200


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = shapes_dataset(root / "data", {"train": 8, "val": 2})
    cfg = tiny_config(px=96, run=True, batch_size=2, checkpoint_every=1)
    cfg.dump(root / "cfg.yaml")
    return data, root / "cfg.yaml"


def _train_cmd(data: Path, cfg: Path, run: Path, resume: bool, *extra: str) -> list[str]:
    cmd = [sys.executable, str(DRIVER), "train", "--data", str(data), "--config", str(cfg), "--out", str(run),
           "--epochs", str(EPOCHS), "--device", "cpu", *extra]
    return [*cmd, "--resume"] if resume else cmd


def _train(data, cfg, run, resume=False, fault=None, *extra):
    env = {**ENV, "FAULT": fault} if fault else ENV
    return subprocess.run(_train_cmd(data, cfg, run, resume, *extra), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _check_finished(run: Path) -> dict:
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["epoch_samples"], state["step"]) == (EPOCHS, 0, 4 * EPOCHS)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert all(r["loss"] not in ("", "nan") for r in rows), rows
    assert (run / "metrics.json").is_file() and (run / "best.pt").is_file()
    return state


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
def test_sigkill_mid_step_mid_save_mid_eval_then_resume_equals_uninterrupted(setup, tmp_path):
    data, cfg = setup
    ref = _train(data, cfg, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = _check_finished(tmp_path / "ref")

    run = tmp_path / "run"
    # 1. killed inside the 3rd loss computation: the checkpoint of step 2 is there and loads
    p = _train(data, cfg, run, fault="criterion:3")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert load_checkpoint(run / "last.pt")["step"] == 2
    # 2. resumed, killed halfway through writing the 2nd checkpoint (step 4): the step-3 one is intact
    p = _train(data, cfg, run, resume=True, fault="save:2")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert list(run.glob(".last.pt.*.tmp")), "the half-written temp file should be left by the kill"
    assert load_checkpoint(run / "last.pt")["step"] == 3
    # 3. resumed, killed inside the first evaluation (end of epoch 1, after the step-4 checkpoint)
    p = _train(data, cfg, run, resume=True, fault="eval:1")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    state = load_checkpoint(run / "last.pt")
    assert (state["epoch"], state["epoch_samples"], state["step"]) == (0, 8, 4)
    # 4. resumed to the end
    p = _train(data, cfg, run, resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    final = _check_finished(run)
    assert final["model"].keys() == reference["model"].keys()
    for k, v in reference["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=0, atol=0, msg=k)
    assert not list(run.glob(".*.tmp")), "stale checkpoint temp files should be cleaned up"


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
@pytest.mark.parametrize("written", [5, 6])
def test_sigkill_between_the_files_of_an_epoch_end_keeps_the_records(setup, tmp_path, written):
    """Killed right after the 5th / 6th checkpoint file (steps 1-4 write last.pt, then epoch 1's end writes
    best.pt, then last.pt): the resumed run ends with every epoch's row in results.csv and a best.pt. Before, the
    epoch's last.pt came first and its results.csv row after it, so a kill in between lost epoch 1's row for good
    (the resume started at epoch 2); best.pt came after last.pt, so the same kill lost best.pt."""
    data, cfg = setup
    run = tmp_path / "run"
    p = _train(data, cfg, run, fault=f"saved:{written}")
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    p = _train(data, cfg, run, resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    _check_finished(run)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
def test_sigkill_while_checkpoint_temp_file_exists_then_resume(setup, tmp_path):
    """A real race: poll for the checkpoint temp file and SIGKILL as soon as it is seen (a few times)."""
    data, cfg = setup
    run = tmp_path / "run"
    kills = 0
    for attempt in range(3):
        # stderr is not read: DEVNULL, not an unread pipe whose full buffer would block the child
        proc = subprocess.Popen(_train_cmd(data, cfg, run, resume=attempt > 0), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            seen_before = set(run.glob(".last.pt.*.tmp")) if run.exists() else set()
            deadline = time.monotonic() + TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if run.exists() and set(run.glob(".last.pt.*.tmp")) - seen_before and (run / "last.pt").exists():
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
                    break
                time.sleep(0.002)
            proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:  # a failing test must not leave a training running
                proc.kill()
                proc.wait()
        if (run / "last.pt").exists():
            load_checkpoint(run / "last.pt")  # never half-written
    assert kills >= 1
    p = _train(data, cfg, run, resume=True)
    assert p.returncode == 0, p.stderr[-3000:]
    _check_finished(run)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT)
def test_sigterm_to_process_group_with_workers_stops_gracefully_and_resumes(setup, tmp_path):
    data, cfg = setup
    run = tmp_path / "run"
    cmd = _train_cmd(data, cfg, run, False, "data.num_workers=2")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be signalled"
        os.killpg(proc.pid, signal.SIGTERM)  # the main process and its DataLoader workers, like `kill -TERM -PGID`
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:  # a failing test must not leave the training and its workers running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err[-3000:]
    assert "SIGTERM" in err and "Traceback" not in err, err[-3000:]
    assert "interrupted" in out
    state = load_checkpoint(run / "last.pt")
    assert state["step"] >= 1 and state["epoch"] < EPOCHS
    p = _train(data, cfg, run, True, None, "data.num_workers=2")
    assert p.returncode == 0, p.stderr[-3000:]
    _check_finished(run)
