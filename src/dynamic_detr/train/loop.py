"""The epoch loop: forward, set loss, backward in accumulation windows, a step at each window's end (skipped, with
the BatchNorm statistics put back, when the loss or the gradients are not finite), EMA, logging, checkpoints,
and the stop and time-budget checks at window ends."""

from __future__ import annotations

import functools
import math
import sys
import warnings
from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from .. import distributed as dist_utils
from ..evaluate.inference import autocast
from . import stopping
from .state import save
from .stopping import StopFlag, until_loader_dies

if TYPE_CHECKING:
    from .trainer import Trainer


def train_one_epoch(trainer: Trainer, stop: StopFlag) -> str:
    """One epoch (or its rest, after a resume) of `trainer`'s run, in accumulation windows: "epoch done",
    "time budget mid-epoch", "interrupted" or "stopped: non-finite"."""
    t, optim = trainer.cfg.train, trainer.optim
    epoch = trainer.state["epoch"]
    trainer.train_sampler.set_epoch(epoch, start=trainer.state["epoch_samples"],
                                    progress=functools.partial(trainer.sample_progress, epoch))
    trainer.ddp.train()
    # the epoch's loss sums so far live in the checkpointed state, so that a resumed epoch (after a stop or
    # a kill) reports the mean over all of its steps in results.csv, not only over those after the resume
    stats = trainer.state["epoch_stats"]
    sums: dict[str, float] = defaultdict(float, stats["sums"])
    count, nonfinite_run, skipped = stats["count"], 0, stats["skipped"]
    # t0 is shifted back by the seconds the epoch already had before a resume (its results.csv time);
    # the run's `elapsed` already counts those seconds, so it only grows from now on
    t0 = stopping.clock() - stats["seconds"]
    last_tick = stopping.clock()
    # Accumulation windows are counted from the epoch's start and the last one may be shorter: it steps at
    # the epoch's end over the batches it has. So no gradient crosses an epoch boundary (an epoch-end
    # checkpoint holds no pending gradient, and a resume restarts at a window's start: checkpoints are only
    # written at window ends) and every batch is used; each window's loss is its mean over its batches.
    n_batches = math.ceil(trainer.train_sampler.per_rank() / t.batch_size)
    done = trainer.state["epoch_samples"] // t.batch_size  # all batches but the epoch's last are full
    optim.optimizer.zero_grad(set_to_none=True)
    window_ok, pending, buffers = True, False, []
    committed = (trainer.state["epoch_samples"], trainer.state["epoch_stats"])
    iterator = trainer.train_loader
    bar = None
    if trainer.progress and trainer.dist.is_main:
        from tqdm import tqdm

        bar = tqdm(iterator, total=len(trainer.train_loader), desc=f"epoch {epoch + 1}/{t.epochs}",
                   dynamic_ncols=True, leave=True)
        iterator = bar
    lr = optim.optimizer.param_groups[0]["lr"]
    for i, batch in enumerate(until_loader_dies(iterator, stop), start=1):
        micro = done + i
        window_start = (micro - 1) // t.accumulate * t.accumulate  # batches of the epoch before this window
        window = min(t.accumulate, n_batches - window_start)
        boundary = micro - window_start >= window
        if micro - 1 == window_start:
            # a forward writes BatchNorm statistics (and any other buffer) before its loss is known: keep
            # the window's starting values to put back if its step is skipped (buffers are small)
            buffers = snapshot_buffers(trainer.model)
        batch = batch.to(trainer.device)
        with autocast(trainer.device, t.amp):
            outputs = trainer.ddp(batch.images, batch.masks, batch.targets)
        losses = trainer.criterion(outputs, batch.targets)
        loss = losses["loss"]
        loss_value = float(loss.detach())
        finite = not dist_utils.any_rank(not math.isfinite(loss_value), trainer.device)
        if finite:
            optim.scaler.scale(loss / window).backward()
        window_ok = window_ok and finite
        pending = not boundary
        stepped = False
        if boundary:
            if window_ok:
                stepped, lr = optim.step(lr, trainer.state["step"], trainer.run_progress(trainer.state["step"]))
            if stepped:
                if optim.ema is not None:
                    optim.ema.update_parameters(trainer.model)
                trainer.state["step"] += 1
                nonfinite_run = 0
            else:
                restore_buffers(buffers)
                skipped += 1
                nonfinite_run += 1
                trainer.state["nonfinite_total"] += 1
                warnings.warn(f"non-finite loss or gradient at step {trainer.state['step']}: step skipped "
                              f"({nonfinite_run} in a row)", RuntimeWarning, stacklevel=1)
            optim.optimizer.zero_grad(set_to_none=True)
            window_ok = True
        now = stopping.clock()
        # every rank reads the budget and a time-based lr drop from the same training time (the slowest rank's):
        # on its own clock one rank could stop (and evaluate) or drop the lr a step before the others
        trainer.state["elapsed"] = dist_utils.max_over_ranks(trainer.state["elapsed"] + now - last_tick,
                                                             trainer.device)
        last_tick = now
        trainer.state["epoch_samples"] += len(batch.targets)
        if finite:
            count += 1
            for k, v in losses.items():
                sums[k] += float(v.detach())
        trainer.state["epoch_stats"] = {"sums": dict(sums), "count": count, "skipped": skipped,
                                     "seconds": stopping.clock() - t0}
        if boundary:
            committed = (trainer.state["epoch_samples"], trainer.state["epoch_stats"])
        stop.announce()
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
        elif trainer.dist.is_main and trainer.state["step"] % trainer.log_every == 0 and boundary:
            print(f"epoch {epoch + 1} step {trainer.state['step']} loss {loss_value:.4f} lr {lr:.2e} "
                  f"elapsed {trainer.state['elapsed'] / 60:.1f} min", flush=True)
        if trainer.report is not None and stepped:
            trainer.report.scalar("train/loss", loss_value, trainer.state["step"])
            trainer.report.scalar("train/lr", lr, trainer.state["step"])
        if nonfinite_run >= t.max_nonfinite_steps:
            if bar is not None:
                bar.close()
            print(f"error: {nonfinite_run} non-finite steps in a row: stopping; the last good checkpoint "
                  f"is {trainer.out / 'last.pt'} (try a lower train.lr or train.amp=none)", file=sys.stderr)
            return "stopped: non-finite"
        if boundary and t.checkpoint_every and trainer.state["step"] % t.checkpoint_every == 0:
            save(trainer)
        stop_now = dist_utils.any_rank(stop.requested, trainer.device) if boundary else False
        if stop_now:
            if bar is not None:
                bar.close()
            return "interrupted"
        if boundary and trainer.out_of_time():
            if bar is not None:
                bar.close()
            trainer.epoch_sums = (sums, count, skipped, stopping.clock() - t0, lr)
            return "time budget mid-epoch"
    if bar is not None:
        bar.close()
    if dist_utils.any_rank(stop.requested, trainer.device):  # the loader ended early on a stop request
        if pending:  # inside a window: its gradient is dropped, so a resume redoes its batches
            restore_buffers(buffers)
            optim.optimizer.zero_grad(set_to_none=True)
            trainer.state["epoch_samples"], trainer.state["epoch_stats"] = committed
        return "interrupted"
    trainer.epoch_sums = (sums, count, skipped, stopping.clock() - t0, lr)
    close_epoch(trainer)
    return "epoch done"


def close_epoch(trainer: Trainer) -> None:
    """Count the epoch as done (its samples seen so far are kept for `fit` to reopen it)."""
    trainer.state["epoch"] += 1
    trainer.epoch_end_samples = trainer.state["epoch_samples"]
    trainer.state["epoch_samples"] = 0


def snapshot_buffers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of each of the model's buffers: BatchNorm statistics and counters."""
    return [(b, b.detach().clone()) for b in model.buffers()]


def restore_buffers(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buffer, saved in snapshot:
            buffer.copy_(saved)
