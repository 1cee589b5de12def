"""DyReLU (Chen et al., ECCV 2020), the encoder's representation attention (docs/paper.md, Dynamic encoder).

    DyReLU(x_c) = max(a1_c x_c + b1_c, a2_c x_c + b2_c),   {a, b} = Delta(x): pool -> FC -> ReLU -> FC -> hsig
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .padding import masked_mean


class DyReLU(nn.Module):
    """Channel-wise two-piece DyReLU whose coefficients come from the globally pooled input.

    Parametrisation (DyHead's, with h = hard_sigmoid(FC(...)) in [0, 1]):
        a1 = 2 (h - 0.5) lambda_a + 1,   a2 = 2 (h - 0.5) lambda_a,   b1, b2 = (h - 0.5) lambda_b.
    The last FC is zero-initialised, so h = 0.5 and DyReLU(x) = max(x, 0) exactly at init (docs/paper.md).

    Args:
        channels: C.
        reduction: squeeze ratio of the first FC (DyHead: 4).
        lambda_a, lambda_b: ranges of the slopes / intercepts (DyHead: 1.0; b in [-0.5, 0.5]).
    """

    def __init__(self, channels: int, reduction: int = 4, lambda_a: float = 1.0,
                 lambda_b: float = 1.0) -> None:
        super().__init__()
        self.lambda_a = lambda_a
        self.lambda_b = lambda_b
        squeeze = max(channels // reduction, 1)
        self.fc = nn.Sequential(nn.Linear(channels, squeeze), nn.ReLU(inplace=True),
                                nn.Linear(squeeze, 4 * channels))
        nn.init.zeros_(self.fc[2].weight)
        nn.init.zeros_(self.fc[2].bias)

    def coefficients(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: [B, C, H, W] -> (a1, a2, b1, b2), each [B, C, 1, 1] (also read by `predict/explain.py`); the pooling
        is over `valid` [B, 1, H, W] (each image's unpadded region, model/padding.py) when given."""
        h = F.hardsigmoid(self.fc(masked_mean(x, valid))) - 0.5  # [B, 4C], 0 at init
        a1, a2, b1, b2 = h[:, :, None, None].chunk(4, dim=1)
        return 2 * a1 * self.lambda_a + 1.0, 2 * a2 * self.lambda_a, b1 * self.lambda_b, b2 * self.lambda_b

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W] -> [B, C, H, W]."""
        a1, a2, b1, b2 = self.coefficients(x, valid)
        return (x * a1 + b1).maximum(x * a2 + b2)
