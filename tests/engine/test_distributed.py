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

# The stated tolerance: per-epoch mean losses agree to 1e-3 (relative) and weights to 2e-4 (absolute) after 4
# AdamW steps at lr 1e-4; the only differences are float summation order (gradient all-reduce, loss sums).
LOSS_RTOL, WEIGHT_ATOL = 1e-3, 2e-4


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
    Trainer(cfg, data, single, epochs=2, progress=False).fit()

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
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
