"""Activation checkpointing (`encoder.checkpoint`, `decoder.checkpoint`, `dense.checkpoint`): the same outputs
and gradients as without, less kept for the backward, nothing changed in eval."""

from __future__ import annotations

import copy

import pytest
import torch
from model_helpers import padded_batch

from builders import tiny_config
from dynamic_detr.model.detector import DynamicDETR


def _tensors(x: object) -> list[torch.Tensor]:
    """Every floating tensor in a (nested) output, in a fixed order."""
    if isinstance(x, torch.Tensor):
        return [x] if x.is_floating_point() else []
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in _tensors(x[k])]
    if isinstance(x, list | tuple):
        return [t for v in x for t in _tensors(v)]
    return []


def _run(model: DynamicDETR, images: torch.Tensor, masks: torch.Tensor) -> tuple[list[torch.Tensor], dict, int]:
    """Outputs, parameter gradients and the bytes the autograd graph keeps for the backward (outside the
    checkpointed parts, which keep only their inputs), of one forward + backward under a fixed RNG."""
    kept = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += t.numel() * t.element_size()
        return t

    torch.manual_seed(1)  # dropout and the denoising noise: the recompute must replay them
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = _tensors(model(images, masks))
    g = torch.Generator().manual_seed(2)
    sum(((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs), torch.zeros(())).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads, kept


@pytest.mark.parametrize("part", ["encoder", "decoder", "dense"])
def test_checkpointing_same_outputs_and_gradients_less_kept(part: str):
    cfg = tiny_config({"model.decoder.dropout": 0.1, "model.decoder.query_selection": "boxes"}, classes=5).model
    cfg.dense.enabled = True
    torch.manual_seed(0)
    plain = DynamicDETR(cfg).train()
    ckpt = copy.deepcopy(plain)
    (ckpt.cfg.dense if part == "dense" else getattr(ckpt, part)).checkpoint = True
    images, masks = padded_batch([(64, 96), (64, 64)])
    out_a, grads_a, kept_a = _run(plain, images, masks)
    out_b, grads_b, kept_b = _run(ckpt, images, masks)
    assert len(out_a) == len(out_b)
    for a, b in zip(out_a, out_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    assert kept_b < kept_a * 0.95, (kept_b, kept_a)


def test_checkpointing_built_from_config_and_off_in_eval():
    cfg = tiny_config(classes=5).model
    cfg.dense.enabled = True
    cfg.encoder.checkpoint = cfg.decoder.checkpoint = cfg.dense.checkpoint = True
    torch.manual_seed(0)
    model = DynamicDETR(cfg)
    assert model.encoder.checkpoint and model.decoder.checkpoint
    plain = copy.deepcopy(model)
    plain.encoder.checkpoint = plain.decoder.checkpoint = plain.cfg.dense.checkpoint = False
    images, masks = padded_batch([(64, 96), (64, 64)])
    model.eval(), plain.eval()
    with torch.no_grad():
        for a, b in zip(_tensors(plain(images, masks)), _tensors(model(images, masks)), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
