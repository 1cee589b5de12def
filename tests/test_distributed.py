"""Distributed training: torchrun with 2 CPU processes (gloo) matches one process with the same global batch,
and an elastic restart after a killed worker resumes to the weights of an uninterrupted run; per-rank RNG
states, the check that every rank resumed the same state, and the process group's teardown (in-process,
a gloo group of one)."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from builders import shapes_dataset, tiny_config
from dynamic_detr import distributed as du
from dynamic_detr.checkpoint import load_checkpoint, save_checkpoint
from dynamic_detr.errors import UserError
from dynamic_detr.train.trainer import Trainer

# The stated tolerance: per-epoch mean losses agree to 1e-3 (relative), and per tensor the two runs' weights
# differ by at most 2% of how far the 4 AdamW steps moved them (L2 norms). The only differences are float
# summation order (gradient all-reduce, loss sums); an element-wise bound would be wrong for Adam, whose
# update m / (sqrt(v) + eps) turns rounding noise on a near-zero gradient into a full +-lr step.
LOSS_RTOL, WEIGHT_RTOL = 1e-3, 0.02
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config():
    cfg = tiny_config(px=96, run=True, lr_drop_epochs=[])
    cfg.model.backbone.norm = "frozen_bn"  # BN statistics are per process on CPU (no SyncBatchNorm there)
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(900)  # a single-process training, then torchrun (its own subprocess timeout: 600 s)
def test_two_process_gloo_matches_single_process(tmp_path, free_port):
    data = shapes_dataset(tmp_path / "d", {"train": 8, "val": 2})
    single = tmp_path / "single"
    cfg = _config()
    cfg.train.batch_size = 4
    trainer = Trainer(cfg, data, single, epochs=2, progress=False)
    w0 = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()

    cfg = _config()
    cfg.train.batch_size = 2  # per process: the same global batch of 4
    cfg.dump(tmp_path / "ddp.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), "-m", "dynamic_detr.cli.main", "train", "--data", str(data), "--config",
           str(tmp_path / "ddp.yaml"), "--out", str(tmp_path / "ddp"), "--epochs", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
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
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ranks_with_skewed_clocks_stop_at_the_same_step(tmp_path, free_port):
    """`--minutes` under torchrun with rank 1's clock twice as fast as rank 0's (skewed_clock_driver.py): every
    rank must stop at the same step boundary and evaluate together. Each rank reading its own clock, rank 1 went
    to evaluate (a collective) after step 3 while rank 0 went on stepping (another collective): a mismatch that
    hung or failed the run. The slowest rank's time now decides: elapsed 2, 6, 10 s after steps 1-3 of rank 1's
    clock, so a 10 s budget ends the run after step 3 on both."""
    data = shapes_dataset(tmp_path / "d", {"train": 16, "val": 2})
    cfg = _config()
    cfg.train.batch_size = 2
    cfg.dump(tmp_path / "ddp.yaml")
    driver = Path(__file__).parent / "train" / "skewed_clock_driver.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(free_port()), str(driver), "train", "--data", str(data), "--config", str(tmp_path / "ddp.yaml"),
           "--out", str(tmp_path / "run"), "--epochs", "5", "--minutes", str(10 / 60), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # hung ranks: end the whole group, workers included
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("the ranks hung (a collective mismatch): " + err[-2000:])
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "3")], rows
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two torchrun runs (their own limits: 600 s, then 120 + 180 s)
def test_torchrun_restarts_a_killed_worker_and_resumes(tmp_path, free_port):
    """torchrun --max-restarts 1 with `train --resume`: the first launch starts fresh (nothing to resume yet);
    SIGKILL one of the 2 workers once a checkpoint exists; the elastic agent restarts both, they resume from
    last.pt, and the run ends with exactly the weights of an uninterrupted torchrun run (deterministic mode,
    as in test_faults.py). Decoder dropout is on, so that each rank's RNG stream matters: a rank restoring
    another rank's RNG state would train on other dropout masks and end elsewhere."""
    import signal
    import time

    data = shapes_dataset(tmp_path / "d", {"train": 8, "val": 2})
    cfg = _config()
    cfg.train.batch_size = 2
    cfg.train.checkpoint_every = 1
    cfg.model.decoder.dropout = 0.1
    cfg.dump(tmp_path / "ddp.yaml")

    def cmd(run) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{free_port()}", "-m",
                "dynamic_detr.cli.main", "train", "--data", str(data), "--config", str(tmp_path / "ddp.yaml"),
                "--out", str(run), "--epochs", "4", "--device", "cpu", "--resume"]

    ref = subprocess.run(cmd(tmp_path / "ref"), env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-4000:]
    assert "resuming" not in ref.stdout, ref.stdout[-2000:] + ref.stderr[-6000:]  # the reference ran unrestarted

    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    final, reference = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert final["epoch"] == reference["epoch"] == 4 and final["step"] == reference["step"] == 8  # 8 images / 4
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert final["model"].keys() == reference["model"].keys()
    for k, v in reference["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=0, atol=0, msg=k)


# --------------------------------------------------------------------------- per-rank RNG states
def _draws() -> tuple:
    """The next numbers of each RNG a run uses: python, numpy (with their cached gaussians) and torch."""
    return (random.random(), random.gauss(0, 1), float(np.random.random()), float(np.random.standard_normal()),
            torch.rand(3).tolist())


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    """torch, numpy and python RNGs (with their cached gaussians) come back from a checkpoint file."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state ...
    np.random.standard_normal()  # ... and in numpy's
    state = du.rng_state(torch.device("cpu"))
    expected = _draws()
    save_checkpoint(tmp_path / "s.pt", {"model": {}, "rng": [state]})
    loaded = load_checkpoint(tmp_path / "s.pt")["rng"][0]
    assert loaded["cuda"] is None
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    du.set_rng_state(loaded, torch.device("cpu"))
    assert _draws() == expected


def test_resume_restores_every_rng_of_the_rank(tmp_path):
    """World size 1: a resumed Trainer continues numpy's and python's streams too, not only torch's (they
    used to be re-seeded at start-up)."""
    data = shapes_dataset(tmp_path / "d", {"train": 2, "val": 1})
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=2), data, run, epochs=1, progress=False)
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    trainer.save()
    expected = _draws()
    assert len(load_checkpoint(run / "last.pt")["rng"]) == 1
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    resumed = Trainer(tiny_config(px=96, run=True, batch_size=2), data, run, resume=True, progress=False)
    assert resumed.resumed
    assert _draws() == expected


def test_rng_rule_for_a_changed_world_size():
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(du.rng_state())
    # the same world size: each rank its own state
    assert du.pick_rng_state(states, 2, 0, 2) is states[0]
    assert du.pick_rng_state(states, 2, 1, 2) is states[1]
    # another world size: rank 0 keeps rank 0's, the others a seed derived from it, distinct and reproducible
    assert du.pick_rng_state(states, 2, 0, 4) is states[0]
    assert du.pick_rng_state(states, 2, 0, 1) is states[0]
    seeds = [du.pick_rng_state(states, 2, r, 4) for r in (1, 2, 3)]
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds) and len(set(seeds)) == 3
    assert seeds == [du.derived_seed(states[0], r) for r in (1, 2, 3)]
    assert du.derived_seed(states[1], 1) != seeds[0]  # derived from rank 0's state, not a constant
    # a checkpoint from before per-rank states (rank 0's torch state only), same world size of 2
    assert du.pick_rng_state(states[:1], 2, 1, 2) == du.derived_seed(states[0], 1)
    # restore_rng applies the rule
    du.restore_rng(states, 2, du.DistInfo(rank=3, world_size=4))
    after_restore = torch.rand(2)
    du.seed_all(seeds[2])
    assert torch.equal(after_restore, torch.rand(2))
    du.restore_rng(states, 2, du.DistInfo(rank=1, world_size=2))
    torch.set_rng_state(states[1]["torch"])
    expected = torch.rand(2)
    du.restore_rng(states, 2, du.DistInfo(rank=1, world_size=2))
    assert torch.equal(torch.rand(2), expected)


# --------------------------------------------------------------------------- the same state on every rank
def test_ranks_that_start_from_different_states_are_refused():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(model.state_dict())
    resumed = du.state_fingerprint(model, resumed=True, epoch=3, step=120)
    assert du.state_fingerprint(copy, resumed=True, epoch=3, step=120) == resumed
    du.check_ranks_agree([resumed, resumed, dict(resumed)])  # agreeing ranks: nothing raised
    # multi-node without a shared file system: rank 0 found last.pt, rank 2 started fresh
    fresh = du.state_fingerprint(torch.nn.Linear(3, 2), resumed=False, epoch=0, step=0)
    with pytest.raises(UserError) as info:
        du.check_ranks_agree([resumed, resumed, fresh])
    message = str(info.value)
    assert "rank 0: resumed True, epoch 3, step 120, weights " in message
    assert "rank 2: resumed False, epoch 0, step 0, weights " in message
    assert "rank 1" not in message and "same checkpoint" in message and "\n" not in message
    # the same counters, other weights (another checkpoint of the same step)
    with torch.no_grad():
        copy.weight[0, 0] += 1
    other = du.state_fingerprint(copy, resumed=True, epoch=3, step=120)
    assert other["weights"] != resumed["weights"]
    with pytest.raises(UserError, match="rank 1: resumed True, epoch 3, step 120, weights"):
        du.check_ranks_agree([resumed, other])


# --------------------------------------------------------------------------- process group teardown
@pytest.fixture
def no_group_left():
    yield
    if dist.is_initialized():  # a failing test must not leave its group to the next ones
        dist.destroy_process_group()


def _join_group_of_one(store_file) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(str(store_file), 1), rank=0, world_size=1)


def test_process_group_scope_destroys_the_group_it_joined(tmp_path, no_group_left):
    with du.process_group_scope():
        _join_group_of_one(tmp_path / "a")
        assert du.is_dist()
        du.check_same_state(torch.nn.Linear(2, 2), epoch=0)  # the collective path, one rank
        assert len(du.all_gather_objects(du.rng_state())) == 1
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="boom"), du.process_group_scope():
        _join_group_of_one(tmp_path / "b")
        raise RuntimeError("boom")
    assert not dist.is_initialized()
    _join_group_of_one(tmp_path / "c")  # a group from before the block is the caller's: left alone
    with du.process_group_scope():
        pass
    assert dist.is_initialized()


@pytest.mark.parametrize("fails", [False, True])
def test_train_command_leaves_the_process_group(tmp_path, monkeypatch, no_group_left, fails):
    """`dynamic-detr train` destroys the group its Trainer joined (torchrun), at the end and on an error."""
    import dynamic_detr.train.trainer as trainer_module
    from dynamic_detr.cli.main import main

    class JoiningTrainer:  # joins a group like Trainer does under torchrun, then trains or fails
        def __init__(self, *args, **kwargs) -> None:
            _join_group_of_one(tmp_path / "store")
            self.dist = du.DistInfo()

        def fit(self):
            if fails:
                raise UserError("no usable images")
            return SimpleNamespace(status="finished", epochs_done=1, out=tmp_path / "r", metrics=None)

    monkeypatch.setattr(trainer_module, "Trainer", JoiningTrainer)
    code = main(["train", "--data", str(tmp_path), "--preset", "cpu_tiny", "--out", str(tmp_path / "r")])
    assert code == (2 if fails else 0)
    assert not dist.is_initialized()
