"""The training loop: AdamW (separate backbone lr), warm-up + step schedule, clipping, accumulation, AMP,
EMA, epoch and time budgets, checkpoint/resume, evaluation, and the run folder.

    run/config.yaml          resolved config (num_classes and category ids filled from the dataset)
    run/results.csv          one row per epoch: every loss term, lr, time, val AP..APl, the dynamic encoder's gates,
                             scale attention and offsets (`DynamicEncoder.stats`)
    run/tensorboard/         TensorBoard events
    run/last.pt, best.pt     full training state (atomic writes; `weights_only` loadable)
    run/weights/last.safetensors, best.safetensors   model weights (+ config in the metadata)
    run/plots/               loss.png, ap.png, val_predictions.png, and at the end the error analysis of the last
                             evaluation (engine/analysis.py): pr_curves, confusion_matrix, errors, val_gt_vs_pred
    run/metrics.json         final COCO evaluation
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, apply_overrides
from ..errors import CheckpointError, ConfigError, UserError
from ..fileio import remove_stale_temp_files
from . import distributed as dist_utils
from .checkpoint import check_compatible, check_training_state, load_checkpoint, save_checkpoint, save_weights
from .inference import autocast, effective_amp, evaluate_model
from .loading import read_trained, transfer_weights
from .report import AP_KEYS, RunReport, atomic_write_json
from .rundir import clear_run
from .sampler import GroupedBatchSampler, ResumableSampler, SeededDataset
from .schedule import WarmupStepSchedule

_clock = time.perf_counter
"""The training-time clock (a module attribute so that tests can drive it)."""


@dataclass
class TrainResult:
    out: Path
    metrics: dict[str, Any] | None
    epochs_done: int
    status: str
    """"finished", "time budget", "interrupted" or "stopped: non-finite"."""


class _StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step (or evaluation) and write a checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._announced = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        # no I/O here: a print can land inside another write to the same stream (tqdm's bar) and raise
        # "reentrant call"; the loop reports the request (`announce`)
        if self.requested:
            if signum == signal.SIGINT:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            return  # repeated SIGTERMs (e.g. a supervisor and its child both forwarding one): keep stopping
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._quiet_worker_deaths()

    def announce(self) -> None:
        """Say once, outside the signal handler, that a stop was requested."""
        if self.requested and not self._announced:
            self._announced = True
            print(f"\n{self.signal_name or 'stop'}: stopping and saving a checkpoint (again to abort)",
                  file=sys.stderr, flush=True)

    def _quiet_worker_deaths(self) -> None:
        """A signal sent to the whole process group (Ctrl-C in a terminal, `kill -TERM -PGID`) also ends the
        DataLoader workers, and torch's SIGCHLD handler then raises "DataLoader worker ... is killed by signal"
        wherever the main process happens to be, e.g. halfway through writing the checkpoint. Once a stop is
        requested the workers' death is expected: swallow that error (the loader itself still reports it at
        its next batch, which `_until_loader_dies` turns into the end of the epoch and `_evaluate` into a
        stop)."""
        sigchld = getattr(signal, "SIGCHLD", None)
        previous = signal.getsignal(sigchld) if sigchld is not None else None
        if not callable(previous):
            return

        def handler(signum, frame) -> None:
            with contextlib.suppress(RuntimeError):
                previous(signum, frame)

        with contextlib.suppress(ValueError):
            signal.signal(sigchld, handler)
            self._old.setdefault(sigchld, previous)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Train `cfg` on the COCO-format dataset at `data` and write everything to `out`.

    `epochs` / `minutes`: the budget (either or both; the run stops at whichever comes first).
    `resume`: continue from `out/last.pt` (or from the given checkpoint / run folder) with the run's own config;
    `overrides` (the command line's `key=value`s) then change only what `RESUME_OVERRIDABLE` lists.
    `weights`: start from a trained model's weights (run folder, .pt, .safetensors or `save_pretrained` folder;
    `loading.transfer_weights`): a new run, with a fresh optimizer from epoch 0, not a resume.
    `overwrite`: a new run in a folder that holds an earlier one: its files (`rundir.RUN_FILES`) are removed
    first, so that nothing mixes.
    """

    def __init__(self, cfg: Config, data: Path, out: Path, *, epochs: int | None = None,
                 minutes: float | None = None, resume: bool | str | Path = False, device: str | None = None,
                 log_every: int = 20, progress: bool | None = None, overrides: Sequence[str] = (),
                 weights: str | Path | None = None, overwrite: bool = False) -> None:
        resuming = resume is not False and resume is not None
        if weights is not None and resuming:
            raise UserError("weights= starts a new run from trained weights, resume= continues a run: not both")
        if overwrite and resuming:
            raise UserError("overwrite= starts the run in `out` over, resume= continues it: not both")
        self.dist = dist_utils.init_distributed(device)
        self.device = self.dist.device
        self.data_root = Path(data)
        self.out = Path(out)
        self.log_every = log_every
        self.progress = sys.stderr.isatty() if progress is None else progress
        resume_state = self._find_resume(resume)
        if resume_state is not None:
            saved = Config.from_dict(resume_state["config"], source="checkpoint config")
            cfg, applied = resume_config(saved, overrides)  # a resumed run is the same run: its own config
            if applied and self.dist.is_main:
                print(f"resume: applied {', '.join(applied)} (the rest of the config is the run's own)", flush=True)
        if epochs is not None:
            cfg.train.epochs = epochs
        self.minutes = minutes if minutes is not None else (resume_state or {}).get("minutes")
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 on CPU")
        if effective_amp(self.device, cfg.train.amp) != cfg.train.amp and self.dist.is_main:
            print("train.amp=bf16: this CPU has no native bf16 (oneDNN would emulate it, several times slower "
                  "than float32): training in float32", flush=True)
        self.cfg = cfg
        # read before the dataset: a bad --weights file fails at once, with one line naming it
        self._init_weights = read_trained(weights) if weights is not None else None
        self._seed_everything(cfg.train.seed + self.dist.rank, cfg.train.deterministic)
        self._build_data()
        n_batches = math.ceil(self.train_sampler.per_rank() / cfg.train.batch_size)
        if cfg.train.accumulate > n_batches:
            warnings.warn(f"train.accumulate={cfg.train.accumulate} is more than the {n_batches} batches of an "
                          f"epoch: each epoch takes one optimizer step, over its {n_batches} batches",
                          UserWarning, stacklevel=2)
        self._build_model()
        self.state = {"epoch": 0, "epoch_samples": 0, "step": 0, "elapsed": 0.0, "best_ap": -1.0,
                      "nonfinite_total": 0, "epoch_stats": _new_epoch_stats()}
        self.resumed = resume_state is not None
        if resume_state is not None:
            self._load_state(resume_state)
        # every rank must start from the same state (multi-node without a shared file system: only rank 0
        # may have found last.pt); a collective, so it runs on every rank, resumed or not
        dist_utils.check_same_state(self.model, resumed=self.resumed, epoch=self.state["epoch"],
                                    step=self.state["step"], epoch_samples=self.state["epoch_samples"])
        if overwrite and self.dist.is_main:
            removed = clear_run(self.out)
            if removed:
                print(f"{self.out}: removed the earlier run's {', '.join(removed)} (overwritten)", flush=True)
        self.report = RunReport(self.out) if self.dist.is_main else None
        self._last_metrics: dict[str, Any] | None = None
        self._last_dets: list[dict[str, Any]] = []
        self._last_evaluator: Any = None  # the last evaluation's CocoEvaluator (rank 0), for the error analysis
        self._epoch_end_samples = 0

    # ------------------------------------------------------------------ setup
    def _find_resume(self, resume: bool | str | Path) -> dict[str, Any] | None:
        if resume is False or resume is None:
            return None
        path = self.out if resume is True else Path(resume)
        if path.is_dir():
            self.out = path if resume is not True else self.out
            path = path / "last.pt"
        if not path.exists():
            if resume is True and "TORCHELASTIC_RESTART_COUNT" in os.environ:
                # under torchrun, `--resume` means "resume if there is anything to resume": the first launch
                # starts fresh and an elastic restart (--max-restarts) continues from the last checkpoint
                return None
            raise CheckpointError(f"{path}: no checkpoint to resume from")
        state = load_checkpoint(path)
        check_training_state(state, path)  # a one-line CheckpointError for a malformed or weights-only file
        return state

    @staticmethod
    def _seed_everything(seed: int, deterministic: bool) -> None:
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if torch.backends.cudnn.is_available():
                torch.backends.cudnn.benchmark = False

    def _build_data(self) -> None:
        from ..data.coco import CocoDetection
        from ..data.collate import build_loader
        from ..data.layout import split_source
        from ..data.transforms import build_transforms

        d, t = self.cfg.data, self.cfg.train
        self.train_set = CocoDetection(self.data_root, d.train_split,
                                       source=split_source(self.data_root, d.train_split, d))
        self.val_set = CocoDetection(self.data_root, d.val_split, source=split_source(self.data_root, d.val_split, d))
        if self.dist.rank == 0:
            for ds in (self.train_set, self.val_set):
                print(f"data: {ds.source.describe()}", flush=True)
        if len(self.train_set) == 0:
            raise UserError(f"{self.data_root}: split '{d.train_split}' has no usable images")
        m = self.cfg.model
        ids, names = list(self.train_set.category_ids), list(self.train_set.class_names)
        if m.category_ids and m.category_ids != ids:
            raise ConfigError(f"{self.data_root}: categories differ from the run's config "
                              f"({len(ids)} vs {len(m.category_ids)} classes)")
        m.num_classes, m.category_ids, m.class_names = len(ids), ids, names
        self.train_sampler = ResumableSampler(len(self.train_set), shuffle=True, seed=t.seed,
                                              num_replicas=self.dist.world_size, rank=self.dist.rank)
        if d.group_by_aspect:  # batches of one orientation; same set_epoch / per_rank, built per rank
            self.train_sampler = GroupedBatchSampler(self.train_sampler, self.train_set.aspect_groups(),
                                                     t.batch_size)
        self.val_sampler = ResumableSampler(len(self.val_set), shuffle=False, pad=False,
                                            num_replicas=self.dist.world_size, rank=self.dist.rank)
        workers = d.num_workers
        self.train_loader = build_loader(SeededDataset(self.train_set, build_transforms(d, train=True)),
                                         t.batch_size, train=True, num_workers=workers,
                                         size_divisibility=d.size_divisibility, sampler=self.train_sampler,
                                         seed=t.seed)
        self.val_loader = build_loader(SeededDataset(self.val_set, build_transforms(d, train=False)),
                                       t.batch_size, train=False, num_workers=workers,
                                       size_divisibility=d.size_divisibility, sampler=self.val_sampler,
                                       seed=t.seed)

    def _build_model(self) -> None:
        from ..model import DynamicDETR
        from ..objective.criterion import SetCriterion

        cfg = self.cfg
        model = DynamicDETR(cfg.model).to(self.device)
        if self._init_weights is not None:  # fine-tuning: whatever fits; the rest (class heads) stays fresh
            transfer = transfer_weights(model, self._init_weights)
            self._init_weights = None
            if self.dist.is_main:
                print(transfer.summary(), flush=True)
        if self.dist.distributed and self.device.type == "cuda" and cfg.train.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place; same parameters
        self.model = model
        self.criterion = SetCriterion(cfg.model.num_classes, cfg.loss, cfg.model.class_loss,
                                      cfg.model.dense.center_radius)
        t = cfg.train
        groups = param_groups(model, t)
        self.optimizer = adamw(groups, t.lr, t.weight_decay, self.device)
        drop_at = [e / t.epochs for e in t.lr_drop_epochs if 0 < e < t.epochs]
        self.schedule = WarmupStepSchedule([g["lr"] for g in groups], t.warmup_iters, t.warmup_factor, drop_at,
                                           t.lr_gamma)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.ema = None
        if t.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
        self.ddp = model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            m = cfg.model
            # query selection leaves the learned boxes (and contents) unused; a batch without targets the labels
            unused = m.dense.enabled or m.decoder.dn_queries > 0 or m.decoder.num_hybrid_queries > 0
            self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                                 find_unused_parameters=unused)

    def _load_state(self, state: dict[str, Any]) -> None:
        check_compatible(state["model"], self.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        for k in self.state:
            if k in state:
                self.state[k] = state[k]
        if state.get("world_size", 1) != self.dist.world_size or state.get("batch_size") != self.cfg.train.batch_size:
            self.state["epoch_samples"] = 0  # a different sharding: restart the interrupted epoch
            self.state["epoch_stats"] = _new_epoch_stats()
        # each rank its own RNG states (torch, CUDA, numpy, python); checkpoints before them: rank 0's torch one
        rng = state.get("rng") or ([{"torch": state["rng_torch"]}] if "rng_torch" in state else None)
        if rng:
            dist_utils.restore_rng(rng, state.get("world_size", 1), self.dist)

    # ------------------------------------------------------------------ checkpoints
    def _state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **self.state,
            "minutes": self.minutes,
            "world_size": self.dist.world_size,
            "batch_size": self.cfg.train.batch_size,
        }

    def save(self, best: bool = False) -> None:
        rng = dist_utils.all_gather_objects(dist_utils.rng_state(self.device))  # every rank's (a collective)
        if not self.dist.is_main:
            return
        state = {**self._state_dict(), "rng": rng}
        save_checkpoint(self.out / "last.pt", state)
        meta = {"config": _json(self.cfg.to_dict())}
        weights = self.ema.module.state_dict() if self.ema is not None else self.model.state_dict()
        (self.out / "weights").mkdir(exist_ok=True)
        save_weights(self.out / "weights" / "last.safetensors", weights, meta)
        if best:
            save_checkpoint(self.out / "best.pt", state)
            save_weights(self.out / "weights" / "best.safetensors", weights, meta)

    # ------------------------------------------------------------------ loop
    def _progress(self, step: int) -> float:
        t = self.cfg.train
        total = t.epochs * math.ceil(self.train_sampler.per_rank() / t.batch_size / t.accumulate)
        p = step / max(total, 1)
        if self.minutes:
            p = max(p, self.state["elapsed"] / (60 * self.minutes))
        return min(p, 1.0)

    def _out_of_time(self) -> bool:
        return bool(self.minutes) and self.state["elapsed"] >= 60 * self.minutes

    def fit(self) -> TrainResult:
        t = self.cfg.train
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.dump(self.out / "config.yaml")
            for name in ("last.pt", "best.pt", "weights/last.safetensors", "weights/best.safetensors"):
                remove_stale_temp_files(self.out / name)  # left by a run killed while writing them
        if self.resumed and self.dist.is_main:
            print(f"resuming {self.out} at epoch {self.state['epoch'] + 1}, step {self.state['step']}", flush=True)
        status = "finished"
        with _StopFlag() as stop:
            while self.state["epoch"] < t.epochs:
                status = self._train_epoch(stop)
                if status not in ("epoch done", "time budget mid-epoch"):
                    break
                if status == "time budget mid-epoch":  # stopped inside an epoch: record it as a (partial) epoch
                    self._close_epoch()
                epoch = self.state["epoch"]
                last = epoch >= t.epochs or self._out_of_time()
                try:
                    metrics = self._evaluate(stop) if (epoch % t.eval_every == 0 or last) else None
                except _EvalInterrupted:
                    # keep the epoch's training: checkpoint it as trained but not ended (its samples seen, its
                    # loss sums kept), so that a resume evaluates it and writes its results.csv row
                    self.state["epoch"] -= 1
                    self.state["epoch_samples"] = self._epoch_end_samples
                    status = "interrupted"
                    break
                self._end_epoch(metrics)
                if self._out_of_time():
                    status = "time budget"
                    break
                status = "finished"
                if self.state["epoch"] < t.epochs and dist_utils.any_rank(stop.requested, self.device):
                    status = "interrupted"  # requested during the evaluation, which finished: the epoch is saved
                    break
            if status in ("interrupted", "stopped: non-finite"):
                stop.announce()
                self.save()
        metrics = self._write_final_metrics() if status in ("finished", "time budget") else None
        if metrics is not None:
            self._write_analysis()
        if self.report is not None:
            self.report.close()
        return TrainResult(self.out, metrics, self.state["epoch"], status)

    def _train_epoch(self, stop: _StopFlag) -> str:
        t = self.cfg.train
        epoch = self.state["epoch"]
        self.train_sampler.set_epoch(epoch, start=self.state["epoch_samples"])
        self.ddp.train()
        # the epoch's loss sums so far live in the checkpointed state, so that a resumed epoch (after a stop or
        # a kill) reports the mean over all of its steps in results.csv, not only over those after the resume
        stats = self.state["epoch_stats"]
        sums: dict[str, float] = defaultdict(float, stats["sums"])
        count, nonfinite_run, skipped = stats["count"], 0, stats["skipped"]
        # t0 is shifted back by the seconds the epoch already had before a resume (its results.csv time);
        # the run's `elapsed` already counts those seconds, so it only grows from now on
        t0 = _clock() - stats["seconds"]
        last_tick = _clock()
        # Accumulation windows are counted from the epoch's start and the last one may be shorter: it steps at
        # the epoch's end over the batches it has. So no gradient crosses an epoch boundary (an epoch-end
        # checkpoint holds no pending gradient, and a resume restarts at a window's start: checkpoints are only
        # written at window ends) and every batch is used; each window's loss is its mean over its batches.
        n_batches = math.ceil(self.train_sampler.per_rank() / t.batch_size)
        done = self.state["epoch_samples"] // t.batch_size  # all batches but the epoch's last are full
        self.optimizer.zero_grad(set_to_none=True)
        window_ok, pending, buffers = True, False, []
        committed = (self.state["epoch_samples"], self.state["epoch_stats"])
        iterator = self.train_loader
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(iterator, total=len(self.train_loader), desc=f"epoch {epoch + 1}/{t.epochs}",
                       dynamic_ncols=True, leave=True)
            iterator = bar
        lr = self.optimizer.param_groups[0]["lr"]
        for i, batch in enumerate(_until_loader_dies(iterator, stop), start=1):
            micro = done + i
            window_start = (micro - 1) // t.accumulate * t.accumulate  # batches of the epoch before this window
            window = min(t.accumulate, n_batches - window_start)
            boundary = micro - window_start >= window
            if micro - 1 == window_start:
                # a forward writes BatchNorm statistics (and any other buffer) before its loss is known: keep
                # the window's starting values to put back if its step is skipped (buffers are small)
                buffers = _snapshot_buffers(self.model)
            batch = batch.to(self.device)
            with autocast(self.device, t.amp):
                outputs = self.ddp(batch.images, batch.masks, batch.targets)
            losses = self.criterion(float32_outputs(outputs), batch.targets)
            loss = losses["loss"]
            loss_value = float(loss.detach())
            finite = not dist_utils.any_rank(not math.isfinite(loss_value), self.device)
            if finite:
                self.scaler.scale(loss / window).backward()
            window_ok = window_ok and finite
            pending = not boundary
            stepped = False
            if boundary:
                if window_ok:
                    stepped, lr = self._optimizer_step(lr)
                if stepped:
                    if self.ema is not None:
                        self.ema.update_parameters(self.model)
                    self.state["step"] += 1
                    nonfinite_run = 0
                else:
                    _restore_buffers(buffers)
                    skipped += 1
                    nonfinite_run += 1
                    self.state["nonfinite_total"] += 1
                    warnings.warn(f"non-finite loss or gradient at step {self.state['step']}: step skipped "
                                  f"({nonfinite_run} in a row)", RuntimeWarning, stacklevel=1)
                self.optimizer.zero_grad(set_to_none=True)
                window_ok = True
            now = _clock()
            self.state["elapsed"] += now - last_tick
            last_tick = now
            self.state["epoch_samples"] += len(batch.targets)
            if finite:
                count += 1
                for k, v in losses.items():
                    sums[k] += float(v.detach())
            self.state["epoch_stats"] = {"sums": dict(sums), "count": count, "skipped": skipped,
                                         "seconds": _clock() - t0}
            if boundary:
                committed = (self.state["epoch_samples"], self.state["epoch_stats"])
            stop.announce()
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
            elif self.dist.is_main and self.state["step"] % self.log_every == 0 and boundary:
                print(f"epoch {epoch + 1} step {self.state['step']} loss {loss_value:.4f} lr {lr:.2e} "
                      f"elapsed {self.state['elapsed'] / 60:.1f} min", flush=True)
            if self.report is not None and stepped:
                self.report.scalar("train/loss", loss_value, self.state["step"])
                self.report.scalar("train/lr", lr, self.state["step"])
            if nonfinite_run >= t.max_nonfinite_steps:
                if bar is not None:
                    bar.close()
                print(f"error: {nonfinite_run} non-finite steps in a row: stopping; the last good checkpoint "
                      f"is {self.out / 'last.pt'} (try a lower train.lr or train.amp=none)", file=sys.stderr)
                return "stopped: non-finite"
            if boundary and t.checkpoint_every and self.state["step"] % t.checkpoint_every == 0:
                self.save()
            stop_now = dist_utils.any_rank(stop.requested, self.device) if boundary else False
            if stop_now:
                if bar is not None:
                    bar.close()
                return "interrupted"
            if boundary and self._out_of_time():
                if bar is not None:
                    bar.close()
                self._epoch_sums = (sums, count, skipped, _clock() - t0, lr)
                return "time budget mid-epoch"
        if bar is not None:
            bar.close()
        if dist_utils.any_rank(stop.requested, self.device):  # the loader ended early on a stop request
            if pending:  # inside a window: its gradient is dropped, so a resume redoes its batches
                _restore_buffers(buffers)
                self.optimizer.zero_grad(set_to_none=True)
                self.state["epoch_samples"], self.state["epoch_stats"] = committed
            return "interrupted"
        self._epoch_sums = (sums, count, skipped, _clock() - t0, lr)
        self._close_epoch()
        return "epoch done"

    def _close_epoch(self) -> None:
        """Count the epoch as done (its samples seen so far are kept for `fit` to reopen it)."""
        self.state["epoch"] += 1
        self._epoch_end_samples = self.state["epoch_samples"]
        self.state["epoch_samples"] = 0

    def _optimizer_step(self, lr: float) -> tuple[bool, float]:
        """Unscale, clip and step at the end of an accumulation window: (whether the optimizer stepped, lr).
        False when the gradients are not finite. Under fp16 the GradScaler decides: unscale_, step and update
        always run together (skipping update() left the scaler "unscaled" and the next unscale_() raised), its
        step() skips the optimizer on inf / NaN gradients and update() backs the scale off."""
        t = self.cfg.train
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = t.clip_max_norm if t.clip_max_norm > 0 else float("inf")
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            lr = self.schedule.apply(self.optimizer, self.state["step"], self._progress(self.state["step"]))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale, lr  # a lower scale: inf / NaN found, step skipped
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if dist_utils.any_rank(not bool(torch.isfinite(norm)), self.device):
            return False, lr
        lr = self.schedule.apply(self.optimizer, self.state["step"], self._progress(self.state["step"]))
        self.optimizer.step()
        return True, lr

    def _evaluate(self, stop: _StopFlag | None = None) -> dict[str, Any] | None:
        """COCO metrics of the model (led by its EMA's when EMA is on). A stop request meanwhile raises
        `_EvalInterrupted`: at the next batch in a single process; in a distributed run (every rank must reach
        the evaluation's collectives) only when the signal killed the loader's workers."""
        names = dict(zip(self.cfg.model.category_ids, self.cfg.model.class_names, strict=True))
        gt = self.val_set.coco_gt()
        loader = self.val_loader
        if stop is not None and not self.dist.distributed:
            loader = _StopAwareLoader(loader, stop)
        amp = self.cfg.train.amp
        self._last_evaluator = None  # let the previous one's COCOeval go before the next is built
        raw_keep: dict[str, Any] = {}
        ema_keep: dict[str, Any] = {}
        try:
            metrics, dets = evaluate_model(self.model, loader, gt, names, self.device, amp, keep=raw_keep,
                                           desc="val")  # progress: rank 0 only, a line off a terminal
            if self.ema is not None:
                ema_metrics, ema_dets = evaluate_model(self.ema.module, loader, gt, names, self.device, amp,
                                                       keep=ema_keep, desc="val (EMA)")
        except RuntimeError:  # "DataLoader worker ... is killed by signal" once a stop is requested
            if stop is None or not stop.requested:
                raise
            raise _EvalInterrupted from None
        if self.ema is not None and metrics is not None:  # the other ranks get None
            ema_metrics["raw"] = {k: metrics[k] for k in AP_KEYS}
            metrics, dets = ema_metrics, ema_dets
        self._last_dets = dets
        self._last_evaluator = (ema_keep if self.ema is not None else raw_keep).get("evaluator")
        return metrics

    def _end_epoch(self, metrics: dict[str, Any] | None) -> None:
        sums, count, skipped, seconds, lr = self._epoch_sums
        self.state["epoch_stats"] = _new_epoch_stats()
        mean = {k: v / max(count, 1) for k, v in sums.items()}
        mean = dist_utils.all_reduce_mean(mean, self.device)
        best = False
        if metrics is not None and metrics["AP"] > self.state["best_ap"]:
            self.state["best_ap"] = metrics["AP"]
            best = True
        self.state["best_ap"] = dist_utils.broadcast_object(self.state["best_ap"])
        self.save(best=dist_utils.broadcast_object(best))
        if not self.dist.is_main:
            return
        row: dict[str, Any] = {"epoch": self.state["epoch"], "step": self.state["step"], "lr": lr,
                               "epoch_time_s": round(seconds, 1), "elapsed_min": round(self.state["elapsed"] / 60, 2),
                               "skipped_steps": skipped}
        row.update(mean)
        # the dynamic encoder's gates, scale attention and offsets (`DynamicEncoder.stats`): whether it is used
        row.update({k: round(v, 5) for k, v in self.model.encoder.stats().items()})
        if metrics is not None:
            self._last_metrics = metrics
            row.update({k: round(metrics[k], 2) for k in AP_KEYS})
            for k, v in metrics.get("raw", {}).items():
                row[f"raw_{k}"] = round(v, 2)
            self._draw_val_predictions()
        assert self.report is not None
        self.report.add_epoch(row, plot=metrics is not None)
        ap = f"  AP {metrics['AP']:.1f} AP50 {metrics['AP50']:.1f} APs {metrics['APs']:.1f}" if metrics else ""
        print(f"epoch {self.state['epoch']}: loss {mean.get('loss', math.nan):.4f}  {seconds:.0f}s{ap}", flush=True)

    def _draw_val_predictions(self, n: int = 8) -> None:
        from .visualize import draw_detections, save_grid

        names = dict(zip(self.cfg.model.category_ids, self.cfg.model.class_names, strict=True))
        ids = self.val_set.image_ids[:n] if hasattr(self.val_set, "image_ids") else []
        tiles = []
        for i, image_id in enumerate(ids):
            image, _ = self.val_set[i]
            dets = [d for d in self._last_dets if d["image_id"] == image_id]
            if not dets:
                tiles.append(torch.as_tensor(image))
                continue
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)])
            scores = torch.tensor([d["score"] for d in dets])
            labels = torch.tensor([d["category_id"] for d in dets])
            tiles.append(draw_detections(torch.as_tensor(image), boxes, scores, labels, names, threshold=0.3))
        if tiles:
            save_grid(tiles, self.out / "plots" / "val_predictions.png")

    def _write_final_metrics(self) -> dict[str, Any] | None:
        """metrics.json: the last evaluation of the run (EMA weights when EMA is on)."""
        metrics = self._last_metrics
        if not self.dist.is_main or metrics is None:
            return metrics
        data = {k: metrics[k] for k in AP_KEYS}
        data["per_class"] = metrics.get("per_class", {})
        if "raw" in metrics:
            data["raw"] = metrics["raw"]
        data.update(epoch=self.state["epoch"], step=self.state["step"], weights="ema" if self.ema else "raw")
        atomic_write_json(self.out / "metrics.json", data)
        return data

    def _write_analysis(self) -> None:
        """The error analysis of the last evaluation into plots/ (rank 0). A failure only warns: the run is done."""
        evaluator, self._last_evaluator = self._last_evaluator, None
        if not self.dist.is_main or evaluator is None:
            return
        from .analysis import write_analysis
        from .visualize import dataset_images

        try:
            write_analysis(self.out / "plots", evaluator, dataset_images(self.val_set, 8))
        except Exception as e:  # never lose a finished run's exit status over its figures
            print(f"warning: error analysis failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return
        print(f"error analysis (PR curves, confusion matrix, error breakdown): {self.out / 'plots'}", flush=True)


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `groups`, with PyTorch's fused kernel where it has one (CPU and CUDA, floating parameters):
    the same update as the default for-loop one (tests/engine/test_optimizer.py) at a third of its time (one
    step over cpu_small's parameters on 2 cores: 63 ms for-loop, 19 ms fused; docs/benchmarks.md, "Profile")."""
    params = [p for g in groups for p in g["params"]]
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


def param_groups(model: torch.nn.Module, t: Any) -> list[dict[str, Any]]:
    """AdamW parameter groups: the rest at `lr` first (its lr is the one logged), the backbone trunk at
    `lr_backbone`, and, when their multiplier is not 1, the encoder's offset / mask convs at
    `lr * lr_offset_mult` and the decoder's dynamic-filter generators at `lr * lr_dynamic_mult`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    special = [
        ("backbone", lambda n: n.startswith("backbone.body."), t.lr_backbone, True),
        ("offsets", lambda n: n.startswith("encoder.") and ".offset." in n, t.lr * t.lr_offset_mult,
         t.lr_offset_mult != 1.0),
        ("dynamic", lambda n: ".dynamic_conv.dynamic_layer." in n, t.lr * t.lr_dynamic_mult,
         t.lr_dynamic_mult != 1.0),
    ]
    taken: set[str] = set()
    extra = []
    for name, pick, lr, on in special:
        if not on:
            continue
        params = [p for n, p in named if n not in taken and pick(n)]
        taken.update(n for n, _ in named if pick(n))
        extra.append({"params": params, "lr": lr, "name": name})
    rest = [p for n, p in named if n not in taken]
    return [{"params": rest, "lr": t.lr, "name": "rest"}, *extra]


RESUME_OVERRIDABLE = ("train.epochs", "train.eval_every", "train.checkpoint_every", "train.max_nonfinite_steps",
                      "data.num_workers")
"""Config keys that a resumed run takes from the command line: the budget, how often to evaluate and checkpoint,
the non-finite patience, the loader's workers. Any other change (model, data geometry, optimisation, batch size,
seed) would make a different run from the checkpointed one."""


def resume_config(saved: Config, overrides: Sequence[str]) -> tuple[Config, list[str]]:
    """The checkpointed config of a resumed run with the command line's `key=value` overrides applied, and the
    overrides that changed it. Ones that repeat the run's values are ignored (the first command again, plus
    `--resume`); changing a key outside `RESUME_OVERRIDABLE` is a one-line ConfigError naming the keys."""
    if not overrides:
        return saved, []
    new = apply_overrides(saved, list(overrides))
    before, after = saved.to_dict(), new.to_dict()
    changed: dict[str, str] = {}  # key -> its override
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if _lookup(before, key) != _lookup(after, key):
            changed[key] = item.strip()
    refused = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if refused:
        raise ConfigError(f"--resume cannot change {', '.join(refused)} (a resumed run keeps its config except "
                          f"{', '.join(RESUME_OVERRIDABLE)}); start a new run with another --out for that")
    return new, list(changed.values())


def _lookup(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def _until_loader_dies(iterator, stop: _StopFlag):
    """Batches from `iterator`; if a DataLoader worker dies *because a stop was requested* (a signal sent to
    the whole process group, e.g. Ctrl-C or `kill -TERM -PGID`), end the epoch quietly so that the stop path
    writes its checkpoint. Any other failure propagates."""
    it = iter(iterator)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stop.requested:
                return
            raise
        yield batch


class _EvalInterrupted(Exception):
    """A stop request cut an evaluation short (its metrics would be partial: none are reported)."""


class _StopAwareLoader:
    """The batches of `loader`, raising `_EvalInterrupted` at the next one once a stop is requested."""

    def __init__(self, loader, stop: _StopFlag) -> None:
        self.loader = loader
        self.stop = stop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.stop.requested:
                raise _EvalInterrupted
            yield batch


def _new_epoch_stats() -> dict[str, Any]:
    return {"sums": {}, "count": 0, "skipped": 0, "seconds": 0.0}


def _snapshot_buffers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of each of the model's buffers: BatchNorm statistics and counters."""
    return [(b, b.detach().clone()) for b in model.buffers()]


def _restore_buffers(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, saved in snapshot:
            buffer.copy_(saved)


def float32_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """Model outputs in float32 for the loss (they may be bf16 under autocast); integer tensors unchanged."""
    def cast(v):
        if torch.is_tensor(v):
            return v.float() if v.is_floating_point() else v
        if isinstance(v, list):
            return [cast(x) for x in v]
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v
    return cast(outputs)


def _json(data: Any) -> str:
    import json

    return json.dumps(data)


