"""Dense auxiliary head on the dynamic encoder's pyramid (not in the paper; `DenseHeadConfig`).

An FCOS head (Tian et al. 2019): at every location of every level, class logits, the distances (l, t, r, b) to
the box sides and a centre-ness logit, from two towers of 3x3 conv + GroupNorm + ReLU shared across levels.
Co-DETR trains such a head on the encoder output as a one-to-many auxiliary loss; its top-K boxes can also
start the decoder (query selection, `select_queries`). The DyHead block that Dynamic DETR's encoder is built
from was designed to feed a dense head like this one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..config import ModelConfig
from .decoder import PRIOR_PROB
from .padding import apply_sequential


def level_points(feats: list[Tensor], strides: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Centres of every location, levels concatenated finest first: points [N, 2] (x, y) input pixels,
    stride [N]."""
    points, stride = [], []
    for f, s in zip(feats, strides, strict=True):
        h, w = int(f.shape[-2]), int(f.shape[-1])
        ys = (torch.arange(h, device=f.device, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, device=f.device, dtype=torch.float32) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.flatten(), yy.flatten()], dim=1))
        stride.append(torch.full((h * w,), float(s), device=f.device))
    return torch.cat(points), torch.cat(stride)


class DenseHead(nn.Module):
    """FCOS head: class tower -> C logits, box tower -> ltrb distances and centre-ness, shared by all levels.

    Args:
        cfg: model config (hidden_dim, num_classes, dense.*).
        strides: strides of the pyramid levels.
    """

    def __init__(self, cfg: ModelConfig, strides: tuple[int, ...]) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.strides = tuple(strides)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(cfg.dense.num_convs):
                layers += [nn.Conv2d(d, d, 3, padding=1), nn.GroupNorm(cfg.encoder.gn_groups, d), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(d, cfg.num_classes, 3, padding=1)
        self.box_ltrb = nn.Conv2d(d, 4, 3, padding=1)
        self.centerness = nn.Conv2d(d, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))  # FCOS: a learned scale per level
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def forward(self, feats: list[Tensor], valid: list[Tensor] | None = None) -> dict[str, Tensor]:
        """feats: [B, d, H_l, W_l] per level (`valid`: per-level masks of the unpadded regions, for the
        towers' GroupNorm statistics, model/padding.py) -> {"logits": [B, N, C], "ltrb": [B, N, 4] input pixels (>= 0),
        "centerness": [B, N] logits, "points": [N, 2], "stride": [N]}, N = all locations, finest level first."""
        logits, ltrb, ctr = [], [], []
        for i, (f, s) in enumerate(zip(feats, self.strides, strict=True)):
            v = None if valid is None else valid[i]
            c = apply_sequential(self.cls_tower, f, v)
            b = apply_sequential(self.box_tower, f, v)
            logits.append(self.cls_logits(c).flatten(2).transpose(1, 2))
            # FCOS with normalised targets: distances = ReLU(scale_l * x) * stride
            ltrb.append((F.relu(self.box_ltrb(b) * self.scales[i]) * s).flatten(2).transpose(1, 2))
            ctr.append(self.centerness(b).flatten(1))
        points, stride = level_points(feats, self.strides)
        return {"logits": torch.cat(logits, 1).float(), "ltrb": torch.cat(ltrb, 1).float(),
                "centerness": torch.cat(ctr, 1).float(), "points": points, "stride": stride}


def dense_boxes(dense: dict[str, Tensor]) -> Tensor:
    """[B, N, 4] xyxy input pixels: each location's point minus / plus its (l, t, r, b)."""
    p = dense["points"][None]
    ltrb = dense["ltrb"]
    return torch.cat([p - ltrb[..., :2], p + ltrb[..., 2:]], dim=-1)


def dense_scores(dense: dict[str, Tensor]) -> Tensor:
    """[B, N]: FCOS's ranking score, sqrt(max class probability x centre-ness)."""
    return (dense["logits"].sigmoid().amax(-1) * dense["centerness"].sigmoid()).sqrt()


def distinct_first(boxes: Tensor, iou_threshold: float) -> Tensor:
    """Class-agnostic Fast NMS (Bolya et al., YOLACT 2019) over boxes sorted best first: [B, M, 4] xyxy ->
    [B, M] bool, True where no better box overlaps this one by more than `iou_threshold`. Unlike greedy NMS
    a box is also dropped by a better box that was itself dropped, so it keeps a subset of what
    `torchvision.ops.nms` keeps; in exchange every shape is fixed and nothing loops over the batch (the ONNX
    graph keeps its batch free)."""
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # [B, M, M]
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-6)
    better = torch.ones_like(iou[0], dtype=torch.bool).triu(1)  # [j, i]: j ranks above i
    return ~((iou > iou_threshold) & better).any(dim=1)


def select_queries(dense: dict[str, Tensor], valid_hw: Tensor, k: int, nms: float = 0.0,
                   k_distinct: int | None = None) -> tuple[Tensor, Tensor]:
    """Query selection (two-stage Deformable DETR, DINO, RT-DETR): each image's top-k dense boxes by score,
    among the locations inside its unpadded region.

    Args:
        dense: `DenseHead` output.
        valid_hw: [B, 2] (h, w) pixels of each image's unpadded region.
        k: boxes per image, best first (with the hybrid branch: K matching + H one-to-many queries).
        nms: distinct queries (DDQ, Zhang et al. 2023): when > 0, the first `k_distinct` boxes are chosen
            among the top 4 x k_distinct with a class-agnostic NMS at this IoU (`distinct_first`): the boxes
            no better box overlaps come first, by score, then the overlapped ones, by score. 0: plain top-k.
        k_distinct: how many of the k come from the NMS (default all; the hybrid branch's boxes after them
            are the plain top ones, as DDQ keeps its one-to-many queries).
    Returns:
        boxes [B, k, 4] cxcywh normalised by the valid size (detached, at least one pixel wide), and the
        selected location indices [B, k] (into N).
    """
    scores = dense_scores(dense).detach()
    p = dense["points"]
    inside = (p[None, :, 0] < valid_hw[:, None, 1]) & (p[None, :, 1] < valid_hw[:, None, 0])  # [B, N]
    scores = scores.masked_fill(~inside, -1.0)
    n = scores.shape[1]
    all_xyxy = dense_boxes(dense).detach()
    kd = k if k_distinct is None else min(k_distinct, k)
    m = min(4 * kd, n) if nms > 0 and kd > 0 else 0  # NMS candidates
    top, cand = scores.topk(min(max(k, m), n), dim=1)  # best first
    idx = cand[:, :k]
    if m:
        keep = distinct_first(all_xyxy.gather(1, cand[:, :m, None].expand(-1, -1, 4)), nms)
        # the distinct boxes rank above every overlapped one, each group by score (valid scores are in [0, 1],
        # padding locations -1: those stay last even when distinct)
        order = (top[:, :m] + 3.0 * (keep & (top[:, :m] >= 0))).topk(min(kd, m), dim=1).indices
        idx = torch.cat([cand.gather(1, order), cand[:, :k - kd]], dim=1)
    if idx.shape[1] < k:  # fewer locations than queries (a tiny input): repeat the best ones
        idx = idx.repeat(1, math.ceil(k / max(idx.shape[1], 1)))[:, :k]
    xyxy = all_xyxy.gather(1, idx[..., None].expand(-1, -1, 4))
    wh = valid_hw.flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, 4] (w, h, w, h)
    xyxy = torch.minimum(xyxy.clamp(min=0), wh)
    cxcywh = box_convert(xyxy, "xyxy", "cxcywh")
    cxcywh = torch.cat([cxcywh[..., :2], cxcywh[..., 2:].clamp(min=1.0)], dim=-1)
    return cxcywh / wh, idx
