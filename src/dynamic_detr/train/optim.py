"""Optimisation: AdamW over parameter groups (backbone, sampling offsets, dynamic-filter generators), the lr
schedule (warm-up, then step drops or flat-cosine), gradient clipping, the fp16 GradScaler and the EMA of the
weights (`train.ema`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed as dist_utils
from ..config import TrainConfig
from .schedule import Schedule, build_schedule


@dataclass
class Optimization:
    """What updates the weights of one run; `step` ends an accumulation window."""

    optimizer: torch.optim.AdamW
    schedule: Schedule
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None
    clip_max_norm: float
    device: torch.device

    @classmethod
    def build(cls, model: torch.nn.Module, t: TrainConfig, device: torch.device,
              floor_from: float = 1.0) -> Optimization:
        """`floor_from`: where a flat-cosine lr reaches its floor (`data.aug_stop`, `schedule.build_schedule`)."""
        groups = param_groups(model, t)
        schedule = build_schedule(t, [g["lr"] for g in groups], floor_from)
        ema = None
        if t.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay), use_buffers=True)
        return cls(adamw(groups, t.lr, t.weight_decay, device), schedule,
                   torch.amp.GradScaler(device.type, enabled=t.amp == "fp16"), ema, t.clip_max_norm, device)

    def step(self, lr: float, step: int, progress: float) -> tuple[bool, float]:
        """Unscale, clip and step at the end of an accumulation window, the schedule's lr set for optimizer step
        `step` at `progress` (the run's fraction done): (whether the optimizer stepped, the lr; `lr` if not).
        False when the gradients are not finite. Under fp16 the GradScaler decides: unscale_, step and update
        always run together (skipping update() left the scaler "unscaled" and the next unscale_() raised), its
        step() skips the optimizer on inf / NaN gradients and update() backs the scale off."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.clip_max_norm if self.clip_max_norm > 0 else float("inf")
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            lr = self.schedule.apply(self.optimizer, step, progress)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale, lr  # a lower scale: inf / NaN found, step skipped
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if dist_utils.any_rank(not bool(torch.isfinite(norm)), self.device):
            return False, lr
        lr = self.schedule.apply(self.optimizer, step, progress)
        self.optimizer.step()
        return True, lr


def adamw(groups: list[dict[str, Any]], lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `groups`, with PyTorch's fused kernel where it has one (CPU and CUDA, floating parameters):
    the same update as the default for-loop one (tests/train/test_optimizer.py), several times faster
    (docs/benchmarks.md, "Profile")."""
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
