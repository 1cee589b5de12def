"""IoU-aware class losses (not in the paper): the class target of a matched query follows how well its box
fits its target, so a detection's score ranks by localisation quality as well as by class.

Each takes sigmoid logits [B, K, C], `onehot` [B, K, C] (1 at a matched query's target class, 0 elsewhere)
and `iou` [B, K] (a matched query's IoU with its target, 0 for the others; no gradient) and returns the sum
over every logit (the criterion divides it by the number of target boxes, as the focal loss). In float32:
the criterion calls them outside autocast.

* varifocal: VarifocalNet (Zhang et al. 2021) as RT-DETR uses it (`loss.iou_aware`).
* matchability-aware: DEIM's MAL (Huang et al. 2025; `loss.mal`).
* position-supervised: Stable-DINO's (Liu et al. 2023, "Detection Transformer with Stable Matching";
  `loss.position_supervised`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from .boxes import safe_xyxy

VARIFOCAL_MIN_IOU = 0.01
"""A matched query's varifocal target and weight are at least this: a query matched with no overlap still
learns its class a little (the weight of a positive is its target)."""

POSITION_TARGET_EXPONENT = 2.0
"""Stable-DINO's target before its rescaling: IoU^2 (its criterion's `ta_beta`, with `ta_alpha` 0 the
probability does not enter the target)."""


def matched_iou(boxes: Tensor, targets: list[dict[str, Tensor]], matches: list[tuple[Tensor, Tensor]],
                batch_idx: Tensor, pred_idx: Tensor) -> Tensor:
    """[B, K] IoU of each matched query's box (cxcywh, [B, K, 4]) with its target's, 0 for the unmatched;
    detached (the IoU is a target, not a path for the boxes' gradient)."""
    B, K = boxes.shape[:2]
    iou = torch.zeros(B, K, device=boxes.device)
    if len(batch_idx):
        tgt = torch.cat([t["boxes"][j.to(boxes.device)] for t, (_, j) in zip(targets, matches, strict=True)])
        src = boxes[batch_idx, pred_idx].detach()
        iou[batch_idx, pred_idx] = box_iou(safe_xyxy(src), safe_xyxy(tgt)).diagonal()
    return iou


def varifocal_loss(logits: Tensor, onehot: Tensor, iou: Tensor, alpha: float, gamma: float) -> Tensor:
    """A matched query's target is its IoU (at least VARIFOCAL_MIN_IOU) and so is its weight; a negative is
    weighted alpha * p^gamma (p detached)."""
    score = onehot * iou.clamp(min=VARIFOCAL_MIN_IOU)[..., None]
    prob = logits.sigmoid().detach()
    weight = alpha * prob.pow(gamma) * (1 - onehot) + score
    return F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="sum")


def matchability_aware_loss(logits: Tensor, onehot: Tensor, iou: Tensor, gamma: float) -> Tensor:
    """DEIM's MAL: a matched query's target is IoU^gamma at weight 1 (varifocal weighs it by its IoU, so a
    poorly placed match hardly learns); a negative is weighted p^gamma (p detached; no alpha, as DEIM's
    default `mal_alpha=None`)."""
    target = onehot * iou.pow(gamma)[..., None]
    prob = logits.sigmoid().detach()
    weight = prob.pow(gamma) * (1 - onehot) + onehot
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")


def position_supervised_loss(logits: Tensor, onehot: Tensor, iou: Tensor, alpha: float, gamma: float) -> Tensor:
    """Stable-DINO's position-supervised loss: a matched query's target t is IoU^2, rescaled per image so that
    its best-placed matched query has t = 1 (scaled up only: early in training every IoU is small); the
    positive term is alpha * |t - p|^gamma * BCE(p, t), the negative one the focal loss's
    (1 - alpha) * p^gamma * BCE(p, 0). As in its code, the modulating factors carry gradient."""
    t = iou.pow(POSITION_TARGET_EXPONENT)  # [B, K]
    scale = (1 / t.amax(dim=1).clamp(min=1e-8)).clamp(min=1)  # an image without a match keeps its zeros
    target = onehot * (t * scale[:, None])[..., None]
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = alpha * (target - prob).abs().pow(gamma) * bce
    neg = (1 - alpha) * prob.pow(gamma) * bce
    return (onehot * pos + (1 - onehot) * neg).sum()
