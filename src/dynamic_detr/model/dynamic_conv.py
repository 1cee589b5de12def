"""Dynamic 1x1 convolution: W_Q = FC(Q*), QF = Conv1x1(F, W_Q) (docs/paper.md; Sparse R-CNN's "instance
interaction")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DynamicConv(nn.Module):
    """Each query generates the weights of two 1x1 convs (d -> dim_dynamic -> d) applied to its own RoI
    feature, as two batched matmuls, each followed by LayerNorm + ReLU; the S*S result is flattened and
    projected to d (+ LayerNorm + ReLU, as Sparse R-CNN).

    Args:
        dim: d, the query / feature width.
        dim_dynamic: bottleneck of the generated filters.
        roi_size: S of the S x S RoI features.
    """

    def __init__(self, dim: int, dim_dynamic: int, roi_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.dim_dynamic = dim_dynamic
        self.dynamic_layer = nn.Linear(dim, 2 * dim * dim_dynamic)  # W_Q = FC(Q*)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim * roi_size * roi_size, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: Tensor, roi: Tensor) -> Tensor:
        """query: [N, d]; roi: [N, S*S, d] -> QF [N, d]."""
        n, d, dd = query.shape[0], self.dim, self.dim_dynamic
        params = self.dynamic_layer(query)
        w1 = params[:, : d * dd].view(n, d, dd)
        w2 = params[:, d * dd:].view(n, dd, d)
        x = F.relu(self.norm1(torch.bmm(roi, w1)))  # [N, S*S, dd]
        x = F.relu(self.norm2(torch.bmm(x, w2)))  # [N, S*S, d]
        return F.relu(self.norm3(self.out_layer(x.flatten(1))))
