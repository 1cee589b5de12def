"""The training loop: AdamW (separate backbone lr), warm-up + step or flat-cosine schedule, clipping,
accumulation, AMP, EMA, the augmentation policy's progress, epoch and time budgets, early stopping,
checkpoint/resume, evaluation, and the run folder.

    run/config.yaml          resolved config (num_classes and category ids filled from the dataset)
    run/results.csv          one row per epoch: every loss term, lr, time, val AP..APl, the dynamic encoder's gates,
                             scale attention and offsets (`DynamicEncoder.stats`); with train.patience, the
                             evaluated epochs' epochs_without_gain (early_stopping.py)
    run/tensorboard/         TensorBoard events
    run/last.pt, best.pt     full training state (atomic writes; `weights_only` loadable)
    run/weights/last.safetensors, best.safetensors   model weights (+ config in the metadata)
    run/plots/               loss.png, ap.png, val_predictions.png, and at the end the error analysis of the last
                             evaluation (evaluate/analysis.py): pr_curves, confusion_matrix, errors, val_gt_vs_pred
    run/metrics.json         final COCO evaluation (and `stopped_early`: why, when early stopping ended the run)
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed as dist_utils
from ..config import Config
from ..data.loaders import eval_loader, load_split, train_loader
from ..errors import ConfigError, UserError
from ..evaluate.inference import effective_amp
from ..fileio import remove_stale_temp_files
from ..model import DynamicDETR
from ..model.loading import read_trained, transfer_weights
from ..objective.criterion import SetCriterion
from .early_stopping import Plateau, can_stop, plateau, stopped_line
from .loop import close_epoch, train_one_epoch
from .optim import Optimization
from .report import RunReport
from .rundir import clear_run
from .state import find_resume, load_state, new_epoch_stats, resume_config, save
from .stopping import EvalInterrupted, StopFlag, out_of_time
from .validation import end_epoch, evaluate, write_analysis, write_final_metrics


@dataclass
class TrainResult:
    out: Path
    metrics: dict[str, Any] | None
    epochs_done: int
    status: str
    """"finished", "time budget", "stopped early" (`train.patience`: no AP gain; a finished run too),
    "interrupted" or "stopped: non-finite"."""


class Trainer:
    """Train `cfg` on the COCO-format dataset at `data` and write everything to `out`.

    `epochs` / `minutes`: the budget (either or both; the run stops at whichever comes first), and with
    `train.patience` early stopping (early_stopping.py) when the val AP stops improving.
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
        self.out, resume_state = find_resume(self.out, resume)
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
        t = cfg.train
        if t.patience and not can_stop(t.patience, t.eval_every, t.epochs) and self.dist.is_main:
            warnings.warn(f"train.patience={t.patience} cannot end this run early: of its {t.epochs} epochs, "
                          f"evaluated every {t.eval_every}, none before the last is evaluated {t.patience} "
                          "epochs after the first evaluation", UserWarning, stacklevel=2)
        self.state = {"epoch": 0, "epoch_samples": 0, "step": 0, "elapsed": 0.0, "best_ap": -1.0,
                      "nonfinite_total": 0, "epoch_stats": new_epoch_stats(), "val_history": []}
        """`val_history`: [epoch, AP] of each evaluation, early stopping's record (a checkpoint from before it
        has none: counting starts at the resume)."""
        self.resumed = resume_state is not None
        if resume_state is not None:
            load_state(self, resume_state)
        # every rank must start from the same state (multi-node without a shared file system: only rank 0
        # may have found last.pt); a collective, so it runs on every rank, resumed or not
        dist_utils.check_same_state(self.model, resumed=self.resumed, epoch=self.state["epoch"],
                                    step=self.state["step"], epoch_samples=self.state["epoch_samples"])
        if overwrite and self.dist.is_main:
            removed = clear_run(self.out)
            if removed:
                print(f"{self.out}: removed the earlier run's {', '.join(removed)} (overwritten)", flush=True)
        self.report = RunReport(self.out) if self.dist.is_main else None
        if self.report is not None and self.resumed:
            self.report.drop_after(self.state["epoch"])
        self.last_metrics: dict[str, Any] | None = None
        self.last_dets: list[dict[str, Any]] = []
        self.last_evaluator: Any = None  # the last evaluation's CocoEvaluator (rank 0), for the error analysis
        self.epoch_sums: tuple[dict[str, float], int, int, float, float] = ({}, 0, 0, 0.0, 0.0)
        """The closed epoch's (loss sums, batches counted, steps skipped, seconds, lr), for its results.csv row."""
        self.epoch_end_samples = 0

    # ------------------------------------------------------------------ setup
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
        d, t = self.cfg.data, self.cfg.train
        self.train_set = load_split(self.data_root, d.train_split, d)
        self.val_set = load_split(self.data_root, d.val_split, d)
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
        ranks = {"world_size": self.dist.world_size, "rank": self.dist.rank}
        self.train_loader, self.train_sampler = train_loader(self.train_set, d, t.batch_size, t.seed, **ranks)
        self.val_loader = eval_loader(self.val_set, d, t.batch_size, seed=t.seed, **ranks)

    def _build_model(self) -> None:
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
        self.optim = Optimization.build(model, cfg.train, self.device, floor_from=cfg.data.aug_stop)
        self.ddp = model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            m = cfg.model
            # query selection leaves the learned boxes (and contents) unused; a batch without targets the labels
            unused = m.dense.enabled or m.decoder.dn_queries > 0 or m.decoder.num_hybrid_queries > 0
            self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                                 find_unused_parameters=unused)

    def save(self, best: bool = False) -> None:
        """Checkpoint the run (`state.save`; a collective: every rank calls it)."""
        save(self, best)

    # ------------------------------------------------------------------ loop
    def steps_per_epoch(self) -> int:
        t = self.cfg.train
        return math.ceil(self.train_sampler.per_rank() / t.batch_size / t.accumulate)

    def run_progress(self, step: int) -> float:
        """The fraction of the run done at optimizer step `step`: of its steps, or of its minutes if further."""
        p = step / max(self.cfg.train.epochs * self.steps_per_epoch(), 1)
        if self.minutes:
            p = max(p, self.state["elapsed"] / (60 * self.minutes))
        return min(p, 1.0)

    def sample_progress(self, epoch: int, position: int) -> float:
        """The run's progress at the step that trains the sample at `position` of this rank's epoch `epoch`, for
        the augmentation policy (data/policy.py): `run_progress` of that step counted from the epoch's start
        (skipped non-finite steps counted), so the same in a resumed run; with a time budget the minutes' share
        is read now, when the loader draws the item (a few batches ahead of the step)."""
        t = self.cfg.train
        window = position // t.batch_size // t.accumulate  # accumulation windows restart at each epoch
        return self.run_progress(epoch * self.steps_per_epoch() + window)

    def out_of_time(self) -> bool:
        return out_of_time(self.minutes, self.state["elapsed"])

    def plateau(self) -> Plateau | None:
        """Early stopping's view of the run's val AP so far (the same on every rank: `end_epoch` broadcasts it)."""
        t = self.cfg.train
        return plateau(self.state["val_history"], t.patience, t.min_delta)

    def _already_stopped(self) -> bool:
        """A resumed run whose AP history already meets its `train.patience` (it stopped early, and the resume
        did not raise the patience): nothing to train. Says so on rank 0."""
        p = self.plateau() if self.resumed else None
        if p is None or not p.stop or self.state["epoch"] >= self.cfg.train.epochs:
            return False
        if self.dist.is_main:
            print(f"{self.out}: {stopped_line(p, self.cfg.train.min_delta)}; with train.patience="
                  f"{self.cfg.train.patience} there is nothing to train (a larger train.patience, or 0 = off, "
                  f"trains on)", flush=True)
        return True

    def fit(self) -> TrainResult:
        t = self.cfg.train
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.dump(self.out / "config.yaml")
            for name in ("last.pt", "best.pt", "weights/last.safetensors", "weights/best.safetensors"):
                remove_stale_temp_files(self.out / name)  # left by a run killed while writing them
        if self.resumed and self.dist.is_main:
            print(f"resuming {self.out} at epoch {self.state['epoch'] + 1}, step {self.state['step']}", flush=True)
        already_stopped = self._already_stopped()
        status = "stopped early" if already_stopped else "finished"
        stopped_early: Plateau | None = None
        with StopFlag() as stop:
            while not already_stopped and self.state["epoch"] < t.epochs:
                status = train_one_epoch(self, stop)
                if status not in ("epoch done", "time budget mid-epoch"):
                    break
                if status == "time budget mid-epoch":  # stopped inside an epoch: record it as a (partial) epoch
                    close_epoch(self)
                epoch = self.state["epoch"]
                last = epoch >= t.epochs or self.out_of_time()
                try:
                    metrics = evaluate(self, stop) if (epoch % t.eval_every == 0 or last) else None
                except EvalInterrupted:
                    # keep the epoch's training: checkpoint it as trained but not ended (its samples seen, its
                    # loss sums kept), so that a resume evaluates it and writes its results.csv row
                    self.state["epoch"] -= 1
                    self.state["epoch_samples"] = self.epoch_end_samples
                    status = "interrupted"
                    break
                end_epoch(self, metrics)
                p = self.plateau()
                # p.epoch == epoch: this epoch was evaluated (known on every rank; only rank 0 holds `metrics`)
                if p is not None and p.stop and p.epoch == epoch < t.epochs:
                    stopped_early, status = p, "stopped early"
                    if self.dist.is_main:
                        print(stopped_line(p, t.min_delta), flush=True)
                    break
                if self.out_of_time():
                    status = "time budget"
                    break
                status = "finished"
                if self.state["epoch"] < t.epochs and dist_utils.any_rank(stop.requested, self.device):
                    status = "interrupted"  # requested during the evaluation, which finished: the epoch is saved
                    break
            if status in ("interrupted", "stopped: non-finite"):
                stop.announce()
                save(self)
        metrics = (write_final_metrics(self, stopped_early)
                   if status in ("finished", "time budget", "stopped early") else None)
        if metrics is not None:
            write_analysis(self)
        if self.report is not None:
            self.report.close()
        return TrainResult(self.out, metrics, self.state["epoch"], status)
