"""Early stopping: end a run whose val AP has stopped improving (`train.patience`, `train.min_delta`).

The rule is Keras' `EarlyStopping` (as Ultralytics' `patience` and RF-DETR's early stopping apply it): an
evaluation *gains* when its AP is above the reference AP by more than `min_delta`; the reference is the first
evaluation's AP and moves to each evaluation that gains. The run stops at an evaluation that comes `patience`
or more epochs after the reference's epoch.

Patience counts epochs, not evaluations: with `train.eval_every=k` the AP is known only every k epochs, so the
stop falls on the first evaluation at least `patience` epochs after the last gain (the config requires
patience >= k, else it would always stop at the first evaluation without a gain).

The decision is a pure function of the run's (epoch, AP) history, which the checkpoint holds
(`trainer.state["val_history"]`): it survives `--resume`, and it is the same on every rank of a distributed run,
whose rank 0 evaluates and broadcasts each AP before any rank appends it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Plateau:
    """Where a run's val AP stands after its last evaluation."""

    epoch: int
    """The last evaluated epoch."""
    gain_epoch: int
    """The epoch of the reference AP: the last evaluation that gained more than `min_delta` (or the first)."""
    epochs_without_gain: int
    """`epoch - gain_epoch`."""
    best_ap: float
    """The highest AP of the history (what best.pt holds)."""
    best_epoch: int
    """The first epoch that reached `best_ap`."""
    stop: bool
    """Whether `epochs_without_gain` reached the patience (never with patience 0: off)."""


def plateau(history: Sequence[tuple[int, float]], patience: int, min_delta: float) -> Plateau | None:
    """The plateau of `history`, (epoch, AP) pairs in epoch order; None before the first evaluation.

    An AP equal to the reference (or above it by `min_delta` or less) is no gain; a NaN AP never gains.
    `patience` 0 turns stopping off (the counts are still given)."""
    if not history:
        return None
    gain_epoch, reference = history[0]
    best_epoch, best_ap = history[0]
    for epoch, ap in history[1:]:
        if ap > reference + min_delta or (math.isnan(reference) and not math.isnan(ap)):
            gain_epoch, reference = epoch, ap
        if ap > best_ap or (math.isnan(best_ap) and not math.isnan(ap)):
            best_epoch, best_ap = epoch, ap
    epoch = history[-1][0]
    waited = epoch - gain_epoch
    return Plateau(epoch=epoch, gain_epoch=gain_epoch, epochs_without_gain=waited, best_ap=best_ap,
                   best_epoch=best_epoch, stop=patience > 0 and waited >= patience)


def stopped_line(p: Plateau, min_delta: float) -> str:
    """The run's summary line when it stops early."""
    return (f"stopped early at epoch {p.epoch}: no AP gain over min_delta ({min_delta:g}) for "
            f"{p.epochs_without_gain} epochs (best {p.best_ap:.2f} at epoch {p.best_epoch})")


def can_stop(patience: int, eval_every: int, epochs: int) -> bool:
    """Whether early stopping can end a run of `epochs` epochs before its last: some evaluation before the last
    epoch must come `patience` epochs after the first one (at epoch `eval_every`). False means the setting
    does nothing in this run (the trainer warns)."""
    if patience <= 0:
        return False
    last_before_end = (epochs - 1) // eval_every * eval_every  # the last evaluated epoch before the last epoch
    return last_before_end - eval_every >= patience
