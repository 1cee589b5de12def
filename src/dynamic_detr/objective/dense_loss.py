"""FCOS loss of the dense auxiliary head (not in the paper; Co-DETR's one-to-many auxiliary branch).

Assignment (FCOS with centre sampling, as torchvision's FCOS): a location is a positive of a target when it
lies inside the box, within `radius` x stride of its centre, and max(l, t, r, b) falls in the level's range
(4 x stride, 8 x stride] (the finest level from 0, the coarsest to infinity); among several targets, the
smallest box wins. Tiny objects can fall between the locations of P3: a target with no positive gets the
location nearest to its centre (ATSS's guarantee of candidates for every target).

Loss: sigmoid focal over all locations / positives, GIoU on the positives' boxes / positives, BCE of the
centre-ness on the positives / positives (torchvision FCOS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss

from ..model.dense_head import dense_boxes

UNASSIGNED = -1


@torch.no_grad()
def fcos_assign(points: Tensor, stride: Tensor, gt_xyxy: Tensor, radius: float) -> Tensor:
    """points [N, 2] (x, y), stride [N], gt_xyxy [G, 4] input pixels -> [N] target index or UNASSIGNED."""
    n = points.shape[0]
    if gt_xyxy.numel() == 0:
        return torch.full((n,), UNASSIGNED, dtype=torch.long, device=points.device)
    x, y = points[:, 0, None], points[:, 1, None]
    x0, y0, x1, y1 = gt_xyxy.unbind(1)
    dist = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # [N, G, 4]
    centre = (gt_xyxy[:, :2] + gt_xyxy[:, 2:]) / 2
    near = (points[:, None] - centre[None]).abs().amax(2) < radius * stride[:, None]
    match = near & (dist.amin(2) > 0)
    reach = dist.amax(2)
    lower = stride * 4
    upper = stride * 8
    lower[stride == stride.min()] = 0
    upper[stride == stride.max()] = float("inf")
    match &= (reach > lower[:, None]) & (reach <= upper[:, None])
    area = (gt_xyxy[:, 2] - gt_xyxy[:, 0]) * (gt_xyxy[:, 3] - gt_xyxy[:, 1])
    score = match.float() * (1e8 - area[None])  # smallest box first
    best, idx = score.max(1)
    idx[best <= 0] = UNASSIGNED
    # a target left without a positive takes the finest-level location nearest its centre
    finest = stride == stride.min()
    lost = torch.ones(len(gt_xyxy), dtype=torch.bool, device=points.device)
    lost[idx[idx >= 0]] = False
    if lost.any():
        d = (points[finest][:, None] - centre[None]).pow(2).sum(2)  # [N_finest, G]
        nearest = d.argmin(0)  # [G]
        rows = torch.nonzero(finest).squeeze(1)[nearest]
        g = torch.nonzero(lost).squeeze(1)
        idx[rows[g]] = g
    return idx


def dense_loss(dense: dict[str, Tensor], targets: list[dict[str, Tensor]], valid_hw: Tensor, radius: float,
               alpha: float = 0.25, gamma: float = 2.0, num_pos_avg: Tensor | None = None) -> dict[str, Tensor]:
    """FCOS loss.

    Args:
        dense: `DenseHead` output (logits [B, N, C], ltrb [B, N, 4], centerness [B, N], points, stride).
        targets: B dicts, `boxes` [G, 4] cxcywh normalised by the valid size, `labels` [G].
        valid_hw: [B, 2] (h, w) pixels.
        num_pos_avg: the positives count to divide by (e.g. averaged over processes); default: this batch's.
    Returns:
        {"dense_class", "dense_giou", "dense_ctr"} float32 scalars.
    """
    logits = dense["logits"]
    points, stride = dense["points"], dense["stride"]
    cls_target = torch.zeros_like(logits)
    pos_gt, pos_batch, pos_index = [], [], []
    for i, t in enumerate(targets):
        scale = valid_hw[i].flip(0).repeat(2)
        gt = box_convert(t["boxes"].float(), "cxcywh", "xyxy") * scale
        idx = fcos_assign(points, stride, gt, radius)
        pos = torch.nonzero(idx >= 0).squeeze(1)
        cls_target[i, pos, t["labels"][idx[pos]]] = 1.0
        pos_gt.append(gt[idx[pos]])
        pos_batch.append(torch.full_like(pos, i))
        pos_index.append(pos)
    pos_batch_t, pos_index_t = torch.cat(pos_batch), torch.cat(pos_index)
    gt = torch.cat(pos_gt)
    num_pos = num_pos_avg if num_pos_avg is not None else logits.new_tensor(float(max(len(gt), 1)))
    loss_cls = sigmoid_focal_loss(logits, cls_target, alpha=alpha, gamma=gamma, reduction="sum") / num_pos
    if len(gt) == 0:
        zero = dense["ltrb"].sum() * 0 + dense["centerness"].sum() * 0
        return {"dense_class": loss_cls, "dense_giou": zero, "dense_ctr": zero}
    boxes = dense_boxes(dense)[pos_batch_t, pos_index_t]
    loss_giou = generalized_box_iou_loss(boxes, gt, reduction="sum") / num_pos
    p = points[pos_index_t]
    dist = torch.cat([p - gt[:, :2], gt[:, 2:] - p], dim=1).clamp(min=0)  # l, t, r, b
    lr, tb = dist[:, 0::2], dist[:, 1::2]
    ctr_target = ((lr.amin(1) / lr.amax(1).clamp(min=1e-6)) * (tb.amin(1) / tb.amax(1).clamp(min=1e-6))).sqrt()
    ctr = dense["centerness"][pos_batch_t, pos_index_t]
    loss_ctr = F.binary_cross_entropy_with_logits(ctr, ctr_target, reduction="sum") / num_pos
    return {"dense_class": loss_cls, "dense_giou": loss_giou, "dense_ctr": loss_ctr}
