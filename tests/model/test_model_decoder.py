"""Dynamic decoder: dynamic conv vs a per-query loop, box refinement, RoI level assignment, detaching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from builders import tiny_config
from dynamic_detr.model.decoder import DynamicDecoder, apply_deltas
from dynamic_detr.model.dynamic_conv import DynamicConv
from dynamic_detr.model.roi import MultiLevelRoIAlign, assign_levels

STRIDES = (8, 16, 32, 64, 128)


def features(h: int, w: int, dim: int, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, math.ceil(h / s), math.ceil(w / s), generator=g) for s in STRIDES]


def test_dynamic_conv_matches_per_query_loop():
    torch.manual_seed(0)
    d, dd, s, n = 16, 4, 3, 5
    conv = DynamicConv(d, dd, s)
    with torch.no_grad():  # non-trivial LayerNorm affines, so a swapped norm would show
        for norm in (conv.norm1, conv.norm2, conv.norm3):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    query, roi = torch.randn(n, d), torch.randn(n, s * s, d)
    expected = []
    for q, f in zip(query, roi, strict=True):  # one query at a time, its own 1x1 filters
        params = conv.dynamic_layer(q)
        w1, w2 = params[: d * dd].view(d, dd), params[d * dd:].view(dd, d)
        x = F.relu(F.layer_norm(f @ w1, (dd,), conv.norm1.weight, conv.norm1.bias))
        x = F.relu(F.layer_norm(x @ w2, (d,), conv.norm2.weight, conv.norm2.bias))
        x = conv.out_layer(x.reshape(-1))
        expected.append(F.relu(F.layer_norm(x, (d,), conv.norm3.weight, conv.norm3.bias)))
    torch.testing.assert_close(conv(query, roi), torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_apply_deltas_by_hand():
    box = torch.tensor([0.5, 0.5, 0.2, 0.4])
    out = apply_deltas(box, torch.tensor([2.0, -2.0, math.log(2.0), 0.0]))  # weights (2, 2, 1, 1)
    torch.testing.assert_close(out, torch.tensor([0.7, 0.1, 0.4, 0.4]))
    grown = apply_deltas(box, torch.tensor([0.0, 0.0, 100.0, 100.0]))  # dw, dh clamped at log(1000/16)
    torch.testing.assert_close(grown[2:], box[2:] * 1000 / 16)


def test_assign_levels_fpn_rule():
    sizes = torch.tensor([1.0, 111.0, 112.0, 224.0, 447.0, 448.0, 896.0, 1e5])
    boxes = torch.stack([torch.zeros_like(sizes), torch.zeros_like(sizes), sizes, sizes], dim=1)
    levels = assign_levels(boxes, (3, 4, 5, 6, 7)) + 3
    assert levels.tolist() == [3, 3, 3, 4, 4, 5, 6, 7]


def test_multilevel_roi_align_matches_per_box_reference():
    feats = features(200, 260, 4)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(12, 2, generator=g) * 150
    wh = torch.exp(torch.rand(12, 1, generator=g) * math.log(200.0)) * 5 + torch.rand(12, 2, generator=g)
    rois = torch.cat([torch.randint(0, 2, (12, 1), generator=g).float(), xy, xy + wh], dim=1)
    pooled = MultiLevelRoIAlign(STRIDES, 5)(feats, rois)
    levels = assign_levels(rois[:, 1:], (3, 4, 5, 6, 7))
    assert len(set(levels.tolist())) >= 3  # several levels are exercised
    for i, roi in enumerate(rois):
        lvl = int(levels[i])
        ref = roi_align(feats[lvl], roi[None], 5, 1 / STRIDES[lvl], sampling_ratio=2, aligned=True)
        torch.testing.assert_close(pooled[i], ref[0])


@pytest.mark.parametrize("h,w,batch", [(200, 260, 3), (97, 131, 3), (200, 260, 1)])  # 97x131: P7 is 1x2
def test_roi_align_bags_equals_torchvision(h, w, batch):
    """The embedding_bag kernel (CPU default) gives torchvision's values and feature gradients, for boxes inside,
    across and beyond the image border, on several levels, and for zero-size boxes; at batch 1 too, where the
    kernel's table is a contiguous copy of what would otherwise be a column-major view."""
    feats = [f.requires_grad_() for f in features(h, w, 8, batch=batch)]
    g = torch.Generator().manual_seed(2)
    n = 120
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) - 20
    wh = torch.exp(torch.rand(n, 1, generator=g) * math.log(2500.0)) * (0.5 + torch.rand(n, 2, generator=g))
    wh[:3] = 0.0
    rois = torch.cat([torch.randint(0, batch, (n, 1), generator=g).float(), xy, xy + wh], dim=1)
    outs, grads = [], []
    for impl in ("torchvision", "bags"):
        pooled = MultiLevelRoIAlign(STRIDES, 7, impl=impl)(feats, rois)
        weight = torch.randn(pooled.shape, generator=torch.Generator().manual_seed(3))
        outs.append(pooled)
        grads.append(torch.autograd.grad((pooled * weight).sum(), feats))
    assert len(set(assign_levels(rois[:, 1:], (3, 4, 5, 6, 7)).tolist())) >= 4
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    for ga, gb in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-4, rtol=1e-4)  # float sums in another order


def test_box_stays_fixed_when_deltas_are_zero():
    cfg = tiny_config({"model.decoder.num_stages": 3}, classes=5).model
    dec = DynamicDecoder(cfg, STRIDES)
    with torch.no_grad():
        dec.init_boxes.weight.uniform_(0.2, 0.6)  # not the whole image: nothing trivially (0.5, 0.5, 1, 1)
        for stage in dec.stages:
            stage.reg_head[-1].weight.zero_()
            stage.reg_head[-1].bias.zero_()
    out = dec(features(96, 128, cfg.hidden_dim), torch.tensor([[96.0, 128.0], [80.0, 100.0]]))
    assert len(out) == 3
    for stage_out in out:
        assert torch.equal(stage_out["boxes"], dec.init_boxes.weight[None].expand(2, -1, -1))


@pytest.mark.parametrize("detach", [True, False])
def test_detach_boxes_between_stages(detach):
    cfg = tiny_config({"model.decoder.num_stages": 2, "model.decoder.detach_boxes": detach}, classes=5).model
    dec = DynamicDecoder(cfg, STRIDES)
    out = dec(features(96, 128, cfg.hidden_dim), torch.tensor([[96.0, 128.0], [96.0, 128.0]]))
    out[1]["boxes"].sum().backward()  # stage 0's box head reaches stage 1's boxes only through the box
    grad = dec.stages[0].reg_head[-1].weight.grad
    assert (grad is None or not grad.any()) if detach else grad.abs().sum() > 0


@pytest.mark.parametrize("class_loss, width", [("focal", 5), ("softmax", 6)])
def test_class_head_width_and_prior(class_loss, width):
    cfg = tiny_config(classes=5).model
    cfg.class_loss = class_loss
    dec = DynamicDecoder(cfg, STRIDES)
    bias = dec.stages[0].cls_head[-1].bias
    assert bias.shape == (width,)
    if class_loss == "focal":
        torch.testing.assert_close(bias.sigmoid(), torch.full((width,), 0.01))


def test_query_embeddings_start_spread_out():
    dec = DynamicDecoder(tiny_config({"model.decoder.num_queries": 300}, classes=5).model, STRIDES)
    assert 0.8 < dec.query_embed.weight.std() < 1.2  # N(0, 1), not Xavier-shrunk
    assert torch.equal(dec.init_boxes.weight, torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(300, 4))


@pytest.mark.parametrize("box_pos, layers", [("none", 0), ("sine", 3)])
def test_decoder_variants_run(box_pos, layers):
    cfg = tiny_config({"model.decoder.box_pos": box_pos,
                       "model.decoder.num_reg_layers": layers,
                       "model.decoder.num_cls_layers": layers}, classes=5).model
    dec = DynamicDecoder(cfg, STRIDES)
    assert (dec.box_pos is None) == (box_pos == "none")
    out = dec(features(64, 64, cfg.hidden_dim), torch.tensor([[64.0, 64.0], [50.0, 40.0]]))
    assert out[-1]["logits"].shape == (2, cfg.decoder.num_queries, 5)
    assert torch.isfinite(out[-1]["boxes"]).all()
