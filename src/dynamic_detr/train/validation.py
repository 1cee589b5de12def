"""Validation inside a run: COCO evaluation of the model (its EMA's, when on), the epoch's end (row, best,
checkpoint, val_predictions.png), and the run's end (metrics.json, the error analysis into plots/)."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed as dist_utils
from ..evaluate import analysis
from ..evaluate.inference import evaluate_model
from ..evaluate.metrics import AP_NAMES, metrics_json
from ..fileio import atomic_write_json
from ..visualize import dataset_images, draw_detections, save_grid
from .early_stopping import Plateau
from .state import new_epoch_stats, save
from .stopping import EvalInterrupted, StopAwareLoader, StopFlag

if TYPE_CHECKING:
    from .trainer import Trainer


def evaluate(trainer: Trainer, stop: StopFlag | None = None) -> dict[str, Any] | None:
    """COCO metrics of the model (led by its EMA's when EMA is on). A stop request meanwhile raises
    `EvalInterrupted`: at the next batch in a single process; in a distributed run (every rank must reach
    the evaluation's collectives) only when the signal killed the loader's workers."""
    names = trainer.cfg.model.names()
    ema = trainer.optim.ema
    gt = trainer.val_set.coco_gt()
    loader = trainer.val_loader
    if stop is not None and not trainer.dist.distributed:
        loader = StopAwareLoader(loader, stop)
    amp = trainer.cfg.train.amp
    trainer.last_evaluator = None  # let the previous one's COCOeval go before the next is built
    raw_keep: dict[str, Any] = {}
    ema_keep: dict[str, Any] = {}
    try:
        metrics, dets = evaluate_model(trainer.model, loader, gt, names, trainer.device, amp, keep=raw_keep,
                                       desc="val")  # progress: rank 0 only, a line off a terminal
        if ema is not None:
            ema_metrics, ema_dets = evaluate_model(ema.module, loader, gt, names, trainer.device, amp,
                                                   keep=ema_keep, desc="val (EMA)")
    except RuntimeError:  # "DataLoader worker ... is killed by signal" once a stop is requested
        if stop is None or not stop.requested:
            raise
        raise EvalInterrupted from None
    if ema is not None and metrics is not None:  # the other ranks get None
        ema_metrics["raw"] = {k: metrics[k] for k in AP_NAMES}
        metrics, dets = ema_metrics, ema_dets
    trainer.last_dets = dets
    trainer.last_evaluator = (ema_keep if ema is not None else raw_keep).get("evaluator")
    return metrics


def end_epoch(trainer: Trainer, metrics: dict[str, Any] | None) -> None:
    """Close the epoch: mean losses over ranks, best AP and AP history, its results.csv row and printed line, then
    the checkpoint. The row comes first, so that whatever a checkpoint says is done is in the run's records: a
    kill between the two leaves a row that the resumed run, re-doing the epoch's end, replaces."""
    sums, count, skipped, seconds, lr = trainer.epoch_sums
    trainer.state["epoch_stats"] = new_epoch_stats()
    mean = {k: v / max(count, 1) for k, v in sums.items()}
    mean = dist_utils.all_reduce_mean(mean, trainer.device)
    # rank 0 evaluated: every rank takes its AP, so the best AP and the early-stopping history (checkpointed)
    # are the same everywhere and every rank decides the same way
    ap = dist_utils.broadcast_object(metrics["AP"] if metrics is not None else None)
    best = False
    if ap is not None:
        trainer.state["val_history"] = [*trainer.state["val_history"], [trainer.state["epoch"], ap]]
        if ap > trainer.state["best_ap"]:
            trainer.state["best_ap"] = ap
            best = True
    if trainer.dist.is_main:
        _write_row(trainer, metrics, mean, skipped, seconds, lr)
    save(trainer, best=best)


def _write_row(trainer: Trainer, metrics: dict[str, Any] | None, mean: dict[str, float], skipped: int,
               seconds: float, lr: float) -> None:
    row: dict[str, Any] = {"epoch": trainer.state["epoch"], "step": trainer.state["step"], "lr": lr,
                           "epoch_time_s": round(seconds, 1), "elapsed_min": round(trainer.state["elapsed"] / 60, 2),
                           "skipped_steps": skipped}
    row.update(mean)
    # the dynamic encoder's gates, scale attention and offsets (`DynamicEncoder.stats`): whether it is used
    row.update({k: round(v, 5) for k, v in trainer.model.encoder.stats().items()})
    if metrics is not None:
        trainer.last_metrics = metrics
        row.update({k: round(metrics[k], 2) for k in AP_NAMES})
        for k, v in metrics.get("raw", {}).items():
            row[f"raw_{k}"] = round(v, 2)
        if trainer.cfg.train.patience:
            p = trainer.plateau()
            row["epochs_without_gain"] = p.epochs_without_gain if p is not None else 0
        draw_val_predictions(trainer)
    assert trainer.report is not None
    trainer.report.add_epoch(row, plot=metrics is not None)
    ap = f"  AP {metrics['AP']:.1f} AP50 {metrics['AP50']:.1f} APs {metrics['APs']:.1f}" if metrics else ""
    print(f"epoch {trainer.state['epoch']}: loss {mean.get('loss', math.nan):.4f}  {seconds:.0f}s{ap}", flush=True)


def draw_val_predictions(trainer: Trainer, n: int = 8) -> None:
    """plots/val_predictions.png: the last evaluation's detections on the first `n` val images."""
    names = trainer.cfg.model.names()
    ids = trainer.val_set.image_ids[:n] if hasattr(trainer.val_set, "image_ids") else []
    tiles = []
    for i, image_id in enumerate(ids):
        image, _ = trainer.val_set[i]
        dets = [d for d in trainer.last_dets if d["image_id"] == image_id]
        if not dets:
            tiles.append(torch.as_tensor(image))
            continue
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)])
        scores = torch.tensor([d["score"] for d in dets])
        labels = torch.tensor([d["category_id"] for d in dets])
        tiles.append(draw_detections(torch.as_tensor(image), boxes, scores, labels, names, threshold=0.3))
    if tiles:
        save_grid(tiles, trainer.out / "plots" / "val_predictions.png")


def write_final_metrics(trainer: Trainer, stopped_early: Plateau | None = None) -> dict[str, Any] | None:
    """metrics.json: the last evaluation of the run (EMA weights when EMA is on); with `stopped_early`, why the
    run ended before its last epoch."""
    metrics = trainer.last_metrics
    if not trainer.dist.is_main or metrics is None:
        return metrics
    data = metrics_json(metrics)
    data.update(epoch=trainer.state["epoch"], step=trainer.state["step"], weights="ema" if trainer.optim.ema else "raw")
    if stopped_early is not None:
        t = trainer.cfg.train
        data["stopped_early"] = {"epoch": stopped_early.epoch, "patience": t.patience, "min_delta": t.min_delta,
                                 "epochs_without_gain": stopped_early.epochs_without_gain,
                                 "best_AP": stopped_early.best_ap, "best_epoch": stopped_early.best_epoch}
    atomic_write_json(trainer.out / "metrics.json", data)
    return data


def write_analysis(trainer: Trainer) -> None:
    """The error analysis of the last evaluation into plots/ (rank 0). A failure only warns: the run is done."""
    evaluator, trainer.last_evaluator = trainer.last_evaluator, None
    if not trainer.dist.is_main or evaluator is None:
        return
    try:
        analysis.write_analysis(trainer.out / "plots", evaluator, dataset_images(trainer.val_set, 8))
    except Exception as e:  # never lose a finished run's exit status over its figures
        print(f"warning: error analysis failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return
    print(f"error analysis (PR curves, confusion matrix, error breakdown): {trainer.out / 'plots'}", flush=True)
