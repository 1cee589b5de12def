"""WarmupStepSchedule: linear warm-up, then step drops at fractions of the run."""

from __future__ import annotations

import torch

from dynamic_detr.train.schedule import WarmupStepSchedule


def test_schedule_warmup_and_drop():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupStepSchedule([1.0], warmup_iters=10, warmup_factor=0.1, drop_at=[11 / 12], gamma=0.1)
    assert sched.apply(opt, 0, 0.0) == 0.1
    assert abs(sched.apply(opt, 5, 0.1) - 0.55) < 1e-9
    assert sched.apply(opt, 10, 0.5) == 1.0
    assert abs(sched.apply(opt, 100, 0.95) - 0.1) < 1e-12
