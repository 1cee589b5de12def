"""The trainer's AdamW: PyTorch's fused kernel where it exists, with the same updates as the for-loop one."""

from __future__ import annotations

import torch

from builders import shapes_dataset, tiny_config
from dynamic_detr.config import get_preset
from dynamic_detr.model import DynamicDETR
from dynamic_detr.train.optim import adamw, param_groups
from dynamic_detr.train.trainer import Trainer


def _groups(model: torch.nn.Module) -> list[dict]:
    t = get_preset("cpu_tiny").train
    t.lr, t.lr_backbone = 1e-3, 1e-4  # two groups with different lr, as the trainer builds them
    return param_groups(model, t)


def test_fused_adamw_makes_the_same_updates_as_the_for_loop_one():
    """Five steps over cpu_tiny's parameters (two lr groups, weight decay, gradients of every scale): the fused
    kernel and the default implementation agree to float32 rounding, and both moved the parameters."""
    torch.manual_seed(0)
    cfg = get_preset("cpu_tiny")
    a = DynamicDETR(cfg.model)
    b = DynamicDETR(cfg.model)
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    # a weight decay large enough to move every parameter well beyond the tolerance in 5 steps
    fused = adamw(_groups(a), 1e-3, 0.1, torch.device("cpu"))
    plain = torch.optim.AdamW(_groups(b), lr=1e-3, weight_decay=0.1)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(5):
        gen = torch.Generator().manual_seed(step)
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            g = torch.randn(pa.shape, generator=gen) * 10.0 ** (step - 3)
            pa.grad, pb.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p0, pa, pb in zip(start, a.parameters(), b.parameters(), strict=True):
        pa, pb = pa.detach(), pb.detach()
        moved = (pb - p0).abs().max()
        assert moved > 0
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6 * float(moved))


def test_adamw_falls_back_where_no_fused_kernel_exists():
    """A device without a fused AdamW (here "meta") gets the default implementation instead of an error."""
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = adamw([{"params": [p], "lr": 1e-3}], 1e-3, 0.0, torch.device("meta"))
    assert not opt.defaults["fused"]


def test_the_trainer_builds_the_fused_adamw(tmp_path):
    """The trainer's optimizer is `adamw`'s fused one, over `param_groups`' groups."""
    data = shapes_dataset(tmp_path / "data", {"train": 4, "val": 2})
    trainer = Trainer(tiny_config(px=96, run=True, batch_size=2), data, tmp_path / "run", epochs=1, progress=False,
                      device="cpu")
    assert trainer.optim.optimizer.defaults["fused"]
    assert [g["name"] for g in trainer.optim.optimizer.param_groups] == ["rest", "backbone"]
