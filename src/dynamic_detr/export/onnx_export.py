"""ONNX export of a trained model with post-processing in the graph, and an onnxruntime parity check.

Two modes:
* native: the encoder runs torchvision's `deform_conv2d`, exported as ONNX `DeformConv` (opset 19+) by the
  symbolic registered here; runtimes need a `DeformConv` kernel (onnxruntime has one on CPU).
* portable: the encoder runs the grid_sample + matmul form (model/deform.py): `GridSample` + `MatMul` only.

RoI pooling is torchvision's `roi_align`, which torchvision itself exports as ONNX `RoiAlign` (aligned=True
becomes coordinate_transformation_mode=half_pixel, opset 16+). The TorchScript exporter (`dynamo=False`) is
used: it is the one that takes custom symbolics for `torchvision::` ops.

The graph's input is letterboxed: each image resized as PyTorch eval resizes it (aspect kept), placed top-left
on a fixed H x W canvas, zero-padded bottom / right, with its valid size given; the graph builds the padding
mask from it and runs the model's padding-aware path (model/padding.py), as PyTorch eval does for a padded
batch. H and W are fixed because the encoder's shape arithmetic is traced as constants. The config (classes,
category ids, eval sizes) travels in the graph's metadata (`METADATA_KEY`), for `export/onnx_runner.py`.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, DataConfig
from ..errors import UserError
from ..fileio import atomic_write
from ..model import DynamicDETR

DEFORM_CONV_OPSET = 19
"""First ONNX opset with `DeformConv`."""
ROI_ALIGN_OPSET = 16
"""First ONNX opset whose `RoiAlign` has half_pixel coordinates (torchvision's aligned=True)."""
INPUT_NAMES = ["images", "valid_sizes", "orig_sizes"]
OUTPUT_NAMES = ["boxes", "scores", "labels"]
BOX_TOL_PX, SCORE_TOL, MIN_LABEL_AGREEMENT = 1.0, 1e-3, 1.0
"""Parity tolerance (`Parity.failures`, `export --check`): boxes within 1 px, scores within 1e-3, every label
the same. Measured differences are far below (docs/export.md, "Native and portable graphs")."""
METADATA_KEY = "dynamic_detr"
"""The graph's metadata_props key holding JSON: `format` (METADATA_FORMAT), `config` (the full config: classes,
category ids, eval resize), `input` ({"layout": "letterbox", "height", "width"}), `top_k`, `portable`."""
METADATA_FORMAT = 1


def _deform_conv2d_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                            dilation_h, dilation_w, groups, offset_groups, use_mask):
    """`torchvision::deform_conv2d` -> ONNX DeformConv(X, W, offset, B, mask); torchvision's offset layout
    ((dy, dx) per tap, taps row-major, offset groups outermost) is the one DeformConv reads."""
    from torch.onnx.symbolic_helper import _get_const

    ints = [_get_const(v, "i", name) for v, name in ((stride_h, "stride_h"), (stride_w, "stride_w"),
                                                   (pad_h, "pad_h"), (pad_w, "pad_w"),
                                                   (dilation_h, "dilation_h"), (dilation_w, "dilation_w"),
                                                   (groups, "groups"), (offset_groups, "offset_groups"))]
    sh, sw, ph, pw, dh, dw, n_groups, n_offset_groups = ints
    inputs = [input, weight, offset, bias]
    if _get_const(use_mask, "b", "use_mask"):
        inputs.append(mask)
    return g.op("DeformConv", *inputs, strides_i=[sh, sw], pads_i=[ph, pw, ph, pw], dilations_i=[dh, dw],
                group_i=n_groups, offset_group_i=n_offset_groups)


def register_deform_conv_symbolic(opset: int = DEFORM_CONV_OPSET) -> None:
    """Register the `DeformConv` symbolic for the TorchScript exporter (idempotent)."""
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv2d_symbolic, opset)


class ExportWrapper(nn.Module):
    """(images [B, 3, H, W] float in [0, 1], valid_sizes [B, 2] int64 (h, w), orig_sizes [B, 2] int64 (h, w))
    -> boxes [B, k, 4] xyxy in original pixels, scores [B, k], labels [B, k] int64 dataset category ids:
    `forward` + `postprocess` (top-k, no NMS, no threshold). Each image is letterboxed (`letterbox`): resized
    with its aspect kept, at the top-left of the H x W input, zero beyond its valid size."""

    def __init__(self, model: DynamicDETR, top_k: int = 100) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(self, images: Tensor, valid_sizes: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        masks = padding_masks(images, valid_sizes)
        return self.model.postprocess_batched(self.model(images, masks), orig_sizes, self.top_k)


def padding_masks(images: Tensor, valid_sizes: Tensor) -> Tensor:
    """[B, H, W] bool, True = padding (the model's convention): everything below / right of each letterboxed
    image's valid size (`valid_sizes` [B, 2] (h, w))."""
    h, w = images.shape[-2:]
    rows = torch.arange(h, device=images.device)[None, :, None] >= valid_sizes[:, 0, None, None]
    cols = torch.arange(w, device=images.device)[None, None, :] >= valid_sizes[:, 1, None, None]
    return rows | cols


def letterbox(images: list[Tensor], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Float images [3, h, w] (already eval-resized) -> (canvas [B, 3, H, W], valid sizes [B, 2] int64): each
    image at the top-left of a zero H x W canvas, as `collate` pads a batch. An image larger than the canvas
    (a graph exported at a smaller `--image-size` than the eval resize gives) is first shrunk to fit, aspect
    kept (bilinear, antialiased)."""
    height, width = size
    out = torch.zeros(len(images), 3, height, width)
    valid = torch.zeros(len(images), 2, dtype=torch.int64)
    for i, img in enumerate(images):
        h, w = img.shape[-2:]
        if h > height or w > width:
            scale = min(height / h, width / w)
            new = (max(1, min(height, math.floor(h * scale))), max(1, min(width, math.floor(w * scale))))
            img = F.interpolate(img[None].float(), size=new, mode="bilinear", antialias=True,
                                align_corners=False)[0].clamp(0, 1)
            h, w = new
        out[i, :, :h, :w] = img
        valid[i] = torch.tensor([h, w])
    return out, valid


def prepare_model(model: DynamicDETR, portable: bool) -> DynamicDETR:
    """A copy of `model` in eval mode on CPU whose deformable convs use the kernel the mode exports."""
    model = copy.deepcopy(model).cpu().eval()
    impl = "sampled" if portable else "torchvision"
    model.cfg.encoder.deform_impl = impl
    for m in model.encoder.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    model.cfg.decoder.roi_impl = "torchvision"  # an ONNX RoiAlign node in both modes
    for m in model.decoder.modules():
        if hasattr(m, "impl"):
            m.impl = "torchvision"
    return model


def export_onnx(model: DynamicDETR, out: str | Path, image_size: tuple[int, int], opset: int = DEFORM_CONV_OPSET,
                portable: bool = False, dynamic_batch: bool = False, top_k: int = 100, batch: int = 1) -> ExportWrapper:
    """Write `out` (an .onnx file, the config in its metadata); returns the exported wrapper (CPU, eval) for
    comparisons.

    image_size: (H, W) of the graph's letterbox canvas. The encoder's shape arithmetic (neighbour sizes, offset
    scale ratios) is traced as constants, so H and W are fixed; the batch dimension is `batch`, or free with
    `dynamic_batch`.
    """
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    need = ROI_ALIGN_OPSET if portable else DEFORM_CONV_OPSET
    if opset < need:
        what = "RoiAlign with half_pixel coordinates" if portable else "DeformConv"
        raise UserError(f"--opset {opset} is too old: {what} needs opset {need} or newer")
    wrapper = ExportWrapper(prepare_model(model, portable), top_k).eval()
    if not portable:
        register_deform_conv_symbolic(DEFORM_CONV_OPSET)
    h, w = image_size
    images = torch.rand(batch, 3, h, w)
    valid = torch.tensor([[h - h // 4, w]] * batch, dtype=torch.int64)  # a padded example; any valid size works
    sizes = torch.tensor([[h, w]] * batch, dtype=torch.int64)
    axes = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES} if dynamic_batch else None
    cfg = model.run_config or Config(model=model.cfg)
    meta = {"format": METADATA_FORMAT, "config": cfg.to_dict(), "input": {"layout": "letterbox", "height": h,
                                                                          "width": w},
            "top_k": top_k, "portable": portable}

    def write(tmp: str) -> None:
        torch.onnx.export(wrapper, (images, valid, sizes), tmp, opset_version=opset, dynamo=False,
                          input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=axes)
        add_metadata(tmp, {METADATA_KEY: json.dumps(meta)})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic becoming constants
        # a temp file renamed over `out`: a failed or killed export leaves the previous graph (or none)
        atomic_write(Path(out), write)
    return wrapper


def add_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Set the graph's metadata_props (key -> text) in place."""
    try:
        import onnx
    except ImportError:
        raise UserError("onnx is not installed: pip install 'dynamic-detr[export]'") from None
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, **props})
    onnx.save(graph, str(path))


@dataclass
class Parity:
    """onnxruntime vs PyTorch on the same inputs; detections above `min_score` in PyTorch are compared."""

    max_box_px: float
    max_score: float
    label_agreement: float
    compared: int

    @staticmethod
    def merge(parts: list[Parity]) -> Parity:
        n = sum(q.compared for q in parts)
        return Parity(max(q.max_box_px for q in parts), max(q.max_score for q in parts),
                      sum(q.label_agreement * q.compared for q in parts) / n, n)

    def line(self) -> str:
        return (f"max |box diff| {self.max_box_px:.4f} px, max |score diff| {self.max_score:.2e}, labels "
                f"agree {100 * self.label_agreement:.1f}% ({self.compared} detections)")

    def failures(self, box_px: float = BOX_TOL_PX, score: float = SCORE_TOL,
                 labels: float = MIN_LABEL_AGREEMENT) -> list[str]:
        """What is out of tolerance (none: parity holds): boxes within `box_px` pixels, scores within `score`,
        at least a `labels` fraction of labels agreeing. NaN differences fail."""
        out = []
        if not self.max_box_px <= box_px:
            out.append(f"max |box diff| {self.max_box_px:.4f} px > {box_px:g} px")
        if not self.max_score <= score:
            out.append(f"max |score diff| {self.max_score:.2e} > {score:g}")
        if not self.label_agreement >= labels:
            out.append(f"labels agree {100 * self.label_agreement:.1f}% < {100 * labels:g}%")
        return out


def compare(wrapper: ExportWrapper, onnx_path: str | Path, images: Tensor, valid_sizes: Tensor, orig_sizes: Tensor,
            top: int = 10) -> Parity:
    """Run the graph with onnxruntime (CPU) and the wrapper with PyTorch on letterboxed `images` [B, 3, H, W] in
    [0, 1] (`valid_sizes` [B, 2]); compare each image's `top` highest-scoring detections (box in pixels, score,
    label, position by position)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install 'dynamic-detr[export]'") from None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"images": images.numpy(), "valid_sizes": valid_sizes.numpy(),
                                               "orig_sizes": orig_sizes.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(images, valid_sizes, orig_sizes)]
    n = min(top, ref[1].shape[1])
    return Parity(max_box_px=float(abs(boxes[:, :n] - ref[0][:, :n]).max()),
                  max_score=float(abs(scores[:, :n] - ref[1][:, :n]).max()),
                  label_agreement=float((labels[:, :n] == ref[2][:, :n]).mean()), compared=int(labels[:, :n].size))


def check_images(files: list[Path], data: DataConfig, image_size: tuple[int, int], count: int = 4,
                 seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Up to `count` of `files`, eval-resized (`data`) and letterboxed to `image_size`, or random images when
    there are none -> (images [n, 3, H, W] in [0, 1], valid sizes [n, 2], original sizes [n, 2], int64)."""
    import torchvision.transforms.v2.functional as TF

    from ..data.image_io import read_image
    from ..data.transforms import resized_size

    images, sizes = [], []
    for path in files[:count]:
        img = torch.Tensor.as_subclass(read_image(path), torch.Tensor)
        h, w = img.shape[-2:]
        sizes.append([h, w])
        new = resized_size(h, w, data.eval_short_side, data.eval_max_size)
        images.append(TF.resize(img, list(new), antialias=True).float() / 255)
    if not images:  # one image filling the canvas, one padded on both sides
        g = torch.Generator().manual_seed(seed)
        h, w = image_size
        images = [torch.rand(3, h, w, generator=g), torch.rand(3, max(1, h * 3 // 4), max(1, w * 2 // 3),
                                                                  generator=g)]
        sizes = [[h, w], [3 * h, 2 * w]]
    canvas, valid = letterbox(images, image_size)
    return canvas, valid, torch.tensor(sizes, dtype=torch.int64)
