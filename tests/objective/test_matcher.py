"""HungarianMatcher against brute-force assignment with an independently written cost."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dynamic_detr.objective.matcher import HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
W_CLASS, W_BBOX, W_GIOU = 2.0, 5.0, 2.0


def _giou(a: list[float], b: list[float]) -> float:
    """GIoU of two cxcywh boxes, scalar arithmetic."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _pair_cost(logits: list[float], box: list[float], label: int, tbox: list[float],
               class_loss: str) -> float:
    if class_loss == "focal":
        p = 1 / (1 + math.exp(-logits[label]))
        pos = ALPHA * (1 - p) ** GAMMA * -math.log(p)
        neg = (1 - ALPHA) * p**GAMMA * -math.log(1 - p)
        c_class = pos - neg
    else:
        z = sum(math.exp(v) for v in logits)
        c_class = -math.exp(logits[label]) / z
    l1 = sum(abs(u - v) for u, v in zip(box, tbox, strict=True))
    return W_CLASS * c_class + W_BBOX * l1 - W_GIOU * _giou(box, tbox)


def _brute_force(cost: list[list[float]]) -> float:
    """Minimum total cost of a one-to-one assignment of min(K, N) pairs."""
    K, N = len(cost), len(cost[0])
    if N <= K:
        return min(sum(cost[k][n] for n, k in enumerate(ks)) for ks in itertools.permutations(range(K), N))
    return min(sum(cost[k][n] for k, n in enumerate(ns)) for ns in itertools.permutations(range(N), K))


def _random_case(K: int, sizes: list[int], C: int, class_loss: str, gen: torch.Generator):
    Cp = C + (class_loss == "softmax")
    B = len(sizes)
    logits = torch.randn(B, K, Cp, generator=gen) * 2
    boxes = torch.cat([torch.rand(B, K, 2, generator=gen) * 0.6 + 0.2,
                       torch.rand(B, K, 2, generator=gen) * 0.3 + 0.05], dim=-1)
    targets = [{"boxes": torch.cat([torch.rand(n, 2, generator=gen) * 0.6 + 0.2,
                                    torch.rand(n, 2, generator=gen) * 0.3 + 0.05], dim=-1),
                "labels": torch.randint(0, C, (n,), generator=gen)} for n in sizes]
    return logits, boxes, targets


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
@pytest.mark.parametrize(("K", "sizes"), [(4, [2, 0, 4]), (5, [3, 1]), (3, [5]), (4, [4, 4]), (2, [0])])
def test_matches_brute_force(class_loss: str, K: int, sizes: list[int]) -> None:
    matcher = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU, class_loss, ALPHA, GAMMA)
    gen = torch.Generator().manual_seed(K * 31 + sum(sizes))
    for _ in range(3):
        logits, boxes, targets = _random_case(K, sizes, 3, class_loss, gen)
        matches = matcher(logits, boxes, targets)
        assert len(matches) == len(sizes)
        for b, (pred_idx, tgt_idx) in enumerate(matches):
            n = sizes[b]
            assert pred_idx.dtype == tgt_idx.dtype == torch.int64
            assert len(pred_idx) == len(tgt_idx) == min(K, n)
            assert len(set(pred_idx.tolist())) == len(pred_idx) and len(set(tgt_idx.tolist())) == len(tgt_idx)
            assert pred_idx.tolist() == sorted(pred_idx.tolist())
            if n == 0:
                continue
            cost = [[_pair_cost(logits[b, k].tolist(), boxes[b, k].tolist(), int(targets[b]["labels"][j]),
                                targets[b]["boxes"][j].tolist(), class_loss) for j in range(n)]
                    for k in range(K)]
            got = sum(cost[k][j] for k, j in zip(pred_idx.tolist(), tgt_idx.tolist(), strict=True))
            assert got == pytest.approx(_brute_force(cost), abs=1e-4)


@pytest.mark.parametrize("position_exponent", [None, 0.5])
@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_nan_predictions_do_not_crash_and_are_avoided(class_loss: str, position_exponent: float | None) -> None:
    matcher = HungarianMatcher(class_loss=class_loss, position_exponent=position_exponent)
    gen = torch.Generator().manual_seed(0)
    logits, boxes, targets = _random_case(6, [2], 4, class_loss, gen)
    boxes[0, [0, 2]] = float("nan")
    logits[0, 4] = float("nan")
    boxes[0, 5, 2:] = float("inf")
    (pred_idx, tgt_idx), = matcher(logits, boxes, targets)
    assert pred_idx.tolist() == [1, 3]  # the only finite predictions
    assert sorted(tgt_idx.tolist()) == [0, 1]


def test_all_nan_still_assigns() -> None:
    matcher = HungarianMatcher()
    logits = torch.full((1, 3, 2), float("nan"))
    boxes = torch.full((1, 3, 4), float("nan"))
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([1])}]
    (pred_idx, tgt_idx), = matcher(logits, boxes, targets)
    assert len(pred_idx) == 1 and tgt_idx.tolist() == [0]


def test_all_images_empty() -> None:
    matcher = HungarianMatcher()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    matches = matcher(torch.randn(2, 4, 3), torch.rand(2, 4, 4), targets)
    assert [(len(i), len(j)) for i, j in matches] == [(0, 0), (0, 0)]


def test_obvious_assignment_and_bf16_inputs() -> None:
    """Each target has one prediction sitting exactly on it with the right class: the matcher finds it,
    also from bf16 tensors under autocast."""
    tboxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2], [0.5, 0.8, 0.2, 0.1]])
    labels = torch.tensor([2, 0, 1])
    order = [3, 0, 1]  # prediction holding target j
    boxes = torch.tensor([[[0.9, 0.1, 0.05, 0.05]] * 4])
    logits = torch.full((1, 4, 3), -4.0)
    for j, k in enumerate(order):
        boxes[0, k] = tboxes[j]
        logits[0, k, labels[j]] = 4.0
    matcher = HungarianMatcher()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (pred_idx, tgt_idx), = matcher(logits.bfloat16(), boxes.bfloat16(),
                                       [{"boxes": tboxes, "labels": labels}])
    assert dict(zip(tgt_idx.tolist(), pred_idx.tolist(), strict=True)) == dict(enumerate(order))


def test_rejects_unknown_class_loss() -> None:
    with pytest.raises(ValueError, match="class_loss"):
        HungarianMatcher(class_loss="hinge")


# --------------------------------------------------------------------------- Stable-DINO's position-modulated cost
def _modulated_pair_cost(logits: list[float], box: list[float], label: int, tbox: list[float], scale: float,
                         exponent: float, class_loss: str) -> float:
    """Stable-DINO: the class cost of p * u^e, u = (GIoU + 1) / 2 times the image's scale."""
    m = ((_giou(box, tbox) + 1) / 2 * scale) ** exponent
    if class_loss == "focal":
        p = 1 / (1 + math.exp(-logits[label])) * m
        c_class = ALPHA * (1 - p) ** GAMMA * -math.log(p + 1e-8) - (1 - ALPHA) * p**GAMMA * -math.log(1 - p + 1e-8)
    else:
        c_class = -math.exp(logits[label]) / sum(math.exp(v) for v in logits) * m
    l1 = sum(abs(u - v) for u, v in zip(box, tbox, strict=True))
    return W_CLASS * c_class + W_BBOX * l1 - W_GIOU * _giou(box, tbox)


@pytest.mark.parametrize("class_loss", ["focal", "softmax"])
def test_position_modulated_cost_matches_hand_computation(class_loss: str) -> None:
    """Every pair of an image with one of its own targets costs as computed by hand, u scaled per image so that
    its best pair has u = 1; the assignment is the brute-force optimum of that cost."""
    e = 0.5
    matcher = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU, class_loss, ALPHA, GAMMA, position_exponent=e)
    gen = torch.Generator().manual_seed(11)
    K, sizes = 4, [2, 3]
    logits, boxes, targets = _random_case(K, sizes, 3, class_loss, gen)
    cost = matcher.cost_matrix(logits, boxes, targets)
    matches = matcher(logits, boxes, targets)
    offset = 0
    for b, n in enumerate(sizes):
        bx, tb = boxes[b].tolist(), targets[b]["boxes"].tolist()
        best = max((_giou(bx[k], tb[j]) + 1) / 2 for k in range(K) for j in range(n))
        scale = max(1 / best, 1.0)
        hand = [[_modulated_pair_cost(logits[b, k].tolist(), bx[k], int(targets[b]["labels"][j]), tb[j], scale, e,
                                      class_loss) for j in range(n)] for k in range(K)]
        torch.testing.assert_close(cost[b, :, offset:offset + n], torch.tensor(hand), rtol=1e-4, atol=1e-5)
        pred_idx, tgt_idx = matches[b]
        got = sum(hand[k][j] for k, j in zip(pred_idx.tolist(), tgt_idx.tolist(), strict=True))
        assert got == pytest.approx(_brute_force(hand), abs=1e-4)
        offset += n


def test_position_modulated_cost_matches_the_well_placed_query() -> None:
    """Query 0 is sure of the class, its box off the target (GIoU 0.14); query 1 is unsure, its box on it. The
    plain cost matches query 0 (its class cost outweighs its box cost); modulated by the position, query 1."""
    target = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([0])}]
    boxes = torch.tensor([[[0.65, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[[3.0], [0.0]]])
    plain = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU, "focal", ALPHA, GAMMA)
    modulated = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU, "focal", ALPHA, GAMMA, position_exponent=0.5)
    assert plain(logits, boxes, target)[0][0].tolist() == [0]
    assert modulated(logits, boxes, target)[0][0].tolist() == [1]
