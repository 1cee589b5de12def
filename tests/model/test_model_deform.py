"""The sampled deformable conv equals torchvision's deform_conv2d (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from dynamic_detr.model.deform import deform_conv2d_sampled, modulated_deform_conv


@pytest.mark.parametrize(("size", "stride"), [((9, 11), 1), ((13, 8), 2), ((1, 2), 1), ((2, 3), 2)])
def test_matches_torchvision(size, stride):
    torch.manual_seed(0)
    h, w = size
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(2, 6, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    # large offsets: many taps fall partly or wholly outside the map
    offset = (torch.randn(2, 18, ho, wo, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.rand(2, 9, ho, wo, dtype=torch.float64, requires_grad=True)
    args = (x, offset, weight, bias, mask)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    out = deform_conv2d_sampled(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, args, g)
    grads = torch.autograd.grad(out, args, g)
    for name, a, b in zip(("x", "offset", "weight", "bias", "mask"), grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_integer_offsets_shift_exactly():
    """An offset of (+1, +2) pixels reads the input shifted by one row and two columns."""
    x = torch.arange(64.0).view(1, 1, 8, 8)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0  # centre tap only
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 8], offset[:, 9] = 1.0, 2.0  # tap 4 (centre): dy, dx
    out = deform_conv2d_sampled(x, offset, weight, mask=torch.ones(1, 9, 8, 8))
    torch.testing.assert_close(out[0, 0, :7, :6], x[0, 0, 1:, 2:])
    torch.testing.assert_close(out[0, 0, 7], torch.zeros(8))  # sampled below the map: zeros


def test_auto_dispatch_matches_both_kernels():
    torch.manual_seed(1)
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    offset, mask = torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6)
    outs = [modulated_deform_conv(x, offset, weight, None, 1, 1, mask, impl)
            for impl in ("auto", "sampled", "torchvision")]
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[1], outs[2], atol=1e-4, rtol=1e-4)
