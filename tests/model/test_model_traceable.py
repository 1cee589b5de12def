"""The ONNX-tracing path of the encoder's adaptive pooling equals `F.adaptive_avg_pool2d`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamic_detr.model.encoder import _adaptive_avg_pool

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")


@pytest.mark.parametrize(("hw", "size"), [((7, 11), (4, 6)), ((5, 3), (3, 2)), ((2, 3), (1, 2)), ((4, 4), (2, 2))])
def test_traced_adaptive_pool_equals_torch(hw, size):
    x = torch.randn(2, 5, *hw)
    traced = torch.jit.trace(lambda t: _adaptive_avg_pool(t, size), x, check_trace=False)
    assert "adaptive_avg_pool" not in str(traced.graph)  # the matrix form was traced
    torch.testing.assert_close(traced(x), F.adaptive_avg_pool2d(x, size), atol=1e-6, rtol=0)
