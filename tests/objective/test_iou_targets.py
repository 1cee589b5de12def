"""IoU-aware class losses beyond varifocal (objective/iou_targets.py) through SetCriterion: DEIM's MAL and
Stable-DINO's position-supervised loss, hand-computed; what their gradients do; the switches off leave the
criterion as it was."""

from __future__ import annotations

import math

import pytest
import torch

from dynamic_detr.config import LossConfig
from dynamic_detr.objective.criterion import SetCriterion
from dynamic_detr.objective.iou_targets import position_supervised_loss


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _outputs(logits: torch.Tensor, boxes: torch.Tensor) -> dict:
    return {"logits": logits, "boxes": boxes, "stages": [{"logits": logits, "boxes": boxes}]}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


TARGET = [0.5, 0.5, 0.2, 0.2]
HALF = [0.5, 0.5, 0.2, 0.1]  # IoU 0.5 with TARGET
FAR = [0.15, 0.85, 0.1, 0.1]  # no overlap with anything here


def test_mal_matches_hand_computation():
    """Two queries, two classes, one target of class 1: query 0 is matched with IoU 0.5. MAL (gamma 1.5): its
    class-1 logit has target 0.5^1.5 at weight 1; every other logit is a negative weighted p^1.5."""
    cfg = LossConfig(mal=True)
    g = cfg.mal_gamma
    logits = torch.tensor([[[-1.0, 0.4], [0.2, -2.0]]])
    losses = SetCriterion(2, cfg, "focal")(_outputs(logits, torch.tensor([[HALF, FAR]])), [_target([TARGET], [1])])
    p = [[_sigmoid(x) for x in row] for row in logits[0].tolist()]
    expected = _bce(p[0][1], 0.5**g)  # the match, weight 1
    expected += sum(q**g * _bce(q, 0.0) for q in (p[0][0], p[1][0], p[1][1]))
    assert g == 1.5
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-5)
    # with iou_aware on too, MAL replaces its varifocal loss
    both = SetCriterion(2, LossConfig(mal=True, iou_aware=True), "focal")
    assert both(_outputs(logits, torch.tensor([[HALF, FAR]])), [_target([TARGET], [1])])["loss_class"].item() == \
        pytest.approx(expected, rel=1e-5)


def _ps(x: float, t: float, positive: bool, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = _sigmoid(x)
    if positive:
        return alpha * abs(t - p) ** gamma * _bce(p, t)
    return (1 - alpha) * p**gamma * _bce(p, 0.0)


def test_position_supervised_loss_matches_hand_computation():
    """Two targets matched with IoU 0.5 and 0.25: targets 0.25 and 0.0625 (IoU^2), rescaled so the image's best
    is 1: 1 and 0.25. Positives alpha |t - p|^2 BCE(p, t), negatives (1 - alpha) p^2 BCE(p, 0), / 2 boxes; the
    class term weighs `position_supervised_weight` (6) in the total."""
    cfg = LossConfig(position_supervised=True)
    a = [0.3, 0.3, 0.2, 0.2]
    b = [0.7, 0.7, 0.2, 0.2]
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.1], [0.7, 0.7, 0.2, 0.05], FAR]])  # IoU 0.5 with a, 0.25 with b
    logits = torch.tensor([[[0.5, -1.0], [-0.7, 0.3], [-1.5, -0.2]]])
    losses = SetCriterion(2, cfg, "focal")(_outputs(logits, boxes), [_target([a, b], [0, 1])])
    x = logits[0].tolist()
    expected = (_ps(x[0][0], 1.0, True) + _ps(x[0][1], 0, False) + _ps(x[1][1], 0.25, True) + _ps(x[1][0], 0, False)
                + _ps(x[2][0], 0, False) + _ps(x[2][1], 0, False)) / 2
    assert losses["loss_class"].item() == pytest.approx(expected, rel=1e-5)
    total = 6.0 * losses["loss_class"] + 5.0 * losses["loss_bbox"] + 2.0 * losses["loss_giou"]
    assert cfg.position_supervised_weight == 6.0
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_position_supervised_targets_are_rescaled_per_image():
    """Each image's best-placed match gets target 1, whatever the other image's IoUs: the loss of two images
    is the sum of each alone."""
    onehot = torch.zeros(2, 2, 1)
    onehot[0, 0, 0] = onehot[1, 0, 0] = onehot[1, 1, 0] = 1
    iou = torch.tensor([[0.4, 0.0], [0.8, 0.2]])
    logits = torch.tensor([[[0.1], [-0.4]], [[0.6], [0.9]]])
    both = position_supervised_loss(logits, onehot, iou, 0.25, 2.0).item()
    x = logits[..., 0].tolist()
    expected = (_ps(x[0][0], 1.0, True) + _ps(x[0][1], 0, False)
                + _ps(x[1][0], 1.0, True) + _ps(x[1][1], (0.2 / 0.8) ** 2, True))
    assert both == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("switch", ["mal", "position_supervised"])
def test_a_poorly_placed_match_is_pushed_down_a_well_placed_one_up(switch):
    """Two matches at the same score p = 0.5, IoU 0.9 and 0.3: the IoU-aware losses raise the first one's score
    and lower the second's (the focal loss raises both), so scores come to rank by localisation."""
    t = [_target([TARGET, [0.2, 0.2, 0.2, 0.2]], [0, 0])]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.18], [0.2, 0.2, 0.2, 0.06]]])  # IoU 0.9, 0.3
    matches = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    grads = {}
    for name, cfg in (("focal", LossConfig()), (switch, LossConfig(**{switch: True}))):
        logits = torch.zeros(1, 2, 1, requires_grad=True)
        SetCriterion(1, cfg, "focal").loss_class(logits, t, matches, torch.tensor(2.0), boxes).backward()
        grads[name] = logits.grad[0, :, 0].tolist()
    assert grads["focal"][0] < 0 and grads["focal"][1] < 0, grads  # plain focal: both up
    assert grads[switch][0] < 0 < grads[switch][1], grads  # gradient descent: IoU 0.9 up, IoU 0.3 down


def test_the_criterion_matches_with_the_position_modulated_cost():
    """Query 0 sure of the class but off the box, query 1 unsure but on it (test_matcher.py has the costs): the
    criterion's matcher takes query 1 with `cost_position_modulated`, so the box losses are 0."""
    logits, boxes = torch.tensor([[[3.0], [0.0]]]), torch.tensor([[[0.65, 0.5, 0.2, 0.2], TARGET]])
    t = [_target([TARGET], [0])]
    plain = SetCriterion(1, LossConfig(), "focal")(_outputs(logits, boxes), t)
    modulated = SetCriterion(1, LossConfig(cost_position_modulated=True), "focal")(_outputs(logits, boxes), t)
    assert plain["loss_bbox"].item() > 0.1 and modulated["loss_bbox"].item() == 0


@pytest.mark.parametrize("cfg", [LossConfig(mal=True), LossConfig(position_supervised=True),
                                 LossConfig(mal=True, cost_position_modulated=True)])
def test_every_branch_uses_the_chosen_class_loss(cfg):
    """The one-to-many and the denoising queries' class loss is the switch's too (it changes their totals)."""
    gen = torch.Generator().manual_seed(5)
    out = _outputs(torch.randn(1, 4, 3, generator=gen), torch.rand(1, 4, 4, generator=gen) * 0.4 + 0.2)
    out["hybrid_stages"] = [{"logits": torch.randn(1, 8, 3, generator=gen),
                             "boxes": torch.rand(1, 8, 4, generator=gen) * 0.4 + 0.2}]
    dn_boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.1], [0.7, 0.6, 0.3, 0.3]]])
    out["dn"] = {"target": torch.tensor([[0, 1]]), "groups": 1, "group_size": 2}
    out["dn_stages"] = [{"logits": torch.randn(1, 2, 3, generator=gen), "boxes": dn_boxes}]
    targets = [_target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]], [0, 2])]
    on, off = SetCriterion(3, cfg, "focal")(out, targets), SetCriterion(3, LossConfig(), "focal")(out, targets)
    for key in ("loss_class", "loss_hybrid", "loss_dn"):
        assert on[key].item() != pytest.approx(off[key].item(), rel=1e-3), key


@pytest.mark.parametrize("cfg", [LossConfig(mal=True), LossConfig(position_supervised=True),
                                 LossConfig(iou_aware=True, cost_position_modulated=True)])
def test_bf16_autocast_losses_are_float32(cfg):
    crit = SetCriterion(3, cfg, "focal")
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 3, generator=gen)
    boxes = torch.rand(2, 5, 4, generator=gen) * 0.4 + 0.1
    targets = [_target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]], [0, 2]), _target([], [])]
    ref = crit(_outputs(logits.bfloat16().float(), boxes.bfloat16().float()), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crit(_outputs(logits.bfloat16(), boxes.bfloat16()), targets)
    for key, value in got.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(ref[key].item(), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- the switches off
def _fixed_case() -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """Three one-to-one stages, two one-to-many and two denoising ones, two images (one target / two)."""
    g = torch.Generator().manual_seed(7)
    B, C = 2, 3

    def stage(k: int) -> dict[str, torch.Tensor]:
        return {"logits": torch.randn(B, k, C, generator=g) * 2,
                "boxes": torch.cat([torch.rand(B, k, 2, generator=g) * 0.6 + 0.2,
                                    torch.rand(B, k, 2, generator=g) * 0.3 + 0.05], -1)}

    stages = [stage(6) for _ in range(3)]
    out = {"stages": stages, **stages[-1], "hybrid_stages": [stage(12) for _ in range(2)],
           "dn_stages": [stage(4) for _ in range(2)],
           "dn": {"target": torch.tensor([[0, 1, 0, 1], [0, -1, 0, -1]]), "groups": 2, "group_size": 2}}
    targets = [_target([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]], [0, 2]), _target([[0.5, 0.4, 0.25, 0.1]], [1])]
    return out, targets


BEFORE = {"default": 72.31632995605469, "iou_aware": 47.631935119628906}
"""`loss` of `_fixed_case` from the criterion before MAL and Stable-DINO's switches existed (commit 5b4c8ee)."""


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_the_new_switches_off_leave_the_criterion_as_it_was(name):
    """The default (and iou_aware's) loss as before the switches; with them off their parameters change nothing,
    to the bit."""
    base = LossConfig(iou_aware=name == "iou_aware")
    got = SetCriterion(3, base, "focal")(*_fixed_case())
    assert got["loss"].item() == pytest.approx(BEFORE[name], rel=1e-6)
    inert = LossConfig(iou_aware=base.iou_aware, mal_gamma=3.0, position_supervised_weight=1.0,
                       cost_position_exponent=2.0)
    again = SetCriterion(3, inert, "focal")(*_fixed_case())
    assert again.keys() == got.keys()
    for key, value in got.items():
        assert torch.equal(value, again[key]), key
