"""FCOS assignment and loss of the dense auxiliary head."""

from __future__ import annotations

import torch

from dynamic_detr.model.dense_head import level_points
from dynamic_detr.objective.dense_loss import UNASSIGNED, dense_loss, fcos_assign

STRIDES = (8, 16, 32, 64, 128)


def _points(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Location centres of an h x w input's P3-P7 (ceil division, as the backbone's strides give)."""
    return level_points([torch.zeros(1, 1, -(-h // s), -(-w // s)) for s in STRIDES], STRIDES)


def test_assignment_centre_region_and_level_ranges():
    points, stride = _points(256, 256)
    small = [40.0, 40.0, 72.0, 72.0]  # 32 px: max distance <= 32 -> P3 only
    large = [0.0, 0.0, 200.0, 200.0]  # max distance ~100-190: P5 (128, 256] or P4 (64, 128]
    idx = fcos_assign(points, stride, torch.tensor([small, large]), radius=1.5)
    pos_small = torch.nonzero(idx == 0).squeeze(1)
    assert len(pos_small) > 0 and stride[pos_small].eq(8).all()
    # centre sampling: within 1.5 strides (12 px) of the centre (56, 56)
    assert ((points[pos_small] - 56).abs().amax(1) < 12).all()
    pos_large = torch.nonzero(idx == 1).squeeze(1)
    assert len(pos_large) > 0 and stride[pos_large].ge(16).all()
    reach = torch.stack([points[pos_large, 0], points[pos_large, 1], 200 - points[pos_large, 0],
                         200 - points[pos_large, 1]], 1).amax(1)
    assert ((reach > stride[pos_large] * 4) & (reach <= stride[pos_large] * 8)).all()


def test_smallest_box_wins_and_tiny_boxes_get_their_nearest_location():
    points, stride = _points(64, 64)
    big = [0.0, 0.0, 40.0, 40.0]
    inner = [14.0, 14.0, 26.0, 26.0]  # inside `big`, its locations go to the smaller box
    tiny = [46.0, 46.0, 51.0, 51.0]  # 5 px between P3 centres 44 and 52: no location inside it
    idx = fcos_assign(points, stride, torch.tensor([big, inner, tiny]), radius=1.5)
    at = {tuple(p.tolist()): int(i) for p, i, s in zip(points, idx, stride, strict=True) if s == 8}
    assert at[(20.0, 20.0)] == 1  # inside both: the smaller wins
    assert (idx == 2).sum() == 1 and at[(52.0, 52.0)] == 2  # nearest P3 location to its centre (48.5, 48.5)
    assert fcos_assign(points, stride, torch.zeros(0, 4), 1.5).eq(UNASSIGNED).all()


def test_loss_is_small_for_perfect_predictions_and_large_for_wrong_ones():
    points, stride = _points(64, 64)
    n = len(points)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])  # pixels; valid size 64 x 64
    target = [{"boxes": torch.tensor([[24 / 64, 24 / 64, 32 / 64, 32 / 64]]), "labels": torch.tensor([1])}]
    idx = fcos_assign(points, stride, gt, 1.5)
    pos = idx >= 0
    ltrb = torch.zeros(1, n, 4)
    ltrb[0, pos] = torch.cat([points[pos] - gt[0, :2], gt[0, 2:] - points[pos]], 1)
    logits = torch.full((1, n, 3), -10.0)
    logits[0, pos, 1] = 10.0
    lr, tb = ltrb[0, pos][:, 0::2], ltrb[0, pos][:, 1::2]
    ctr = ((lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1))).sqrt()
    centerness = torch.full((1, n), -10.0)
    centerness[0, pos] = torch.logit(ctr.clamp(1e-4, 1 - 1e-4))
    dense = {"logits": logits, "ltrb": ltrb, "centerness": centerness, "points": points, "stride": stride}
    valid = torch.tensor([[64.0, 64.0]])
    good = dense_loss(dense, target, valid, 1.5)
    assert good["dense_class"] < 1e-3 and good["dense_giou"] < 1e-4
    # the centre-ness BCE at its own target is the target's entropy, its minimum
    ent = torch.nn.functional.binary_cross_entropy(ctr, ctr, reduction="sum") / pos.sum()
    torch.testing.assert_close(good["dense_ctr"], ent, atol=1e-3, rtol=1e-3)
    bad = dense_loss({**dense, "logits": -logits, "ltrb": ltrb * 0.3}, target, valid, 1.5)
    assert bad["dense_class"] > 1 and bad["dense_giou"] > 0.3


def test_loss_without_targets_is_finite_and_pushes_scores_down():
    points, stride = _points(32, 32)
    n = len(points)
    logits = torch.zeros(1, n, 2, requires_grad=True)
    dense = {"logits": logits, "ltrb": torch.ones(1, n, 4, requires_grad=True),
             "centerness": torch.zeros(1, n, requires_grad=True), "points": points, "stride": stride}
    out = dense_loss(dense, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
                     torch.tensor([[32.0, 32.0]]), 1.5)
    total = sum(out.values())
    total.backward()
    assert torch.isfinite(total) and (logits.grad > 0).all()
