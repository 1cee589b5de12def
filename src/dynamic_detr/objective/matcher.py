"""Hungarian matching of K predictions to N targets per image (DETR; used at every decoder stage).

cost = cost_class * C_class + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU), solved exactly by
`scipy.optimize.linear_sum_assignment`. C_class is Deformable DETR's focal-style cost for sigmoid logits
(pos - neg focal terms of the target class) or DETR's -p(class) for softmax logits.

Position-modulated cost (Stable-DINO, Liu et al. 2023; `loss.cost_position_modulated`, not in the paper): C_class
takes p * u^e instead of the class probability p, u = (GIoU + 1) / 2 of the pair, so a query that scores the
class but sits off the box is a worse match than one on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import generalized_box_iou

from .boxes import safe_xyxy

INVALID_COST = 1e8
"""Stands in for NaN / inf (and caps huge finite costs) so scipy never sees a non-finite matrix; such a
prediction is matched only when nothing better is left."""

EPS = 1e-8
"""Keeps the logs of the position-modulated focal cost finite (its probability can reach 0 and 1)."""


class HungarianMatcher:
    """One-to-one assignment of predictions to targets, per image.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the class, L1 and GIoU costs (paper: 2 / 5 / 2).
        class_loss: "focal" (sigmoid logits [B, K, C]) or "softmax" (logits [B, K, C + 1], last = no-object).
        focal_alpha, focal_gamma: focal cost parameters (focal only).
        position_exponent: None, or the exponent e of Stable-DINO's position-modulated class cost.
    """

    def __init__(self, cost_class: float = 2, cost_bbox: float = 5, cost_giou: float = 2,
                 class_loss: str = "focal", focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 position_exponent: float | None = None) -> None:
        if class_loss not in ("focal", "softmax"):
            raise ValueError(f"class_loss must be 'focal' or 'softmax', got {class_loss!r}")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.class_loss = class_loss
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.position_exponent = position_exponent

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]
                 ) -> list[tuple[Tensor, Tensor]]:
        """Match predictions to targets.

        Args:
            logits: [B, K, C'] class logits.
            boxes: [B, K, 4] cxcywh normalised.
            targets: B dicts with `boxes` [N_b, 4] cxcywh normalised and `labels` int64 [N_b].

        Returns:
            B pairs (pred_idx, tgt_idx), int64 CPU tensors of length min(K, N_b), pred_idx ascending:
            prediction pred_idx[j] is matched to target tgt_idx[j].
        """
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        cost = self.cost_matrix(logits, boxes, targets)  # [B, K, T]
        cost = torch.nan_to_num(cost, nan=INVALID_COST, posinf=INVALID_COST, neginf=INVALID_COST)
        cost = cost.clamp(-INVALID_COST, INVALID_COST).to("cpu", torch.float64)
        matches = []
        for b, c in enumerate(cost.split(sizes, dim=-1)):
            if sizes[b] == 0:
                matches.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(c[b].numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return matches

    def cost_matrix(self, logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]]) -> Tensor:
        """[B, K, T] matching cost of every prediction against every target of the batch (T = sum N_b);
        computed in one batched op (DETR) in float32, outside autocast."""
        B, K = logits.shape[:2]
        device = logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            out_logits = logits.flatten(0, 1).float()  # [B*K, C']
            out_boxes = boxes.flatten(0, 1).float()  # [B*K, 4]
            tgt_ids = torch.cat([t["labels"] for t in targets]).to(device)  # [T]
            tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device, torch.float32)  # [T, 4]
            giou = generalized_box_iou(safe_xyxy(out_boxes), safe_xyxy(tgt_boxes))  # [B*K, T]
            a, g = self.focal_alpha, self.focal_gamma

            if self.position_exponent is not None:
                owner = torch.cat([torch.full((len(t["labels"]),), b, device=device) for b, t in enumerate(targets)])
                modulation = position_modulation(giou.view(B, K, -1), owner, self.position_exponent).flatten(0, 1)
                if self.class_loss == "focal":
                    p = out_logits[:, tgt_ids].sigmoid() * modulation  # [B*K, T]
                    pos = a * (1 - p) ** g * -(p + EPS).log()
                    neg = (1 - a) * p**g * -(1 - p + EPS).log()
                    c_class = pos - neg
                else:
                    c_class = -out_logits.softmax(-1)[:, tgt_ids] * modulation
            elif self.class_loss == "focal":
                x = out_logits[:, tgt_ids]  # [B*K, T]
                p = x.sigmoid()
                pos = a * (1 - p) ** g * -F.logsigmoid(x)  # focal loss if the class were positive
                neg = (1 - a) * p**g * -F.logsigmoid(-x)  # ... and if it were negative
                c_class = pos - neg
            else:
                c_class = -out_logits.softmax(-1)[:, tgt_ids]
            c_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
            c_giou = -giou
            cost = self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou
        return cost.view(B, K, -1)


def position_modulation(giou: Tensor, owner: Tensor, exponent: float) -> Tensor:
    """Stable-DINO's position score of every (query, target) pair, raised to `exponent`.

    Args:
        giou: [B, K, T] GIoU of image b's queries with every target of the batch.
        owner: [T] the image each target belongs to (only an image's own targets are ever matched to it).
        exponent: e in u^e.

    Returns:
        [B, K, T] u^e, u = (GIoU + 1) / 2 in [0, 1], scaled per image so that its best pair with one of its
        own targets has u = 1 (scaled up only, as Stable-DINO's matcher; early in training every GIoU is low).
        A NaN GIoU stays NaN (the matcher makes its cost invalid) and does not spoil its image's scale.
    """
    B = giou.shape[0]
    u = (giou + 1) / 2
    own = owner[None, :] == torch.arange(B, device=giou.device)[:, None]  # [B, T]
    best = u.nan_to_num(0.0, posinf=0.0, neginf=0.0).amax(dim=1).masked_fill(~own, 0.0).amax(dim=1)  # [B]
    scale = (1 / best.clamp(min=EPS)).clamp(min=1)
    return (u * scale[:, None, None]).pow(exponent)
