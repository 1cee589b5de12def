"""Padding-aware pooling: an image's statistics and detections do not depend on the rest of its batch."""

from __future__ import annotations

import torch
from model_helpers import padded_batch, tiny_cfg
from torch import nn

from dynamic_detr.config import EncoderConfig
from dynamic_detr.model import detector as det
from dynamic_detr.model import encoder as enc
from dynamic_detr.model.detector import DynamicDETR
from dynamic_detr.model.dyrelu import DyReLU
from dynamic_detr.model.padding import group_norm, level_masks, masked_mean

C = 8


def _padded(x: torch.Tensor, h: int, w: int, garbage: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """x [1, C, h0, w0] placed top-left in an h x w map whose padding holds large noise; its mask [1, 1, h, w]."""
    out = torch.randn(1, x.shape[1], h, w) * garbage + garbage
    out[..., : x.shape[-2], : x.shape[-1]] = x
    valid = torch.zeros(1, 1, h, w)
    valid[..., : x.shape[-2], : x.shape[-1]] = 1.0
    return out, valid


def test_level_masks_follow_the_stride_grid():
    valid_hw = torch.tensor([[100.0, 64.0], [128.0, 128.0]])
    masks = level_masks(valid_hw, [(16, 16), (8, 8)], (8, 16))
    # image 0 at stride 8: ceil(100 / 8) = 13 rows, ceil(64 / 8) = 8 columns
    assert masks[0][0, 0].sum(0).tolist() == [13.0] * 8 + [0.0] * 8
    assert masks[0][0, 0].sum(1).tolist() == [8.0] * 13 + [0.0] * 3
    assert masks[1][0, 0].sum() == 7 * 4  # ceil(100 / 16) x ceil(64 / 16)
    assert bool(masks[0][1].all()) and bool(masks[1][1].all())


def test_group_norm_inside_the_image_equals_groupnorm_of_the_image_alone():
    torch.manual_seed(0)
    norm = nn.GroupNorm(4, C)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(1, C, 5, 7)
    padded, valid = _padded(x, 9, 12)
    y = group_norm(padded, norm, valid)
    torch.testing.assert_close(y[..., :5, :7], norm(x))
    assert y[..., 5:, :].abs().sum() == 0 and y[..., 7:].abs().sum() == 0
    # the plain GroupNorm on the padded map does depend on the padding: what the fix is for
    assert not torch.allclose(norm(padded)[..., :5, :7], norm(x), atol=1e-2)
    torch.testing.assert_close(group_norm(padded, norm, None), norm(padded))


def test_pooled_attentions_ignore_padding():
    torch.manual_seed(0)
    x = torch.randn(1, C, 6, 5)
    padded, valid = _padded(x, 10, 11)
    torch.testing.assert_close(masked_mean(padded, valid), x.mean(dim=(2, 3)))
    act = DyReLU(C)
    attn = enc.ScaleAttention(C, relu=False)
    with torch.no_grad():  # non-trivial coefficients (at init DyReLU is a ReLU whatever it pools)
        act.fc[2].weight.normal_()
        attn.fc.weight.normal_()
    torch.testing.assert_close(act(padded, valid)[..., :6, :5], act(x))
    assert not torch.allclose(act(padded)[..., :6, :5], act(x), atol=1e-3)
    stacked_alone, stacked = x[None].expand(2, -1, -1, -1, -1), padded[None].expand(2, -1, -1, -1, -1)
    torch.testing.assert_close(attn(stacked, valid), attn(stacked_alone))
    assert not torch.allclose(attn(stacked), attn(stacked_alone), atol=1e-4)


def test_encoder_block_same_level_path_is_exact_inside_the_image():
    """With one level (no neighbours to resample), zero offsets and random attentions, a block's output inside
    the image is exactly the image's own, whatever the padding holds."""
    torch.manual_seed(0)
    block = enc.DynamicEncoderBlock(C, 1, EncoderConfig(gn_groups=4))
    with torch.no_grad():
        block.levels[0].dyrelu.fc[2].weight.normal_()
        block.levels[0].scale_attn.fc.weight.normal_()
    x = torch.randn(1, C, 6, 9)
    padded, valid = _padded(x, 11, 13)
    alone = block([x])[0]
    torch.testing.assert_close(block([padded], [valid])[0][..., :6, :9], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(block([padded])[0][..., :6, :9], alone, atol=1e-2)


def _detections(model: DynamicDETR, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(images, masks)
    return {"logits": out["logits"][0], "boxes": out["boxes"][0]}


def test_detections_of_an_image_barely_depend_on_its_batch(monkeypatch):
    """An image alone and beside a larger one: the same detections, up to the backbone's conv border effect.
    Without the padding-aware pooling (monkeypatched off) the difference is many times larger."""
    torch.manual_seed(0)
    cfg = tiny_cfg(query_selection="boxes")
    cfg.dense.enabled = True
    model = DynamicDETR(cfg).eval()
    with torch.no_grad():  # attentions away from their identity init, so that their pooling matters
        for m in model.encoder.modules():
            if isinstance(m, DyReLU):
                m.fc[2].weight.normal_(std=0.5)
            if isinstance(m, enc.ScaleAttention):
                m.fc.weight.normal_(std=0.5)
    big, big_masks = padded_batch([(128, 128), (256, 384)])
    alone = _detections(model, big[:1, :, :128, :128], big_masks[:1, :128, :128])
    batched = _detections(model, big, big_masks)
    diff = max(float((alone[k] - batched[k]).abs().max()) for k in alone)
    monkeypatch.setattr(det, "level_masks", lambda *args: None)  # the pooling over the whole padded map
    unaware = _detections(model, big, big_masks)
    diff_before = max(float((alone[k] - unaware[k]).abs().max()) for k in alone)
    assert diff < 0.05, diff
    assert diff_before > 5 * diff, (diff_before, diff)
