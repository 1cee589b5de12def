"""Training test helpers: non-finite values injected into a trainer, and found in what it saved (its config and
data: `builders.tiny_config(px=96, run=True)`, `builders.shapes_dataset`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def inject_nonfinite(trainer, kind: str, due: Callable[[int], bool]) -> None:
    """Make the n-th training forward (or backward) of `trainer` non-finite when `due(n)` (n = 1, 2, ...).

    "loss": a NaN loss. "activation": NaN class logits of the last decoder stage; they also go through a
    BatchNorm added to the model as `nan_probe`, whose running statistics take the NaN as a real BatchNorm's
    would (NaN images or features cannot be used here: NaN boxes break the RoI level assignment).
    "gradient": an inf gradient on the model's first parameter.
    """
    calls = {"n": 0}

    def fire() -> bool:
        calls["n"] += 1
        return due(calls["n"])

    nan = float("nan")
    if kind == "loss":
        def nan_loss(module, args, out):
            return {**out, "loss": out["loss"] * nan} if fire() else None

        trainer.criterion.register_forward_hook(nan_loss)
    elif kind == "activation":
        probe = torch.nn.BatchNorm1d(1, affine=False).to(trainer.device)
        trainer.model.add_module("nan_probe", probe)

        def nan_logits(module, args, out):
            if not module.training:
                return None
            last = out["stages"][-1]
            logits = last["logits"] * nan if fire() else last["logits"]
            probe(logits.detach().float().reshape(-1, 1))
            last["logits"] = out["logits"] = logits
            return out

        trainer.model.register_forward_hook(nan_logits)
    elif kind == "gradient":
        param = next(p for p in trainer.model.parameters() if p.requires_grad)
        param.register_hook(lambda g: torch.full_like(g, float("inf")) if fire() else g)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def nonfinite_tensors(obj: Any, where: str = "") -> list[str]:
    """Paths of the floating-point tensors in `obj` (nested dicts / lists / tuples) that hold NaN or inf."""
    if torch.is_tensor(obj):
        return [where] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in nonfinite_tensors(v, f"{where}.{k}")]
    if isinstance(obj, list | tuple):
        return [p for i, v in enumerate(obj) for p in nonfinite_tensors(v, f"{where}[{i}]")]
    return []
