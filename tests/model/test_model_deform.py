"""The sampled and bags deformable convs equal torchvision's deform_conv2d (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from dynamic_detr.model.deform import deform_conv2d_bags, deform_conv2d_sampled, modulated_deform_conv

KERNELS = {"sampled": deform_conv2d_sampled, "bags": deform_conv2d_bags}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("batch", "size", "stride"),
                         [(2, (9, 11), 1), (2, (13, 8), 2), (2, (1, 2), 1), (2, (2, 3), 2), (1, (7, 5), 1)])
def test_matches_torchvision(kernel, batch, size, stride):
    torch.manual_seed(0)
    h, w = size
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(batch, 6, h, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    # large offsets: many taps fall partly or wholly outside the map
    offset = (torch.randn(batch, 18, ho, wo, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.rand(batch, 9, ho, wo, dtype=torch.float64, requires_grad=True)
    args = (x, offset, weight, bias, mask)
    ref = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    out = KERNELS[kernel](x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, args, g)
    grads = torch.autograd.grad(out, args, g)
    for name, a, b in zip(("x", "offset", "weight", "bias", "mask"), grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("kernel", KERNELS)
def test_integer_offsets_shift_exactly(kernel):
    """An offset of (+1, +2) pixels reads the input shifted by one row and two columns."""
    x = torch.arange(64.0).view(1, 1, 8, 8)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0  # centre tap only
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 8], offset[:, 9] = 1.0, 2.0  # tap 4 (centre): dy, dx
    out = KERNELS[kernel](x, offset, weight, mask=torch.ones(1, 9, 8, 8))
    torch.testing.assert_close(out[0, 0, :7, :6], x[0, 0, 1:, 2:])
    torch.testing.assert_close(out[0, 0, 7], torch.zeros(8))  # sampled below the map: zeros


def test_auto_dispatch_matches_both_kernels():
    torch.manual_seed(1)
    x, weight = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    offset, mask = torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6)
    outs = [modulated_deform_conv(x, offset, weight, None, 1, 1, mask, impl)
            for impl in ("auto", "bags", "sampled", "torchvision")]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)  # auto is bags on CPU
    torch.testing.assert_close(outs[1], outs[3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[2], outs[3], atol=1e-4, rtol=1e-4)
