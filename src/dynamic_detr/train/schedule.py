"""Learning-rate schedule: linear warm-up, then step drops (paper: 1x = 12 epochs, x0.1 after epoch 11).

Progress is a fraction of the run, so the same schedule serves an epoch budget (`step / total_steps`) and a
time budget (`elapsed / minutes`): the drop comes at `lr_drop_epochs / epochs` of the run either way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WarmupStepSchedule:
    base_lrs: list[float]
    warmup_iters: int
    warmup_factor: float
    drop_at: list[float]
    """Fractions of the run after which lr is multiplied by `gamma`."""
    gamma: float

    def factor(self, step: int, progress: float) -> float:
        f = self.gamma ** sum(progress >= p for p in self.drop_at)
        if step < self.warmup_iters:
            alpha = step / max(self.warmup_iters, 1)
            f *= self.warmup_factor * (1 - alpha) + alpha
        return f

    def apply(self, optimizer, step: int, progress: float) -> float:
        """Set each param group's lr; return the first group's."""
        f = self.factor(step, progress)
        for group, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f
        return optimizer.param_groups[0]["lr"]
