"""SetCriterion: hand-computed loss values, deep supervision, degenerate boxes, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from dynamic_detr.config import LossConfig
from dynamic_detr.objective.criterion import SetCriterion


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _outputs(stages: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    out = {"stages": [{"logits": lg, "boxes": bx} for lg, bx in stages]}
    out.update(out["stages"][-1])
    return out


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


TBOXES = [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_perfect_boxes_give_zero_box_losses(class_loss: str) -> None:
    C = 3
    crit = SetCriterion(C, LossConfig(), class_loss)
    boxes = torch.tensor([[[0.9, 0.9, 0.1, 0.1], TBOXES[1], [0.1, 0.8, 0.1, 0.1], TBOXES[0]]])
    logits = torch.full((1, 4, C + (class_loss == "softmax")), -5.0)
    logits[0, 1, 2] = logits[0, 3, 0] = 5.0
    if class_loss == "softmax":
        logits[0, [0, 2], C] = 5.0
    losses = crit(_outputs([(logits, boxes)]), [_target(TBOXES, [0, 2])])
    assert losses["loss_bbox"].item() < 1e-6
    assert losses["loss_giou"].item() < 1e-5
    assert losses["loss_class"].item() < 0.05


def test_focal_loss_matches_hand_computation() -> None:
    """One query, two classes, one target of class 1: sum of the per-logit focal terms / 1 box."""
    cfg = LossConfig()
    a, g = cfg.focal_alpha, cfg.focal_gamma
    crit = SetCriterion(2, cfg, "focal")
    x0, x1 = 0.3, -0.8
    losses = crit(_outputs([(torch.tensor([[[x0, x1]]]), torch.tensor([[TBOXES[0]]]))]),
                  [_target([TBOXES[0]], [1])])
    p0, p1 = _sigmoid(x0), _sigmoid(x1)
    expected = (1 - a) * p0**g * -math.log(1 - p0) + a * (1 - p1) ** g * -math.log(p1)
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_is_normalised_by_number_of_boxes() -> None:
    """Two copies of the same image: per-box normalisation keeps every term unchanged."""
    crit = SetCriterion(3, LossConfig(), "focal")
    gen = torch.Generator().manual_seed(1)
    logits, boxes = torch.randn(1, 5, 3, generator=gen), torch.rand(1, 5, 4, generator=gen) * 0.4 + 0.1
    tgt = _target(TBOXES, [1, 2])
    one = crit(_outputs([(logits, boxes)]), [tgt])
    two = crit(_outputs([(logits.repeat(2, 1, 1), boxes.repeat(2, 1, 1))]), [tgt, tgt])
    for key in ("loss_class", "loss_bbox", "loss_giou", "loss"):
        assert two[key].item() == pytest.approx(one[key].item(), rel=1e-5)


def test_softmax_without_targets_is_weighted_no_object_ce() -> None:
    cfg = LossConfig(no_object_weight=0.1)
    crit = SetCriterion(2, cfg, "softmax")
    logits = torch.tensor([[[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]])
    losses = crit(_outputs([(logits, torch.rand(1, 2, 4))]), [_target([], [])])
    ce = [-torch.log_softmax(logits[0, q], -1)[2].item() for q in range(2)]
    # DETR's weighted mean: sum(w * CE) / sum(w), every query weighted by no_object_weight
    expected = sum(0.1 * c for c in ce) / (0.1 * 2)
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0


def test_softmax_no_object_weight_down_weights_unmatched_queries() -> None:
    crit = SetCriterion(2, LossConfig(no_object_weight=0.1), "softmax")
    logits = torch.tensor([[[1.0, -1.0, 0.5], [0.0, 2.0, -0.5]]])
    boxes = torch.tensor([[TBOXES[0], [0.9, 0.9, 0.05, 0.05]]])
    losses = crit(_outputs([(logits, boxes)]), [_target([TBOXES[0]], [1])])
    ls = [torch.log_softmax(logits[0, q], -1) for q in range(2)]
    expected = (1.0 * -ls[0][1].item() + 0.1 * -ls[1][2].item()) / (1.0 + 0.1)
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-5)


def test_focal_without_targets_counts_one_box() -> None:
    crit = SetCriterion(1, LossConfig(), "focal")
    x = 0.7
    losses = crit(_outputs([(torch.tensor([[[x]]]), torch.rand(1, 1, 4))]), [_target([], [])])
    p = _sigmoid(x)
    assert losses["loss_class"].item() == pytest.approx(0.75 * p**2 * -math.log(1 - p), rel=1e-5)


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_deep_supervision_keys_total_and_per_stage_matching(class_loss: str) -> None:
    cfg = LossConfig(loss_class=2.0, loss_bbox=5.0, loss_giou=3.0)
    crit = SetCriterion(3, cfg, class_loss)
    gen = torch.Generator().manual_seed(0)
    Cp = 3 + (class_loss == "softmax")
    stages = []
    for _ in range(3):
        logits = torch.randn(2, 4, Cp, generator=gen, requires_grad=True)
        boxes = (torch.rand(2, 4, 4, generator=gen) * 0.4 + 0.1).requires_grad_()
        stages.append((logits, boxes))
    # stage 0 holds the targets exactly, in a different slot order per image: matched per stage -> 0 L1
    with torch.no_grad():
        stages[0][1][0, 2] = torch.tensor(TBOXES[0])
        stages[0][1][0, 0] = torch.tensor(TBOXES[1])
        stages[0][1][1, 3] = torch.tensor(TBOXES[1])
    targets = [_target(TBOXES, [0, 1]), _target([TBOXES[1]], [2])]
    losses = crit(_outputs(stages), targets)
    for s in range(3):
        for name in ("class", "bbox", "giou"):
            assert f"loss_{name}_{s}" in losses
    assert losses["loss_bbox_0"].item() < 1e-6 < losses["loss_bbox_2"].item()
    for name in ("class", "bbox", "giou"):
        assert losses[f"loss_{name}"] is losses[f"loss_{name}_2"]
    total = sum(2.0 * losses[f"loss_class_{s}"] + 5.0 * losses[f"loss_bbox_{s}"]
                + 3.0 * losses[f"loss_giou_{s}"] for s in range(3))
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    losses["loss"].backward()
    for logits, boxes in stages:
        assert logits.grad is not None and logits.grad.abs().sum() > 0
        assert boxes.grad is not None and torch.isfinite(boxes.grad).all()


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_degenerate_boxes_give_finite_loss_and_grads(class_loss: str) -> None:
    crit = SetCriterion(2, LossConfig(), class_loss)
    boxes = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.3, 0.3, -0.2, 0.1], [0.0, 0.0, 0.0, 0.0],
                           [1.5, -0.5, 0.0, -1.0]]], requires_grad=True)
    logits = torch.zeros(1, 4, 2 + (class_loss == "softmax"), requires_grad=True)
    targets = [_target([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1], [0.8, 0.2, 0.1, 0.3]], [0, 1, 1])]
    losses = crit(_outputs([(logits, boxes)]), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert torch.isfinite(boxes.grad).all() and torch.isfinite(logits.grad).all()


def test_nan_boxes_do_not_crash() -> None:
    crit = SetCriterion(2, LossConfig(), "focal")
    boxes = torch.full((1, 3, 4), float("nan"))
    losses = crit(_outputs([(torch.zeros(1, 3, 2), boxes)]), [_target(TBOXES, [0, 1])])
    assert torch.isfinite(losses["loss_class"])  # the class term does not depend on the boxes


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_bf16_autocast_losses_are_float32(class_loss: str) -> None:
    crit = SetCriterion(3, LossConfig(), class_loss)
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3 + (class_loss == "softmax"), generator=gen)
    boxes = torch.rand(2, 5, 4, generator=gen) * 0.4 + 0.1
    targets = [_target(TBOXES, [0, 2]), _target([], [])]
    ref = crit(_outputs([(logits.bfloat16().float(), boxes.bfloat16().float())]), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crit(_outputs([(logits.bfloat16(), boxes.bfloat16())]), targets)
    for key, value in got.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6)


def test_rejects_bad_labels_and_logit_width() -> None:
    crit = SetCriterion(2, LossConfig(), "focal")
    out = _outputs([(torch.zeros(1, 2, 2), torch.rand(1, 2, 4))])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        crit(out, [_target([TBOXES[0]], [2])])
    with pytest.raises(ValueError, match="expects logits"):
        SetCriterion(2, LossConfig(), "softmax")(out, [_target([TBOXES[0]], [1])])


# --------------------------------------------------------------------------- beyond-paper branches
def test_hybrid_branch_matches_each_target_k_times() -> None:
    crit = SetCriterion(3, LossConfig(hybrid_k=3), "focal")
    seen = []
    original = crit.matcher.__call__

    def spy(logits, boxes, targets):
        seen.append([len(t["labels"]) for t in targets])
        return original(logits, boxes, targets)

    crit.matcher = spy  # type: ignore[assignment]
    main = [(torch.zeros(1, 4, 3), torch.rand(1, 4, 4) * 0.5 + 0.25)]
    hybrid = [{"logits": torch.zeros(1, 8, 3), "boxes": torch.rand(1, 8, 4) * 0.5 + 0.25}]
    out = _outputs(main)
    out["hybrid_stages"] = hybrid
    losses = crit(out, [_target(TBOXES, [0, 2])])
    assert seen == [[2], [6]]  # main: 2 targets; hybrid: each repeated 3 times
    assert losses["loss_hybrid"] > 0
    alone = crit(_outputs(main), [_target(TBOXES, [0, 2])])
    torch.testing.assert_close(losses["loss"] - alone["loss"], losses["loss_hybrid"])


def test_denoising_queries_use_their_fixed_targets() -> None:
    crit = SetCriterion(3, LossConfig(), "focal")
    t = _target(TBOXES, [0, 2])
    dn_boxes = torch.tensor([[TBOXES[0], TBOXES[1], [0.5, 0.5, 0.1, 0.1], TBOXES[0], TBOXES[1], [0.5, 0.5, 0.1, 0.1]]])
    dn = {"target": torch.tensor([[0, 1, -1, 0, 1, -1]]), "groups": 2, "group_size": 3}
    out = _outputs([(torch.zeros(1, 4, 3), torch.rand(1, 4, 4) * 0.5 + 0.25)])
    out["dn"] = dn
    out["dn_stages"] = [{"logits": torch.zeros(1, 6, 3), "boxes": dn_boxes}]
    perfect = crit(out, [t])
    swapped = crit({**out, "dn_stages": [{"logits": torch.zeros(1, 6, 3),
                                          "boxes": dn_boxes[:, [1, 0, 2, 4, 3, 5]]}]}, [t])
    # perfect boxes leave only the class term; swapped boxes (a Hungarian matcher would undo the swap) do not
    w = LossConfig()
    class_only = w.loss_class * crit.loss_class(torch.zeros(1, 6, 3), [t, t][:1],
                                                [(torch.tensor([0, 1, 3, 4]), torch.tensor([0, 1, 0, 1]))],
                                                torch.tensor(4.0))
    torch.testing.assert_close(perfect["loss_dn"], class_only)
    assert swapped["loss_dn"] > perfect["loss_dn"] + 1


def test_iou_aware_target_is_the_iou() -> None:
    """Varifocal: for a matched query the loss is smallest when its probability equals its box's IoU."""
    t = [_target([[0.5, 0.5, 0.2, 0.2]], [1])]
    box = torch.tensor([[[0.5, 0.5, 0.2, 0.1]]])  # IoU 0.5 with the target
    crit = SetCriterion(3, LossConfig(iou_aware=True), "focal")

    def loss(p: float) -> float:
        logits = torch.full((1, 1, 3), -20.0)
        logits[0, 0, 1] = math.log(p / (1 - p))
        return float(crit.loss_class(logits, t, [(torch.tensor([0]), torch.tensor([0]))], torch.tensor(1.0), box))

    values = {p: loss(p) for p in (0.3, 0.5, 0.7, 0.95)}
    assert min(values, key=values.get) == 0.5, values
    plain = SetCriterion(3, LossConfig(), "focal")
    logits = torch.full((1, 1, 3), -20.0)
    logits[0, 0, 1] = math.log(0.5 / 0.5)
    matches = [(torch.tensor([0]), torch.tensor([0]))]
    assert float(plain.loss_class(logits, t, matches, torch.tensor(1.0), box)) != values[0.5]
