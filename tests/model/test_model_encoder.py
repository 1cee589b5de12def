"""Dynamic encoder: DyReLU at init, shapes at odd sizes, the coarser neighbour's offsets (DyHead's defect)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamic_detr.config import EncoderConfig
from dynamic_detr.model import encoder as enc
from dynamic_detr.model.dyrelu import DyReLU

C = 8


def pyramid(h: int, w: int, levels: int = 5, seed: int = 0) -> list[torch.Tensor]:
    """Random P3.. maps with the sizes a ResNet-FPN gives for an h x w image (ceil halving)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [(math.ceil(h / 2**k), math.ceil(w / 2**k)) for k in range(3, 3 + levels)]
    return [torch.randn(1, C, *s, generator=g) for s in sizes]


def test_dyrelu_equals_relu_at_init():
    torch.manual_seed(0)
    act = DyReLU(16)
    x = torch.randn(2, 16, 5, 7) * 3
    assert torch.equal(act(x), torch.relu(x))
    with torch.no_grad():  # the check can fail: once the coefficient branch is non-zero, it is not ReLU
        act.fc[2].weight.normal_()
    assert not torch.allclose(act(x), torch.relu(x))


@pytest.mark.parametrize("share, scale_fine", [(True, True), (False, False)])
@pytest.mark.parametrize("hw", [(64, 64), (97, 131), (100, 150)])
def test_block_keeps_shapes(hw, share, scale_fine):
    cfg = EncoderConfig(gn_groups=4, share_levels=share, scale_fine_offsets=scale_fine, scale_attn_relu=share)
    block = enc.DynamicEncoderBlock(C, 5, cfg)
    feats = pyramid(*hw)
    out = block(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert all(torch.isfinite(o).all() for o in out)
    assert len(block.levels) == (1 if share else 5)


def test_block_handles_levels_that_are_not_stride2_halves():
    block = enc.DynamicEncoderBlock(C, 3, EncoderConfig(gn_groups=4))
    feats = [torch.randn(2, C, 12, 12), torch.randn(2, C, 7, 5), torch.randn(2, C, 3, 3)]
    assert [o.shape for o in block(feats)] == [f.shape for f in feats]


def test_disabled_encoder_is_identity():
    feats = pyramid(64, 64)
    for cfg in (EncoderConfig(enabled=False), EncoderConfig(num_blocks=0)):
        e = enc.DynamicEncoder(C, 5, cfg)
        assert e(feats) is feats and not list(e.parameters())


def test_offsets_for_pools_and_scales():
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 0::2] = 2.0  # dy, level-i pixels
    offset[:, 1::2] = 4.0  # dx
    mask = torch.zeros(1, 9, 8, 8)
    mask[..., :2, :2] = 1.0
    off, m = enc.offsets_for(offset, mask, (4, 4), (0.5, 0.5))
    assert off.shape == (1, 18, 4, 4) and m.shape == (1, 9, 4, 4)
    assert torch.allclose(off[:, 0::2], torch.tensor(1.0)) and torch.allclose(off[:, 1::2], torch.tensor(2.0))
    assert torch.allclose(m[..., 0, 0], torch.tensor(1.0))
    assert torch.allclose(m[..., 1:, :], torch.tensor(0.0))
    off, _ = enc.offsets_for(offset, mask, (8, 8), (2.0, 2.0))  # finer neighbour: same grid, doubled
    assert torch.allclose(off[:, 0::2], torch.tensor(4.0)) and torch.allclose(off[:, 1::2], torch.tensor(8.0))


def test_coarser_neighbour_reaches_every_position():
    """With learned (non-zero) offsets, the output of level i depends on every position of P_{i+1}."""
    torch.manual_seed(0)
    block = enc.DynamicEncoderBlock(C, 3, EncoderConfig(gn_groups=4))
    with torch.no_grad():
        block.levels[0].offset.weight.normal_(std=0.1)
    feats = pyramid(100, 150, levels=3)  # 13x19, 7x10, 4x5
    feats[1].requires_grad_(True)
    out = block(feats)[0]  # level 0: its coarser neighbour is feats[1]
    (out * torch.randn_like(out)).sum().backward()
    grad = feats[1].grad.abs().sum(dim=1)[0]
    assert (grad > 0).all(), f"unreached positions of the coarser map: {(grad == 0).nonzero().tolist()}"


# DyHead's defect, emulated: offsets / masks of level i's grid given to the conv on the smaller P_{i+1}
correct_offsets_for = enc.offsets_for


def dyhead_flat(offset, mask, size, ratio):
    """What the CUDA kernel does (microsoft/DynamicHead#25): reads the first H'*W' values per map."""
    if tuple(offset.shape[-2:]) == tuple(size):
        return correct_offsets_for(offset, mask, size, ratio)
    b, (h, w) = offset.shape[0], size
    return offset.reshape(-1)[: b * 18 * h * w].view(b, 18, h, w), mask.reshape(-1)[: b * 9 * h * w].view(
        b, 9, h, w)


def top_left_crop(offset, mask, size, ratio):
    """The simplest reading of the defect: the coarse conv uses level i's top-left H' x W' offsets."""
    if tuple(offset.shape[-2:]) == tuple(size):
        return correct_offsets_for(offset, mask, size, ratio)
    return offset[..., : size[0], : size[1]], mask[..., : size[0], : size[1]]


def coarse_gradient(block: enc.DynamicEncoderBlock) -> torch.Tensor:
    """Level 0 (16x16) turns its masks on in its bottom-right quadrant only -> |d out_0 / d P_1| [8, 8]."""
    ops = block.levels[0]
    with torch.no_grad():  # mask logits = 60 * channel 0 - 30: ~1 where channel 0 is 1, ~0 elsewhere
        ops.offset.weight[2 * enc.TAPS:, 0, 1, 1] = 60.0
        ops.offset.bias[2 * enc.TAPS:] = -30.0
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(1, C, 16, 16, generator=g)
    p0[:, 0] = 0.0
    p0[:, 0, 8:, 8:] = 1.0
    p1 = torch.randn(1, C, 8, 8, generator=g, requires_grad=True)
    out = block([p0, p1])[0]
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return p1.grad.abs().sum(dim=1)[0]


def aligned(grad: torch.Tensor) -> bool:
    """The coarse conv attends where level i does: all of P_1's bottom-right quadrant, none of its top-left.
    (Positions 0-2 are out of reach of a 3x3 conv centred in rows / columns 4-7.)"""
    return bool(grad[4:, 4:].min() > 1e-3 and grad[:3, :3].max() < 1e-6)


@pytest.mark.parametrize("variant, ok", [(None, True), (dyhead_flat, False), (top_left_crop, False)])
def test_coarser_neighbour_samples_where_level_i_attends(variant, ok, monkeypatch):
    """Passes for the pooled + scaled offsets; fails for DyHead's scheme (bottom-right corner never sampled,
    top-left sampled although level i masked it out) and for a top-left crop (nothing sampled)."""
    if variant is not None:
        monkeypatch.setattr(enc, "offsets_for", variant)
    block = enc.DynamicEncoderBlock(C, 2, EncoderConfig(gn_groups=4))
    assert aligned(coarse_gradient(block)) is ok


def test_residual_block_starts_as_identity_and_learns_its_gate():
    torch.manual_seed(0)
    block = enc.DynamicEncoderBlock(C, 5, EncoderConfig(gn_groups=4, residual=True))
    feats = pyramid(64, 64)
    out = block(feats)
    for o, f in zip(out, feats, strict=True):
        assert torch.equal(o, f)  # g = 0: the block is the identity at init
    sum(o.square().sum() for o in out).backward()
    assert block.gate.grad is not None and block.gate.grad.abs() > 0
    plain = enc.DynamicEncoderBlock(C, 5, EncoderConfig(gn_groups=4))
    assert plain.gate is None and not torch.equal(plain(feats)[0], feats[0])


@pytest.mark.parametrize("share", [True, False])
def test_levels_runs_the_finest_and_passes_the_rest_through(share):
    """levels=2: P3 and P4 are computed, P5..P7 are the input's tensors; P4 still reads P5 as its coarser
    neighbour, so its output is the full block's."""
    torch.manual_seed(0)
    full = enc.DynamicEncoderBlock(C, 5, EncoderConfig(gn_groups=4, share_levels=share))
    torch.manual_seed(0)
    cut = enc.DynamicEncoderBlock(C, 5, EncoderConfig(gn_groups=4, share_levels=share, levels=2))
    if not share:  # the same weights for the two levels both run
        cut.levels.load_state_dict({k: v for k, v in full.levels.state_dict().items() if int(k[0]) < 2})
    assert len(cut.levels) == (1 if share else 2)
    feats = pyramid(64, 64)
    want, got = full(feats), cut(feats)
    for lv in range(2):
        torch.testing.assert_close(got[lv], want[lv])
        assert not torch.equal(got[lv], feats[lv])
    assert all(got[lv] is feats[lv] for lv in range(2, 5))
    assert enc.DynamicEncoderBlock(C, 5, EncoderConfig(gn_groups=4, levels=9)).num_run == 5  # at most all


def test_channel_gate_opens_each_level_on_its_own():
    """gate="channel": one gate per level and channel, at gate_init; each level's output is x + g_l * block(x)
    and the levels' gates get their own gradients."""
    torch.manual_seed(0)
    cfg = EncoderConfig(gn_groups=4, residual=True, gate="channel", gate_init=0.1, levels=3)
    block = enc.DynamicEncoderBlock(C, 5, cfg)
    assert block.gate.shape == (3, C, 1, 1) and torch.all(block.gate == 0.1)
    torch.manual_seed(0)
    plain = enc.DynamicEncoderBlock(C, 5, EncoderConfig(gn_groups=4, levels=3))
    feats = pyramid(64, 64)
    out, inner = block(feats), plain(feats)
    for lv in range(3):
        torch.testing.assert_close(out[lv], feats[lv] + 0.1 * inner[lv])
    sum(o.square().sum() for o in out[:3]).backward()
    assert block.gate.grad.shape == block.gate.shape and (block.gate.grad.flatten(1).abs().sum(1) > 0).all()
    with torch.no_grad():
        block.gate[1].zero_()  # closing one level's gate leaves that level the identity, the others not
    out = block(feats)
    assert torch.equal(out[1], feats[1]) and not torch.equal(out[0], feats[0])


def test_stats_report_gates_scale_attention_and_offsets():
    """`DynamicEncoder.stats`: gates are read from the parameters; scale attention and |offset| come from the
    last training forward (none in eval), per block and level run."""
    torch.manual_seed(0)
    e = enc.DynamicEncoder(C, 5, EncoderConfig(gn_groups=4, num_blocks=2, residual=True, levels=2))
    with torch.no_grad():
        e.blocks[1].gate.fill_(0.25)
        e.blocks[0].levels[0].offset.bias[:18].fill_(1.5)  # every offset of block 1 is 1.5 level pixels
    assert set(e.eval().stats()) == {"enc_b1_gate", "enc_b2_gate"}  # no training forward yet
    e.train()(pyramid(64, 64))
    stats = e.stats()
    assert stats["enc_b1_gate"] == 0.0 and stats["enc_b2_gate"] == 0.25
    assert stats["enc_b1_offset_P3"] == pytest.approx(1.5) and stats["enc_b1_offset_P4"] == pytest.approx(1.5)
    assert stats["enc_b2_offset_P3"] == 0.0  # zero-initialised offset conv
    assert stats["enc_b1_scale_P3"] == pytest.approx(0.5, abs=0.05)  # hard sigmoid of ~0 at init
    assert not any(k.endswith(("_P5", "_P6", "_P7")) for k in stats)  # levels=2: P5..P7 not run
    channel = enc.DynamicEncoder(C, 5, EncoderConfig(gn_groups=4, num_blocks=1, residual=True, gate="channel",
                                                     gate_init=0.5, levels=1))
    assert channel.stats() == {"enc_b1_gate_P3": 0.5, "enc_b1_gate_P3_rms": 0.5}


def test_static_control_has_the_same_convs_and_no_dynamics():
    """dynamic=False: the same parameters (and calls) as the dynamic block, but offsets / masks, scale attention
    and DyReLU are frozen at their neutral init, so the block is plain convs: averaging the branches with
    weights 0.5 and a ReLU. Its convs still train."""
    torch.manual_seed(0)
    static = enc.DynamicEncoderBlock(C, 3, EncoderConfig(gn_groups=4, dynamic=False))
    dynamic = enc.DynamicEncoderBlock(C, 3, EncoderConfig(gn_groups=4))
    assert [n for n, _ in static.named_parameters()] == [n for n, _ in dynamic.named_parameters()]
    frozen = {n for n, p in static.named_parameters() if not p.requires_grad}
    assert frozen and all(n.split(".")[2] in ("offset", "scale_attn", "dyrelu") for n in frozen)
    assert all(p.requires_grad for n, p in static.named_parameters() if ".mid." in n or ".fine." in n)
    feats = pyramid(64, 64, levels=3)  # 8x8, 4x4, 2x2
    ops = static.levels[0]
    offset = torch.zeros(1, 18, 4, 4)
    mask = torch.full((1, 9, 4, 4), 0.5)
    # level P4 (4x4): finer branch from P3 at stride 2, same, coarser upsampled, each weighted 0.5, mean, ReLU
    branches = [ops.mid(feats[1], offset, mask), ops.fine(feats[0], offset * 2, mask),
                F.interpolate(ops.coarse(feats[2], offset[..., :2, :2] / 2, mask[..., :2, :2]), size=(4, 4),
                              mode="bilinear", align_corners=False)]
    want = torch.relu(0.5 * torch.stack(branches).mean(0))
    torch.testing.assert_close(static(feats)[1], want)
    with torch.no_grad():  # the same check fails for the dynamic block once its attention is away from init
        dynamic.load_state_dict(static.state_dict())
        dynamic.levels[0].scale_attn.fc.bias.fill_(1.0)
    assert not torch.allclose(dynamic(feats)[1], want)
