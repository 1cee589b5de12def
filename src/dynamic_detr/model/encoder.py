"""Dynamic encoder (docs/paper.md; the DyHead block): convolutional attention across the scales of the pyramid.

For each level i, with offsets / masks s_i from a 3x3 conv on P_i:

    P_i+  = { resize(DefConv(P_{i-1}, s_i)),  DefConv(P_i, s_i),  resize(DefConv(P_{i+1}, s_i)) }
    w_i   = SE(P_i+)                              # scale attention, one weight per neighbour
    out_i = DyReLU(sum_j w_ij * P_i+_j / n)       # representation attention

The finer neighbour P_{i-1} is convolved with stride 2 (its output grid is level i's), the coarser P_{i+1}
at its own size and then upsampled. DyHead's code feeds s_i, predicted on level i's grid, to the conv on the
smaller P_{i+1}; the kernel reads the larger tensor with the smaller tensor's strides, so the offsets land at
the wrong places (microsoft/DynamicHead#25). Here s_i is resampled to each neighbour's output grid
(`offsets_for`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from ..config import EncoderConfig
from . import checkpointing
from .deform import modulated_deform_conv
from .dyrelu import DyReLU
from .padding import group_norm, masked_mean, resize_mask

KERNEL = 3
TAPS = KERNEL * KERNEL  # offsets: 2 * TAPS channels as (dy, dx) per tap (torchvision's layout), masks: TAPS


def offsets_for(offset: Tensor, mask: Tensor, size: tuple[int, int],
                ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Offsets / masks predicted on level i's grid, for a deformable conv whose output grid is `size`.

    Args:
        offset: [B, 2*9, h, w] (dy, dx) per tap, in level-i pixels.
        mask: [B, 9, h, w] in [0, 1].
        size: the conv's output grid (H', W'); the fields are average-pooled to it when it differs
            (the coarser neighbour: each coarse position gets the mean of the level-i positions it covers).
        ratio: (ry, rx) = size of the conv's input / size of level i; the offsets are multiplied by it so that
            they keep meaning the same displacement in the image.
    Returns:
        offset [B, 18, H', W'], mask [B, 9, H', W'].
    """
    if _hw(offset) != tuple(size):
        offset = _adaptive_avg_pool(offset, size)
        mask = _adaptive_avg_pool(mask, size)
    if ratio != (1.0, 1.0):
        offset = offset * offset.new_tensor(ratio).repeat(TAPS)[None, :, None, None]
    return offset, mask


def _hw(x: Tensor) -> tuple[int, int]:
    """Spatial size as Python ints: the ONNX tracer records them as constants (the pooling and resizing
    below need static sizes), so an exported graph has a fixed input size."""
    return int(x.shape[-2]), int(x.shape[-1])


def _adaptive_avg_pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.adaptive_avg_pool2d`; while tracing for ONNX (which exports it only for divisible sizes) the same
    average as two constant pooling matrices (it is separable: bin i spans floor(i*n/m) .. ceil((i+1)*n/m))."""
    if not torch.jit.is_tracing():
        return F.adaptive_avg_pool2d(x, size)

    def matrix(n: int, m: int) -> Tensor:
        p = torch.zeros(m, n, dtype=x.dtype, device=x.device)
        for i in range(m):
            lo, hi = (i * n) // m, -((-(i + 1) * n) // m)
            p[i, lo:hi] = 1.0 / (hi - lo)
        return p

    h, w = _hw(x)
    return torch.einsum("oh,bchw,pw->bcop", matrix(h, size[0]), x, matrix(w, size[1]))


def stride2_size(size: tuple[int, int]) -> tuple[int, int]:
    """Output grid of a 3x3, stride-2, padding-1 conv: ceil(size / 2)."""
    return ((size[0] - 1) // 2 + 1, (size[1] - 1) // 2 + 1)


class DefConvGN(nn.Module):
    """Modulated deformable 3x3 conv (DCNv2) + GroupNorm; float32 (no bf16 CPU kernel). The parameters are
    torchvision's `DeformConv2d`; `impl` picks the kernel (`EncoderConfig.deform_impl`, model/deform.py)."""

    def __init__(self, channels: int, stride: int, gn_groups: int, impl: str = "auto") -> None:
        super().__init__()
        self.conv = DeformConv2d(channels, channels, KERNEL, stride=stride, padding=1, bias=False)
        self.norm = nn.GroupNorm(gn_groups, channels)
        self.impl = impl

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W]; offset / mask on the output grid -> [B, C, H', W']; `valid` [B, 1, H', W']: the
        GroupNorm statistics of each image come from its unpadded region (model/padding.py)."""
        y = modulated_deform_conv(x.float(), offset.float(), self.conv.weight, self.conv.bias,
                                  self.conv.stride[0], self.conv.padding[0], mask.float(), self.impl)
        return group_norm(y, self.norm, valid)


class ScaleAttention(nn.Module):
    """w = hard_sigmoid(FC(avg_pool(f))) per neighbour feature f (DyHead's 1x1 conv on the pooled map).

    DyHead puts a ReLU before the hard sigmoid (weights in [0.5, 1]); it is off by default
    (`EncoderConfig.scale_attn_relu`): a negative logit would then be a unit without gradient.
    """

    def __init__(self, channels: int, relu: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)
        self.relu = relu
        nn.init.normal_(self.fc.weight, std=0.01)  # DyHead's init: w ~ 0.5 for every scale
        nn.init.zeros_(self.fc.bias)

    def forward(self, f: Tensor, valid: Tensor | None = None) -> Tensor:
        """f: [n, B, C, H, W] -> [n, B, 1, 1, 1]; the pooling is over `valid` [B, 1, H, W] when given."""
        logit = self.fc(masked_mean(f, valid))
        if self.relu:
            logit = F.relu(logit)
        return F.hardsigmoid(logit)[..., None, None]


class LevelOps(nn.Module):
    """Everything a block applies at one level: offset conv, the 3 DefConvs, scale attention, DyReLU."""

    def __init__(self, channels: int, cfg: EncoderConfig) -> None:
        super().__init__()
        # s_i: 18 offsets + 9 mask logits; zero-init so the block starts as plain convs with masks of 0.5
        self.offset = nn.Conv2d(channels, 3 * TAPS, KERNEL, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.coarse = DefConvGN(channels, 1, cfg.gn_groups, cfg.deform_impl)  # P_{i+1}, then upsampled
        self.mid = DefConvGN(channels, 1, cfg.gn_groups, cfg.deform_impl)  # P_i
        self.fine = DefConvGN(channels, 2, cfg.gn_groups, cfg.deform_impl)  # P_{i-1}, stride 2
        self.scale_attn = ScaleAttention(channels, cfg.scale_attn_relu)
        self.dyrelu = DyReLU(channels)
        if not cfg.dynamic:  # the static control: every attention frozen at its neutral init
            nn.init.zeros_(self.scale_attn.fc.weight)  # w = hard_sigmoid(0) = 0.5 for every input
            for module in (self.offset, self.scale_attn, self.dyrelu):
                module.requires_grad_(False)


class DynamicEncoderBlock(nn.Module):
    """One DyHead block over a pyramid. Weights are shared across levels (DyHead) unless
    `cfg.share_levels` is False, in which case each level it runs on has its own LevelOps. It runs on the
    finest `cfg.levels` of the `num_levels` levels (0 = all); the others pass through."""

    def __init__(self, channels: int, num_levels: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.scale_fine_offsets = cfg.scale_fine_offsets
        self.num_run = min(cfg.levels, num_levels) if cfg.levels else num_levels
        n = 1 if cfg.share_levels else self.num_run
        self.levels = nn.ModuleList(LevelOps(channels, cfg) for _ in range(n))
        # EncoderConfig.residual (not in the paper): out = x + g * block(x), g = gate_init (0: ReZero) at init,
        # one scalar (gate "block") or one per level and channel (gate "channel", LayerScale)
        self.gate: nn.Parameter | None = None
        if cfg.residual:
            shape = () if cfg.gate == "block" else (self.num_run, channels, 1, 1)
            self.gate = nn.Parameter(torch.full(shape, float(cfg.gate_init)))
        self.stats: dict[str, Tensor] = {}
        """Of the last training forward, detached: per level run, `scale_P{l}` the mean scale-attention weight
        and `offset_P{l}` the mean |offset| of s_i (level pixels); read by `DynamicEncoder.stats`."""

    def level_gate(self, i: int) -> Tensor | None:
        """The residual gate of the i-th level run (a scalar or [C, 1, 1]); None without `residual`."""
        if self.gate is None or self.gate.dim() == 0:
            return self.gate
        return self.gate[i]

    def forward(self, feats: list[Tensor], valid: list[Tensor] | None = None) -> list[Tensor]:
        """feats: [P_i: [B, C, H_i, W_i]] finest first -> same shapes. `valid`: per level [B, 1, H_i, W_i], 1
        inside each image (model/padding.py): padded positions are zeroed and every pooled statistic is taken
        inside the image; None = no padding."""
        if valid is not None:
            feats = [f * v.to(f.dtype) for f, v in zip(feats, valid, strict=True)]
        outs = []
        stats = {}
        for i, x in enumerate(feats[: self.num_run]):
            v_i = None if valid is None else valid[i]
            ops = self.levels[0 if len(self.levels) == 1 else i]
            size = _hw(x)
            s = ops.offset(x)
            offset, mask = s[:, : 2 * TAPS], s[:, 2 * TAPS:].sigmoid()
            branches = [ops.mid(x, offset, mask, v_i)]
            if i > 0:  # finer neighbour, stride 2 onto level i's grid
                fine = feats[i - 1]
                out_size = stride2_size(_hw(fine))
                # offsets are level-i pixels: x2 in the finer map's pixels (DyHead: unscaled)
                ratio = (_hw(fine)[0] / size[0], _hw(fine)[1] / size[1])
                if not self.scale_fine_offsets:
                    ratio = (1.0, 1.0)
                y = ops.fine(fine, *offsets_for(offset, mask, out_size, ratio),
                             None if v_i is None else resize_mask(v_i, out_size))
                if out_size != size:  # a pyramid whose levels are not exact stride-2 halves
                    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
                branches.append(y)
            if i + 1 < len(feats):  # coarser neighbour at its own size, s_i pooled and scaled to it
                coarse = feats[i + 1]
                csize = _hw(coarse)
                ratio = (csize[0] / size[0], csize[1] / size[1])
                v_c = None if valid is None else valid[i + 1]
                y = ops.coarse(coarse, *offsets_for(offset, mask, csize, ratio), v_c)
                branches.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
            stacked = torch.stack(branches)  # [n, B, C, H, W], n = 2 at the pyramid's ends, 3 inside
            weights = ops.scale_attn(stacked, v_i)
            out = ops.dyrelu((stacked * weights).mean(dim=0), v_i)
            if v_i is not None:
                out = out * v_i.to(out.dtype)
            gate = self.level_gate(i)
            outs.append(out if gate is None else x + gate * out)
            if self.training:
                level = f"P{3 + i}"
                stats[f"scale_{level}"] = weights.detach().float().mean()
                stats[f"offset_{level}"] = offset.detach().float().abs().mean()
        if self.training:
            self.stats = stats
        return outs + feats[self.num_run:]


class DynamicEncoder(nn.Module):
    """`cfg.num_blocks` DynamicEncoderBlocks; identity (the plain FPN) when disabled or with 0 blocks."""

    def __init__(self, channels: int, num_levels: int, cfg: EncoderConfig) -> None:
        super().__init__()
        n = cfg.num_blocks if cfg.enabled else 0
        self.blocks = nn.ModuleList(DynamicEncoderBlock(channels, num_levels, cfg) for _ in range(n))
        self.checkpoint = cfg.checkpoint

    def forward(self, feats: list[Tensor], valid: list[Tensor] | None = None) -> list[Tensor]:
        """feats: [P3..P7] each [B, C, H_l, W_l] -> same shapes; `valid`: per-level masks of the unpadded
        regions (`DynamicEncoderBlock.forward`), None = no padding."""
        for block in self.blocks:
            feats = checkpointing.run(block, feats, valid, enabled=self.checkpoint)
        return feats

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """What the encoder does, for the training log (results.csv, TensorBoard): per block b (from 1) and
        level run, `enc_b{b}_gate` (a "block" gate) or `enc_b{b}_gate_P{l}` (a "channel" gate: the mean over
        channels; `..._rms` its root mean square), and, from the last training forward, `enc_b{b}_scale_P{l}`
        (mean scale-attention weight) and `enc_b{b}_offset_P{l}` (mean |offset|, level pixels)."""
        out: dict[str, float] = {}
        for b, block in enumerate(self.blocks, start=1):
            if block.gate is not None and block.gate.dim() == 0:
                out[f"enc_b{b}_gate"] = float(block.gate)
            elif block.gate is not None:
                for i in range(block.num_run):
                    g = block.gate[i].float()
                    out[f"enc_b{b}_gate_P{3 + i}"] = float(g.mean())
                    out[f"enc_b{b}_gate_P{3 + i}_rms"] = float(g.square().mean().sqrt())
            out.update({f"enc_b{b}_{k}": float(v) for k, v in block.stats.items()})
        return out
