"""Learning-rate schedules: linear warm-up, then step drops (paper: 1x = 12 epochs, x0.1 after epoch 11) or
DEIM's flat-cosine (`train.lr_schedule`).

Progress is a fraction of the run, so the same schedule serves an epoch budget (`step / total_steps`) and a
time budget (`elapsed / minutes`): the drop comes at `lr_drop_epochs / epochs` of the run either way, and a
resumed run, which restores its step and elapsed time, lands on the same lr. The warm-up counts optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import TrainConfig


@dataclass
class Schedule:
    """Per parameter group `base_lrs[i] x factor(step, progress)`; the warm-up rises linearly from
    `warmup_factor` to 1 over the first `warmup_iters` optimizer steps."""

    base_lrs: list[float]
    warmup_iters: int
    warmup_factor: float

    def warmup(self, step: int) -> float:
        if step >= self.warmup_iters:
            return 1.0
        alpha = step / max(self.warmup_iters, 1)
        return self.warmup_factor * (1 - alpha) + alpha

    def factor(self, step: int, progress: float) -> float:
        raise NotImplementedError

    def apply(self, optimizer, step: int, progress: float) -> float:
        """Set each param group's lr; return the first group's."""
        f = self.factor(step, progress)
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f
        return optimizer.param_groups[0]["lr"]


@dataclass
class WarmupStepSchedule(Schedule):
    drop_at: list[float]
    """Fractions of the run after which lr is multiplied by `gamma`."""
    gamma: float

    def factor(self, step: int, progress: float) -> float:
        return self.gamma ** sum(progress >= p for p in self.drop_at) * self.warmup(step)


@dataclass
class FlatCosineSchedule(Schedule):
    """DEIM's FlatCosineLRScheduler (after RTMDet's flat-cosine), on fractions of the run: after the warm-up the
    lr stays at its peak until `flat_until`, follows a half cosine down to `min_factor` x its peak at
    `floor_from` (DEIM: where its no-augmentation epochs begin) and stays there to the end. DEIM's warm-up is
    quadratic from 0 over 2000 iterations; this one is the step schedule's (linear from `warmup_factor`)."""

    flat_until: float
    floor_from: float
    min_factor: float

    def factor(self, step: int, progress: float) -> float:
        if progress < self.flat_until:
            f = 1.0
        elif progress >= self.floor_from:
            f = self.min_factor
        else:
            t = (progress - self.flat_until) / (self.floor_from - self.flat_until)
            f = self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return f * self.warmup(step)


def build_schedule(t: TrainConfig, base_lrs: list[float], floor_from: float = 1.0) -> Schedule:
    """`t.lr_schedule`'s schedule over the parameter groups' `base_lrs`; `floor_from` is where flat_cosine
    reaches its floor (`data.aug_stop`: the no-augmentation tail, 1 = the end of the run)."""
    if t.lr_schedule == "flat_cosine":
        return FlatCosineSchedule(base_lrs, t.warmup_iters, t.warmup_factor, t.lr_flat_until, floor_from,
                                  t.lr_min_factor)
    drop_at = [e / t.epochs for e in t.lr_drop_epochs if 0 < e < t.epochs]  # fractions of the run
    return WarmupStepSchedule(base_lrs, t.warmup_iters, t.warmup_factor, drop_at, t.lr_gamma)
