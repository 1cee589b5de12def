"""Dynamic decoder (docs/paper.md): M stages over K object queries, each a content embedding Q and a box B.

Per stage:
    Q*  = MultiHeadSelfAttn(Q, Q, Q)          # box encoding of B as position, residual + LN
    F   = RoIAlign(pyramid, B)                # S x S per query, level chosen by box size
    W_Q = FC(Q*);  QF = Conv1x1(F, W_Q)       # dynamic filters, residual + LN, then FFN, residual + LN -> Q^
    B^  = refine(B, FC(ReLU(LN(FC(Q^)))))     # box deltas; B^ feeds the next stage (detached, Sparse R-CNN)
    C^  = classifier(Q^)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..config import ModelConfig
from . import checkpointing
from .dynamic_conv import DynamicConv
from .roi import MultiLevelRoIAlign

BOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
"""Delta weights (dx, dy, dw, dh) of Sparse R-CNN / Faster R-CNN."""
SCALE_CLAMP = math.log(1000.0 / 16)
"""Upper bound of dw, dh: a box grows at most 62.5x per stage."""
PRIOR_PROB = 0.01
"""Focal loss: class bias so that every sigmoid starts at 0.01 (RetinaNet)."""


def apply_deltas(boxes: Tensor, deltas: Tensor) -> Tensor:
    """refine(B, deltas): boxes [..., 4] cxcywh, deltas [..., 4] (dx, dy, dw, dh) -> [..., 4] cxcywh.

    cx' = cx + dx / 2 * w,  w' = w * exp(min(dw, log(1000/16))), likewise for y / h. The map is per axis
    affine-equivariant, so applying it to boxes normalised by the image size equals applying it in pixels.
    """
    d = deltas / deltas.new_tensor(BOX_WEIGHTS)
    wh = boxes[..., 2:]
    ctr = boxes[..., :2] + d[..., :2] * wh
    wh = wh * d[..., 2:].clamp(max=SCALE_CLAMP).exp()
    return torch.cat([ctr, wh], dim=-1)


def box_sine_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine / cosine embedding of each normalised coordinate: boxes [..., 4] -> [..., 4 * n],
    n = the largest even number <= dim / 4."""
    n = max(2, (dim // 4) // 2 * 2)
    dim_t = temperature ** (torch.arange(n // 2, device=boxes.device, dtype=torch.float32) * 2 / n)
    pos = boxes.float()[..., None] * (2 * math.pi) / dim_t  # [..., 4, n/2]
    return torch.cat([pos.sin(), pos.cos()], dim=-1).flatten(-2)


def head(dim: int, out: int, hidden_layers: int) -> nn.Sequential:
    """`hidden_layers` x (FC without bias, LN, ReLU), then FC(dim -> out)."""
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(dim, out))


class DecoderStage(nn.Module):
    """One stage: self-attention, RoI pooling, dynamic conv, FFN, class and box heads.

    Args:
        cfg: model config (hidden_dim, decoder.*, num_classes, class_loss).
        pooler: the (parameter-free) multi-level RoIAlign shared by all stages.
    """

    def __init__(self, cfg: ModelConfig, pooler: MultiLevelRoIAlign) -> None:
        super().__init__()
        d, dc = cfg.hidden_dim, cfg.decoder
        self.pooler = pooler
        self.self_attn = nn.MultiheadAttention(d, dc.num_heads, dropout=dc.dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d)
        self.dynamic_conv = DynamicConv(d, dc.dim_dynamic, dc.roi_size)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, dc.dim_feedforward), nn.ReLU(inplace=True),
                                 nn.Dropout(dc.dropout), nn.Linear(dc.dim_feedforward, d))
        self.norm3 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dc.dropout)
        num_logits = cfg.num_classes + (1 if cfg.class_loss == "softmax" else 0)
        self.cls_head = head(d, num_logits, dc.num_cls_layers)
        self.reg_head = head(d, 4, dc.num_reg_layers)

    def forward(self, query: Tensor, boxes: Tensor, pos: Tensor | None, feats: list[Tensor],
                valid_hw: Tensor, attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            query: Q [B, K, d].
            boxes: B [B, K, 4] cxcywh normalised by each image's valid size.
            pos: box position embedding [B, K, d] or None.
            feats: pyramid [B, d, H_l, W_l] per level.
            valid_hw: [B, 2] (h, w) of each image's unpadded region, in pixels.
            attn_mask: self-attention mask, [K, K] or [B * heads, K, K] bool, True = may not attend
                (query groups: hybrid and denoising queries, `DynamicDecoder.forward`).
        Returns:
            Q^ [B, K, d], class logits [B, K, C'] float32, refined boxes B^ [B, K, 4] cxcywh float32.
        """
        b, k, d = query.shape
        qk = query if pos is None else query + pos
        attn = self.self_attn(qk, qk, query, attn_mask=attn_mask, need_weights=False)[0]
        query = self.norm1(query + self.dropout(attn))  # Q*

        scale = valid_hw.flip(-1).repeat(1, 2)[:, None, :].float()  # [B, 1, 4] (w, h, w, h)
        xyxy = box_convert(boxes.float() * scale, "cxcywh", "xyxy").reshape(b * k, 4)
        batch_idx = torch.arange(b, device=boxes.device, dtype=xyxy.dtype).repeat_interleave(k)
        roi = self.pooler(feats, torch.cat([batch_idx[:, None], xyxy], dim=1))  # F [B*K, d, S, S]
        qf = self.dynamic_conv(query.reshape(b * k, d), roi.flatten(2).transpose(1, 2))  # QF [B*K, d]
        query = self.norm2(query + self.dropout(qf.view(b, k, d).to(query.dtype)))
        query = self.norm3(query + self.dropout(self.ffn(query)))  # Q^

        logits = self.cls_head(query).float()
        new_boxes = apply_deltas(boxes.float(), self.reg_head(query).float())
        return query, logits, new_boxes


class DynamicDecoder(nn.Module):
    """K learned queries (content N(0, 1), box = whole image) refined by `num_stages` DecoderStages.

    Args:
        cfg: model config.
        strides: strides of the pyramid levels (P3..P7: 8..128).
    """

    def __init__(self, cfg: ModelConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        d, dc = cfg.hidden_dim, cfg.decoder
        self.detach_boxes = dc.detach_boxes
        # all boxes start as the whole image (docs/paper.md), so only the content embeddings tell queries apart;
        # nn.Embedding's N(0, 1) init keeps them spread out (N(0, 0.02) collapsed to one box in eval).
        self.query_embed = nn.Embedding(dc.num_queries, d)
        self.init_boxes = nn.Embedding(dc.num_queries, 4)
        with torch.no_grad():
            self.init_boxes.weight.copy_(torch.tensor([0.5, 0.5, 1.0, 1.0]))
        self.pos_dim = d
        self.box_pos = None
        if dc.box_pos == "sine":
            n = box_sine_embedding(torch.zeros(4), d).shape[-1]
            self.box_pos = nn.Sequential(nn.Linear(n, d), nn.ReLU(inplace=True), nn.Linear(d, d))
        if dc.query_selection == "boxes+content":  # two-stage: content from the selected encoder features
            self.content_proj = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        pooler = MultiLevelRoIAlign(strides, dc.roi_size, sampling_ratio=2, impl=dc.roi_impl,
                                    canonical_size=dc.roi_canonical_size)
        self.stages = nn.ModuleList(DecoderStage(cfg, pooler) for _ in range(dc.num_stages))
        self.checkpoint = dc.checkpoint
        self.eval_stages = dc.eval_stages
        """Inference runs the first `eval_stages` stages (0 = all); training runs all (`DecoderConfig`)."""
        self._reset_parameters(cfg.class_loss, dc.zero_init_deltas)

    def _reset_parameters(self, class_loss: str, zero_init_deltas: bool) -> None:
        """Xavier for every linear layer (Sparse R-CNN); focal: class bias prior 0.01; optionally zero box deltas."""
        for m in [*self.stages.modules(), *(self.box_pos.modules() if self.box_pos is not None else [])]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
        if zero_init_deltas:
            for stage in self.stages:
                nn.init.zeros_(stage.reg_head[-1].weight)
                nn.init.zeros_(stage.reg_head[-1].bias)
        if class_loss == "focal":
            for stage in self.stages:
                nn.init.constant_(stage.cls_head[-1].bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def forward(self, feats: list[Tensor], valid_hw: Tensor, query: Tensor | None = None,
                boxes: Tensor | None = None, attn_mask: Tensor | None = None) -> list[dict[str, Tensor]]:
        """
        Args:
            feats: pyramid [B, d, H_l, W_l]; valid_hw: [B, 2] (h, w) pixels.
            query, boxes: initial content [B, L, d] and boxes [B, L, 4] cxcywh normalised; None = the K
                learned ones (the paper).
            attn_mask: self-attention mask for query groups (`DecoderStage.forward`).
        Returns:
            per stage run {"logits": [B, L, C'], "boxes": [B, L, 4] cxcywh normalised}, last = final: every
            stage in training, the first `eval_stages` (when set) in eval mode.
        """
        b = feats[0].shape[0]
        if query is None:
            query = self.query_embed.weight[None].expand(b, -1, -1)
        if boxes is None:
            boxes = self.init_boxes.weight[None].expand(b, -1, -1)
        outputs = []
        stages = self.stages if self.training or not self.eval_stages else self.stages[:self.eval_stages]
        for stage in stages:
            pos = None
            if self.box_pos is not None:
                pos = self.box_pos(box_sine_embedding(boxes, self.pos_dim).to(query.dtype))
            query, logits, new_boxes = checkpointing.run(stage, query, boxes, pos, feats, valid_hw, attn_mask,
                                                         enabled=self.checkpoint)
            outputs.append({"logits": logits, "boxes": new_boxes})
            boxes = new_boxes.detach() if self.detach_boxes else new_boxes
        return outputs
