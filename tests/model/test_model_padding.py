"""Padding-aware pooling: an image's statistics and detections do not depend on the rest of its batch."""

from __future__ import annotations

import torch
from model_helpers import padded_batch
from torch import nn

from builders import tiny_config
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
        act.fc[0].bias.fill_(1.0)  # the squeeze layer's ReLU open
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


class _FixedPyramid(nn.Module):
    """A backbone stand-in: given pyramids by input width (the backbone's own border effect, padded activations
    leaking inward through its convs, is not what padding-aware pooling is about, and at random init it swamps
    everything)."""

    def __init__(self, strides: tuple[int, ...], by_width: dict[int, list[torch.Tensor]]) -> None:
        super().__init__()
        self.strides = strides
        self.by_width = by_width

    def forward(self, x: torch.Tensor, valid_hw: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [f.clone() for f in self.by_width[int(x.shape[-1])]]


def test_detections_of_an_image_do_not_depend_on_its_batch(monkeypatch):
    """One image's pyramid alone, and the same pyramid top-left in a batch padded to a larger image (padding
    full of large values): decoder logits and dense-head logits inside the image agree up to the encoder's
    border resampling; without the padding-aware pooling (monkeypatched off) they differ many times more."""
    torch.manual_seed(0)
    cfg = tiny_config(classes=5).model
    cfg.dense.enabled = True
    model = DynamicDETR(cfg).eval()
    with torch.no_grad():  # attentions away from their identity init, so that their pooling matters
        for m in model.encoder.modules():
            if isinstance(m, DyReLU):
                m.fc[2].weight.normal_(std=0.5)
            if isinstance(m, enc.ScaleAttention):
                m.fc.weight.normal_(std=0.5)
    strides, d = model.backbone.strides, cfg.hidden_dim
    g = torch.Generator().manual_seed(1)
    alone = [torch.randn(1, d, -(-128 // s), -(-128 // s), generator=g) for s in strides]
    batch = [torch.randn(2, d, -(-256 // s), -(-384 // s), generator=g) * 3 + 2 for s in strides]
    for a, b in zip(alone, batch, strict=True):
        b[:1, :, : a.shape[-2], : a.shape[-1]] = a
    model.backbone = _FixedPyramid(strides, {128: alone, 384: batch})
    _, masks = padded_batch([(128, 128), (256, 384)])

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, 256, 384), masks)
        dense, start = [], 0
        for a, s in zip(alone, strides, strict=True):  # the image's own locations of every level
            hh, ww = -(-256 // s), -(-384 // s)
            level = out["dense"]["logits"][0, start:start + hh * ww].reshape(hh, ww, -1)
            dense.append(level[: a.shape[-2], : a.shape[-1]].flatten())
            start += hh * ww
        return out["logits"][0], torch.cat(dense)

    with torch.no_grad():
        ref = model(torch.zeros(1, 3, 128, 128), masks[:1, :128, :128])
    ref_logits, ref_dense = ref["logits"][0], ref["dense"]["logits"][0].flatten()
    logits, dense = run()
    monkeypatch.setattr(det, "level_masks", lambda *args: None)  # pooling over the whole padded maps
    logits_before, dense_before = run()
    diff, diff_before = (logits - ref_logits).abs().max(), (logits_before - ref_logits).abs().max()
    ddiff, ddiff_before = (dense - ref_dense).abs().max(), (dense_before - ref_dense).abs().max()
    assert ddiff < 0.1 and diff < 0.3, (ddiff, diff)
    assert ddiff_before > 5 * ddiff and diff_before > 5 * diff, (ddiff_before, ddiff, diff_before, diff)
