"""`dynamic-detr explain`: what the model did on one image.

Everything is read by forward hooks on the model's own modules during one eval forward (`ExplainHooks`); no part
of the model is re-implemented here and nothing runs when not explaining.

* Decoder, coarse to fine (docs/paper.md, dynamic decoder): the box of each top detection's query at the input of
  stage 1 (its initial box: the learned one, or the dense head's pick with query selection) and at the output
  of every stage (`forward()["stages"]`).
* Encoder scale attention (docs/paper.md, dynamic encoder): per block and level, `ScaleAttention`'s weight for the
  finer / same / coarser neighbour. `DynamicEncoderBlock` stacks the branches as [mid, fine, coarse]; the finest
  level has no finer neighbour and the coarsest no coarser one (NaN in the table).
* Deformable sampling (DCNv2): where the 9 taps of each level's own deformable conv (`LevelOps.mid`, fed the
  offsets s_i of `LevelOps.offset` unchanged) land for the cell under each top detection's centre. Tap k =
  (ky, kx), row-major, of output cell (i, j) reads input pixel (i*stride - pad + ky + dy_k, j*stride - pad + kx +
  dx_k) with (dy_k, dx_k) = offset channels (2k, 2k+1) (torchvision's layout, `model/deform.py`). Level pixel p
  is image pixel (p + 0.5) * level stride: RoIAlign's aligned=True convention, the one the decoder reads the
  pyramid with.
* DyReLU (Chen et al., ECCV 2020): the channel means of a1, a2, b1, b2 (`DyReLU.coefficients`) per block and
  level; a1 = 1, a2 = b1 = b2 = 0 is a plain ReLU (the init).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert
from torchvision.utils import draw_bounding_boxes, draw_keypoints

from ..config import Config
from ..model.detector import modes_kept, top_k_queries
from ..model.encoder import KERNEL, TAPS
from .predictor import Predictor

LEVEL_COLORS = ["#e6194b", "#f58231", "#ffe119", "#3cb44b", "#4363d8", "#911eb4", "#42d4f4"]
"""Sampling points per pyramid level, finest (P3, red) to coarsest (P7, blue)."""
FIRST_STAGE_COLOR, LAST_STAGE_COLOR = (255, 235, 90), (200, 0, 40)
"""Decoder path: the initial box is pale yellow, each later stage redder, the final one dark red."""
NEIGHBOURS = ("finer", "same", "coarser")


class ExplainHooks:
    """Context manager: forward hooks on the encoder's `LevelOps` modules and the first decoder stage; removed
    on exit. Per block, the lists grow by one entry per level in level order (finest first), since a block
    runs its levels in order whether or not they share modules.

    Attributes (batch element 0, detached, on the CPU):
        offsets[b][l]: [27, h_l, w_l] output of `LevelOps.offset` (18 offsets as (dy, dx) per tap, 9 mask
            logits), with `geometry[b][l]` = (stride, padding) of the `mid` deformable conv it feeds.
        scale[b][l]: [n] `ScaleAttention` output, branches in the block's order [mid, fine?, coarse?].
        dyrelu[b][l]: [4, C] (a1, a2, b1, b2).
        init_boxes: [K, 4] cxcywh normalised, the boxes entering decoder stage 1.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        n = len(model.encoder.blocks)
        self.offsets: list[list[Tensor]] = [[] for _ in range(n)]
        self.geometry: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.scale: list[list[Tensor]] = [[] for _ in range(n)]
        self.dyrelu: list[list[Tensor]] = [[] for _ in range(n)]
        self.init_boxes: Tensor | None = None
        self._handles: list[Any] = []

    def __enter__(self) -> ExplainHooks:
        for b, block in enumerate(self.model.encoder.blocks):
            for ops in block.levels:
                self._handles += [
                    ops.offset.register_forward_hook(functools.partial(self._on_offset, b, ops.mid.conv)),
                    ops.scale_attn.register_forward_hook(functools.partial(self._on_scale, b)),
                    ops.dyrelu.register_forward_hook(functools.partial(self._on_dyrelu, b)),
                ]
        if len(self.model.decoder.stages):
            self._handles.append(self.model.decoder.stages[0].register_forward_pre_hook(self._on_first_stage))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_offset(self, b: int, conv: nn.Module, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.offsets[b].append(out[0].detach().float().cpu())
        self.geometry[b].append((int(conv.stride[0]), int(conv.padding[0])))

    def _on_scale(self, b: int, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.scale[b].append(out[:, 0].detach().float().flatten().cpu())  # [n, B, 1, 1, 1] -> [n]

    def _on_dyrelu(self, b: int, module: nn.Module, args: tuple, out: Tensor) -> None:
        coeffs = module.coefficients(*args)  # 4 x [B, C, 1, 1]: the model's own parametrisation, re-read
        self.dyrelu[b].append(torch.stack([c[0].flatten() for c in coeffs]).detach().float().cpu())

    def _on_first_stage(self, module: nn.Module, args: tuple) -> None:
        self.init_boxes = args[1][0].detach().float().cpu()  # DecoderStage.forward(query, boxes, ...)


@dataclass
class Explanation:
    """One image's explanation. Boxes are cxcywh normalised by the image (as the model outputs them).

    image: the original uint8 [3, H, W]; input_hw: (h, w) of the resized image the model saw (unpadded).
    queries / scores / labels: [n] the top detections (query index, score, category id); names: id -> name.
    stage_boxes: [n, S + 1, 4]: [:, 0] the initial box, [:, s] decoder stage s's output (s = S: final).
    strides: per pyramid level. scale_weights: [blocks, levels, 3] (finer, same, coarser), NaN = no such
    neighbour. dyrelu: [blocks, levels, 4] channel means of (a1, a2, b1, b2). gates: [blocks, levels] the
    residual gate g of out = x + g * block(x) (`EncoderConfig.residual`; a "channel" gate's channel mean), NaN
    without it. A level the blocks do not run on (`EncoderConfig.levels`) is NaN in every per-level table.
    sample_cells: [p, levels, 2] (i, j) the level cell under each of the first p detections' centres;
    sample_level_px: [blocks, p, levels, 9, 2] (y, x) tap positions in level pixels (the mid conv's input);
    sample_points: [blocks, p, levels, 9, 2] (x, y) the same in original-image pixels; sample_masks:
    [blocks, p, levels, 9] each tap's modulation (sigmoid of the mask logits).
    """

    image: Tensor
    input_hw: tuple[int, int]
    names: dict[int, str]
    queries: Tensor
    scores: Tensor
    labels: Tensor
    stage_boxes: Tensor
    strides: list[int]
    scale_weights: Tensor
    dyrelu: Tensor
    gates: Tensor
    sample_cells: Tensor
    sample_level_px: Tensor
    sample_points: Tensor
    sample_masks: Tensor

    @property
    def level_names(self) -> list[str]:
        return [f"P{round(math.log2(s))}" for s in self.strides]

    def image_boxes(self, clamp: bool = False) -> Tensor:
        """stage_boxes as xyxy original-image pixels [n, S + 1, 4] (clamped to the image for drawing)."""
        h, w = self.image.shape[-2:]
        xyxy = box_convert(self.stage_boxes, "cxcywh", "xyxy") * torch.tensor([w, h, w, h], dtype=torch.float32)
        if clamp:
            xyxy = torch.minimum(xyxy.clamp(min=0), torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=torch.float32))
        return xyxy


def tap_positions(offset: Tensor, i: int, j: int, stride: int, padding: int) -> Tensor:
    """Input pixels (y, x) [9, 2] read by the 9 taps of a 3x3 deformable conv at output cell (i, j).

    offset: [18, H', W'] (dy, dx) per tap, taps row-major (torchvision's layout); dilation 1 (`DefConvGN`).
    """
    k = torch.arange(TAPS)
    ky, kx = (k // KERNEL).float(), (k % KERNEL).float()
    y = i * stride - padding + ky + offset[0::2, i, j].float()
    x = j * stride - padding + kx + offset[1::2, i, j].float()
    return torch.stack([y, x], dim=-1)


@torch.no_grad()
def explain_image(model: nn.Module, cfg: Config, image: Tensor, device: torch.device | str = "cpu",
                  top: int = 5, points: int = 3) -> Explanation:
    """Run `model` once on `image` (uint8 [3, H, W]) through `predict`'s eval transform, with `ExplainHooks`.

    top: detections whose decoder path is followed; points: of those, how many get sampling points.
    """
    with modes_kept(model):
        predictor = Predictor(model, cfg, torch.device(device))  # eval mode, the config's eval transform
        batch = predictor.batch([image])
        with ExplainHooks(model) as hooks:
            out = model(batch.images, batch.masks)
    valid_h, valid_w = (float(v) for v in out["valid_hw"][0])
    scores, queries, labels = (t[0].cpu() for t in top_k_queries(out["logits"], model.cfg.class_loss == "focal",
                                                                  top))
    if model.category_ids.numel():
        labels = model.category_ids.cpu()[labels]
    stages = torch.stack([st["boxes"][0].detach().float().cpu() for st in out["stages"]], dim=1)  # [K, S, 4]
    init = hooks.init_boxes if hooks.init_boxes is not None else stages[:, 0]
    stage_boxes = torch.cat([init[:, None], stages], dim=1)[queries]

    strides = [int(s) for s in model.backbone.strides]
    blocks, levels = len(hooks.scale), len(strides)
    run = len(hooks.offsets[0]) if blocks else 0  # the levels the blocks run on (EncoderConfig.levels)
    scale = torch.full((blocks, levels, 3), math.nan)
    dyrelu = torch.full((blocks, levels, 4), math.nan)
    gates = torch.full((blocks, levels), math.nan)
    for b, block in enumerate(model.encoder.blocks):
        for lv, weights in enumerate(hooks.scale[b]):
            scale[b, lv, 1] = weights[0]  # [mid, fine (if a finer level exists), coarse (if a coarser one does)]
            rest = iter(weights[1:].tolist())
            if lv > 0:
                scale[b, lv, 0] = next(rest)
            if lv + 1 < levels:
                scale[b, lv, 2] = next(rest)
        for lv, coeffs in enumerate(hooks.dyrelu[b]):
            dyrelu[b, lv] = coeffs.mean(dim=1)
        for lv in range(run):
            gate = block.level_gate(lv)
            if gate is not None:
                gates[b, lv] = float(gate.detach().float().mean())

    h, w = image.shape[-2:]
    to_orig = torch.tensor([h / valid_h, w / valid_w])  # resized (model input) pixels -> original pixels
    p = min(points, len(queries))
    centres = stage_boxes[:p, -1, :2] * torch.tensor([valid_w, valid_h])  # (x, y) in model-input pixels
    cells = torch.full((p, levels, 2), -1, dtype=torch.long)
    level_px = torch.full((blocks, p, levels, TAPS, 2), math.nan)
    masks = torch.full((blocks, p, levels, TAPS), math.nan)
    for lv, s in enumerate(strides[:run] if blocks else strides):
        grid_h, grid_w = hooks.offsets[0][lv].shape[-2:] if blocks else (1, 1)
        for d in range(p):
            j = min(max(round(float(centres[d, 0]) / s - 0.5), 0), grid_w - 1)
            i = min(max(round(float(centres[d, 1]) / s - 0.5), 0), grid_h - 1)
            cells[d, lv] = torch.tensor([i, j])
            for b in range(blocks):
                field = hooks.offsets[b][lv]
                level_px[b, d, lv] = tap_positions(field[: 2 * TAPS], i, j, *hooks.geometry[b][lv])
                masks[b, d, lv] = field[2 * TAPS:, i, j].sigmoid()
    stride_t = torch.tensor(strides, dtype=torch.float32)[None, None, :, None, None]
    points_yx = (level_px + 0.5) * stride_t * to_orig
    names = cfg.model.names()
    return Explanation(image=image.cpu(), input_hw=(round(valid_h), round(valid_w)), names=names,
                       queries=queries, scores=scores, labels=labels, stage_boxes=stage_boxes, strides=strides,
                       scale_weights=scale, dyrelu=dyrelu, gates=gates, sample_cells=cells, sample_level_px=level_px,
                       sample_points=points_yx.flip(-1), sample_masks=masks)


# ---------------------------------------------------------------------------------------------- pictures
def stage_colors(n: int) -> list[tuple[int, int, int]]:
    """n colours from FIRST_STAGE_COLOR to LAST_STAGE_COLOR."""
    t = [k / max(n - 1, 1) for k in range(n)]
    return [tuple(round(a + (b - a) * f) for a, b in zip(FIRST_STAGE_COLOR, LAST_STAGE_COLOR, strict=True))
            for f in t]


def _line_width(image: Tensor) -> int:
    return max(1, round(min(image.shape[-2:]) / 256))


def draw_stage_paths(ex: Explanation) -> Tensor:
    """The image with every top detection's box at each decoder stage, pale (initial) to dark red (final);
    final boxes labelled with class and score."""
    n, s1 = ex.stage_boxes.shape[:2]
    if n == 0:
        return ex.image
    xyxy = ex.image_boxes(clamp=True)
    colors = stage_colors(s1)
    width = _line_width(ex.image)
    img = ex.image
    if s1 > 1:
        img = draw_bounding_boxes(img, xyxy[:, :-1].reshape(-1, 4), colors=colors[:-1] * n, width=width)
    text = [f"{ex.names.get(int(c), str(int(c)))} {float(s):.2f}" for c, s in zip(ex.labels, ex.scores, strict=True)]
    return draw_bounding_boxes(img, xyxy[:, -1], labels=text, colors=[colors[-1]] * n, width=width + 1)


def draw_sampling_points(ex: Explanation, block: int) -> Tensor:
    """The image with the explained detections' final boxes (white) and, per level (LEVEL_COLORS), the 9 taps
    of that level's deformable conv at the cell under each box centre, for encoder block `block`."""
    p = ex.sample_points.shape[1]
    if p == 0:
        return ex.image
    img = draw_bounding_boxes(ex.image, ex.image_boxes(clamp=True)[:p, -1], colors="white",
                              width=_line_width(ex.image))
    radius = max(1, round(min(ex.image.shape[-2:]) / 160))
    for lv in reversed(range(len(ex.strides))):  # coarse first: the finer, denser taps stay visible on top
        if ex.sample_points[block, :, lv].isnan().any():  # a level the blocks do not run on
            continue
        img = draw_keypoints(img, ex.sample_points[block, :, lv], colors=LEVEL_COLORS[lv % len(LEVEL_COLORS)],
                             radius=radius)
    return img


def scale_table_figsize(rows: int) -> tuple[float, float]:
    """Figure size (inches, 100 dpi) of the scale-attention table with `rows` block/level rows."""
    return 4.8, 1.2 + 0.32 * rows


def plot_scale_attention(ex: Explanation, path: Path) -> None:
    """Heat table: one row per (block, level), columns finer / same / coarser, ScaleAttention's weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    blocks, levels = ex.scale_weights.shape[:2]
    table = ex.scale_weights.reshape(blocks * levels, 3).numpy()
    rows = [f"block {b + 1} {name}" for b in range(blocks) for name in ex.level_names]
    fig, ax = plt.subplots(figsize=scale_table_figsize(len(rows)))
    ax.imshow(np.ma.masked_invalid(table), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(table.shape[0]):
        for c in range(3):
            v = table[r, c]
            ax.text(c, r, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if not math.isnan(v) and v < 0.6 else "black")
    ax.set_xticks(range(3), list(NEIGHBOURS))
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title("scale attention (hard sigmoid, 0.5 at init)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


DYRELU_FIGSIZE = (9.0, 3.6)


def plot_dyrelu(ex: Explanation, path: Path) -> None:
    """Bar charts of the channel-mean slopes a1 and a2 per level, one bar per encoder block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks, levels = ex.dyrelu.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=DYRELU_FIGSIZE)
    width = 0.8 / max(blocks, 1)
    for ax, k, name, init in ((axes[0], 0, "a1", 1.0), (axes[1], 1, "a2", 0.0)):
        for b in range(blocks):
            xs = [lv - 0.4 + width * (b + 0.5) for lv in range(levels)]
            ax.bar(xs, ex.dyrelu[b, :, k].tolist(), width=width, label=f"block {b + 1}")
        ax.axhline(init, color="k", linestyle="--", linewidth=1)
        ax.set_xticks(range(levels), ex.level_names)
        ax.set_title(f"DyReLU mean {name} (ReLU: {init:g})", fontsize=9)
    if blocks <= 8:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_explanation(ex: Explanation, out: Path) -> list[Path]:
    """Write stages.png, and with an encoder scale_attention.png, dyrelu.png and sampling_block<b>.png, plus
    explain.json (every number drawn). Returns the written paths."""
    from ..data.show import save_png
    from ..fileio import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "stages.png"]
    save_png(draw_stage_paths(ex), written[0])
    blocks = ex.scale_weights.shape[0]
    if blocks:
        written += [out / "scale_attention.png", out / "dyrelu.png"]
        plot_scale_attention(ex, written[-2])
        plot_dyrelu(ex, written[-1])
        for b in range(blocks):
            written.append(out / f"sampling_block{b + 1}.png")
            save_png(draw_sampling_points(ex, b), written[-1])
    written.append(out / "explain.json")
    atomic_write_json(written[-1], explanation_record(ex))
    return written


def explanation_record(ex: Explanation) -> dict[str, Any]:
    """The explanation as JSON-ready data (boxes xyxy in original pixels)."""
    xyxy = ex.image_boxes()
    colors = stage_colors(ex.stage_boxes.shape[1])

    def r(v: Any) -> Any:
        return [r(x) for x in v] if isinstance(v, list) else round(float(v), 3)

    dets = [{"query": int(q), "category_id": int(c), "category": ex.names.get(int(c), str(int(c))),
             "score": round(float(s), 4), "stage_boxes": r(xyxy[d].tolist())}
            for d, (q, c, s) in enumerate(zip(ex.queries, ex.labels, ex.scores, strict=True))]
    levels = ex.level_names
    scale = [{"block": b + 1, "level": levels[lv], **dict(zip(NEIGHBOURS, r(ex.scale_weights[b, lv].tolist()),
                                                              strict=True))}
             for b in range(ex.scale_weights.shape[0]) for lv in range(len(levels))]
    dyrelu = [{"block": b + 1, "level": levels[lv], **dict(zip(("a1", "a2", "b1", "b2"),
                                                               r(ex.dyrelu[b, lv].tolist()), strict=True))}
              for b in range(ex.dyrelu.shape[0]) for lv in range(len(levels))]
    gates = [{"block": b + 1, "level": levels[lv], "gate": r(ex.gates[b, lv])}
             for b in range(ex.gates.shape[0]) for lv in range(len(levels))]
    sampling = [{"block": b + 1, "detection": d, "level": levels[lv], "cell": ex.sample_cells[d, lv].tolist(),
                 "points_xy": r(ex.sample_points[b, d, lv].tolist()), "mask": r(ex.sample_masks[b, d, lv].tolist())}
                for b in range(ex.sample_points.shape[0]) for d in range(ex.sample_points.shape[1])
                for lv in range(len(levels))]
    return {"image_size": list(ex.image.shape[-2:]), "input_size": list(ex.input_hw), "strides": ex.strides,
            "stage_colors": {("initial" if s == 0 else f"stage {s}"): "#{:02x}{:02x}{:02x}".format(*c)
                             for s, c in enumerate(colors)},
            "detections": dets, "scale_attention": scale, "dyrelu": dyrelu, "gates": gates, "level_colors":
            dict(zip(levels, LEVEL_COLORS, strict=False)), "sampling": sampling}
