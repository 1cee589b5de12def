"""Dense auxiliary head (FCOS) and query selection."""

from __future__ import annotations

import pytest
import torch
from model_helpers import padded_batch
from torchvision.ops import box_iou, nms

from builders import tiny_config
from dynamic_detr.model.dense_head import DenseHead, dense_boxes, distinct_first, level_points, select_queries
from dynamic_detr.model.detector import DynamicDETR

STRIDES = (8, 16, 32, 64, 128)


def _feats(h: int, w: int, d: int = 64, b: int = 2) -> list[torch.Tensor]:
    return [torch.randn(b, d, -(-h // s), -(-w // s)) for s in STRIDES]


def test_level_points_are_pixel_centres_finest_first():
    feats = _feats(32, 48)
    points, stride = level_points(feats, STRIDES)
    assert points.shape == (4 * 6 + 2 * 3 + 1 * 2 + 1 + 1, 2)
    torch.testing.assert_close(points[0], torch.tensor([4.0, 4.0]))  # P3 (0, 0)
    torch.testing.assert_close(points[1], torch.tensor([12.0, 4.0]))  # P3 (0, 1): x first
    torch.testing.assert_close(points[24], torch.tensor([8.0, 8.0]))  # P4 (0, 0)
    assert stride[:24].eq(8).all() and stride[24:30].eq(16).all() and stride[-1] == 128


def test_dense_head_shapes_and_nonnegative_distances():
    cfg = tiny_config(classes=5).model
    cfg.dense.enabled = True
    head = DenseHead(cfg, STRIDES)
    out = head(_feats(64, 96))
    n = out["points"].shape[0]
    assert out["logits"].shape == (2, n, cfg.num_classes)
    assert out["ltrb"].shape == (2, n, 4) and (out["ltrb"] >= 0).all()
    assert out["centerness"].shape == (2, n)
    boxes = dense_boxes(out)
    p = out["points"][None]
    assert (boxes[..., :2] <= p).all() and (boxes[..., 2:] >= p).all()  # every box contains its location
    torch.testing.assert_close(out["logits"].sigmoid().mean(), torch.tensor(0.01), atol=2e-3, rtol=0)


def test_select_queries_takes_top_scores_inside_the_valid_region():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]])
    logits = torch.full((2, 4, 3), -9.0)
    logits[:, :, 0] = torch.tensor([1.0, 5.0, 3.0, 9.0])  # location 3 is best, 1 second, 2 third
    dense = {"points": points, "stride": torch.full((4,), 8.0), "logits": logits,
             "ltrb": torch.full((2, 4, 4), 2.0), "centerness": torch.zeros(2, 4)}
    valid = torch.tensor([[16.0, 16.0], [16.0, 8.0]])  # image 1 is 8 px wide: x = 12 is padding
    boxes, idx = select_queries(dense, valid, k=2)
    assert idx[0].tolist() == [3, 1]
    assert idx[1].tolist() == [2, 0]  # only x < 8 allowed
    # image 0, location 3: xyxy (10, 10, 14, 14) -> cxcywh (12, 12, 4, 4) / 16
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.75, 0.75, 0.25, 0.25]))


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    wh = 8 + torch.rand(n, 2, generator=g) * 20
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("seed", range(4))
def test_distinct_first_keeps_distinct_boxes_and_a_subset_of_greedy_nms(seed):
    boxes = _random_boxes(60, seed)  # sorted best first: scores 1, 1 - 1/60, ...
    scores = torch.linspace(1, 0.1, 60)
    keep = distinct_first(boxes[None], 0.5)[0]
    greedy = set(nms(boxes, scores, 0.5).tolist())
    kept = keep.nonzero().flatten().tolist()
    assert kept and set(kept) <= greedy and 0 in kept  # the best box always stays
    iou = box_iou(boxes[kept], boxes[kept]).fill_diagonal_(0)
    assert iou.max() <= 0.5  # no two kept boxes overlap by more than the threshold
    for i in set(range(60)) - set(kept):  # every dropped box overlaps a better one
        assert box_iou(boxes[i:i + 1], boxes[:i]).max() > 0.5


def test_distinct_first_equals_greedy_nms_without_chains():
    # two clusters far apart, each of a best box and shifted copies: no dropped box drops another
    base = torch.tensor([[0.0, 0.0, 20.0, 20.0], [100.0, 100.0, 130.0, 120.0]])
    boxes = torch.cat([base, base + 1, base + 2, torch.tensor([[40.0, 40.0, 50.0, 50.0]])])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    keep = distinct_first(boxes[None], 0.5)[0]  # each copy overlaps its cluster's best box by > 0.5
    assert keep.nonzero().flatten().tolist() == sorted(nms(boxes, scores, 0.5).tolist()) == [0, 1, 6]


def _dense_with_duplicates() -> dict[str, torch.Tensor]:
    """Four P3 locations: 0, 1 and 2 hold near-copies of one box (scores 9, 8, 7), 3 a distinct box (score 5)."""
    points = torch.tensor([[20.0, 20.0], [21.0, 20.0], [20.0, 21.0], [60.0, 60.0]])
    logits = torch.full((1, 4, 2), -9.0)
    logits[0, :, 0] = torch.tensor([9.0, 8.0, 7.0, 5.0])
    return {"points": points, "stride": torch.full((4,), 8.0), "logits": logits,
            "ltrb": torch.full((1, 4, 4), 10.0), "centerness": torch.full((1, 4), 5.0)}


def test_select_queries_with_nms_puts_distinct_boxes_first():
    dense, valid = _dense_with_duplicates(), torch.tensor([[80.0, 80.0]])
    assert select_queries(dense, valid, k=2)[1][0].tolist() == [0, 1]  # plain top-k: two copies
    boxes, idx = select_queries(dense, valid, k=3, nms=0.7)
    assert idx[0].tolist() == [0, 3, 1]  # the distinct box before the copies, then the best copy
    torch.testing.assert_close(boxes[0, 1], torch.tensor([0.75, 0.75, 0.25, 0.25]))  # (50, 50, 70, 70) / 80
    # the hybrid branch's boxes (after k_distinct) are the plain top ones, as DDQ's one-to-many queries
    assert select_queries(dense, valid, k=4, nms=0.7, k_distinct=2)[1][0].tolist() == [0, 3, 0, 1]
    # a location in the padding (x = 60 beyond a 40 px wide image) stays last even though no box overlaps it
    assert select_queries(dense, torch.tensor([[80.0, 40.0]]), k=2, nms=0.7)[1][0].tolist() == [0, 1]


@pytest.mark.parametrize("query_nms", [0.0, 0.5])
def test_query_selection_feeds_the_decoder_dense_boxes(query_nms):
    torch.manual_seed(0)
    cfg = tiny_config({"model.decoder.query_selection": "boxes",
                       "model.decoder.num_stages": 1,
                       "model.decoder.query_nms": query_nms}, classes=5).model
    cfg.dense.enabled = True
    model = DynamicDETR(cfg).eval()
    with torch.no_grad():  # boxes of ~3 strides a side, so that neighbouring locations' boxes overlap
        model.dense_head.box_ltrb.bias.fill_(3.0)
    images, masks = padded_batch([(64, 96), (64, 64)])
    seen = {}

    def grab(module, args):
        seen["boxes"] = args[1]

    model.decoder.stages[0].register_forward_pre_hook(grab)
    out = model(images, masks)
    expected, _ = select_queries(out["dense"], out["valid_hw"], cfg.decoder.num_queries, nms=query_nms)
    torch.testing.assert_close(seen["boxes"], expected)
    plain, _ = select_queries(out["dense"], out["valid_hw"], cfg.decoder.num_queries)
    assert torch.equal(expected, plain) == (query_nms == 0)  # the NMS changed the selection
    assert not torch.allclose(seen["boxes"], torch.tensor([0.5, 0.5, 1.0, 1.0]).expand_as(expected))


def test_hybrid_queries_take_the_boxes_after_the_matching_queries():
    torch.manual_seed(0)
    cfg = tiny_config({"model.decoder.query_selection": "boxes",
                       "model.decoder.num_stages": 1,
                       "model.decoder.num_hybrid_queries": 6}, classes=5).model
    cfg.dense.enabled = True
    model = DynamicDETR(cfg).train()
    images, masks = padded_batch([(64, 96), (64, 64)])
    seen = {}
    model.decoder.stages[0].register_forward_pre_hook(lambda module, args: seen.update(boxes=args[1]))
    out = model(images, masks)
    k = cfg.decoder.num_queries
    expected, _ = select_queries(out["dense"], out["valid_hw"], k + 6)  # one top-(K + H), split K | H
    torch.testing.assert_close(seen["boxes"], expected)
    assert out["boxes"].shape[1] == k and out["hybrid_stages"][0]["boxes"].shape[1] == 6
    model.eval()
    with torch.no_grad():
        model(images, masks)
    assert seen["boxes"].shape[1] == k  # no hybrid queries at inference


def test_boxes_plus_content_gets_gradient_into_the_projection_only_through_the_decoder():
    torch.manual_seed(0)
    cfg = tiny_config({"model.decoder.query_selection": "boxes+content"}, classes=5).model
    cfg.dense.enabled = True
    model = DynamicDETR(cfg).train()
    images, masks = padded_batch([(64, 96), (64, 64)])
    out = model(images, masks)
    out["logits"].sum().backward()
    assert model.decoder.content_proj[0].weight.grad.abs().sum() > 0
    assert model.decoder.query_embed.weight.grad is None  # learned contents unused
