"""torchrun with 2 CPU processes (gloo) matches one process with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch
from engine_helpers import make_easy_dataset, tiny_config

from dynamic_detr.engine.checkpoint import load_checkpoint
from dynamic_detr.engine.trainer import Trainer

# The stated tolerance: per-epoch mean losses agree to 1e-3 (relative), and per tensor the two runs' weights
# differ by at most 2% of how far the 4 AdamW steps moved them (L2 norms). The only differences are float
# summation order (gradient all-reduce, loss sums); an element-wise bound would be wrong for Adam, whose
# update m / (sqrt(v) + eps) turns rounding noise on a near-zero gradient into a full +-lr step.
LOSS_RTOL, WEIGHT_RTOL = 1e-3, 0.02


def _config():
    cfg = tiny_config(lr_drop_epochs=[])
    cfg.model.backbone.norm = "frozen_bn"  # BN statistics are per process on CPU (no SyncBatchNorm there)
    return cfg


@pytest.mark.slow
def test_two_process_gloo_matches_single_process(tmp_path):
    data = make_easy_dataset(tmp_path / "d", {"train": 8, "val": 2})
    single = tmp_path / "single"
    cfg = _config()
    cfg.train.batch_size = 4
    trainer = Trainer(cfg, data, single, epochs=2, progress=False)
    w0 = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()

    cfg = _config()
    cfg.train.batch_size = 2  # per process: the same global batch of 4
    cfg.dump(tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "dynamic_detr.cli.main", "train", "--data", str(data), "--config", str(tmp_path / "ddp.yaml"),
           "--out", str(tmp_path / "ddp"), "--epochs", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    rows_single = list(csv.DictReader((single / "results.csv").open()))
    rows_ddp = list(csv.DictReader((tmp_path / "ddp" / "results.csv").open()))
    assert len(rows_single) == len(rows_ddp) == 2
    for a, b in zip(rows_single, rows_ddp, strict=True):
        assert a["step"] == b["step"] == str(2 * int(a["epoch"]))
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=LOSS_RTOL)
    wa, wb = load_checkpoint(single / "last.pt")["model"], load_checkpoint(tmp_path / "ddp" / "last.pt")["model"]
    moved_total = 0.0
    for k in wa:
        if not wa[k].is_floating_point():
            assert torch.equal(wa[k], wb[k]), k
            continue
        moved, diff = (wa[k] - w0[k]).norm().item(), (wb[k] - wa[k]).norm().item()
        moved_total += moved
        assert diff <= WEIGHT_RTOL * moved + 1e-7, f"{k}: runs differ by {diff:.3g}, training moved it {moved:.3g}"
    assert moved_total > 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_resumes(tmp_path):
    """torchrun --max-restarts 1 with `train --resume`: the first launch starts fresh (nothing to resume yet);
    SIGKILL one of the 2 workers once a checkpoint exists; the elastic agent restarts both, they resume from
    last.pt and the run finishes with the right epoch count."""
    import signal
    import time

    data = make_easy_dataset(tmp_path / "d", {"train": 8, "val": 2})
    cfg = _config()
    cfg.train.batch_size = 2
    cfg.train.checkpoint_every = 1
    cfg.dump(tmp_path / "ddp.yaml")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:29541", "-m", "dynamic_detr.cli.main", "train",
           "--data", str(data), "--config", str(tmp_path / "ddp.yaml"), "--out", str(run), "--epochs", "4",
           "--device", "cpu", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        killed = None
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if (run / "last.pt").exists() and load_checkpoint(run / "last.pt")["step"] >= 2:
                workers = _children(proc.pid)
                if len(workers) == 2:
                    killed = max(workers)
                    os.kill(killed, signal.SIGKILL)
        assert killed is not None, "no checkpoint with step >= 2 while both workers ran"
        log, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    (tmp_path / "torchrun.log").write_text(log)
    assert proc.returncode == 0, log[-4000:]
    assert "resuming" in log, log[-4000:]  # the restarted workers continued from last.pt
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 4 and ckpt["step"] == 8  # 4 epochs x (8 images / global batch 4)
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
