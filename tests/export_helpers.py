"""A cpu_tiny model whose every layer depends on its input (no zero-initialised offsets or box deltas)."""

from __future__ import annotations

import torch

from builders import SHAPES, tiny_config
from dynamic_detr.config import Config
from dynamic_detr.model import DynamicDETR

CLASSES = {**SHAPES, 9: "star"}
CATEGORY_IDS = list(CLASSES)
CLASS_NAMES = list(CLASSES.values())


def live_config() -> Config:
    """cpu_tiny, 3 classes with non-contiguous ids, box deltas not zero-initialised, evaluated at 96 px."""
    return tiny_config({"model.decoder.zero_init_deltas": False}, classes=CLASSES, px=96)


def live_model(seed: int = 0) -> DynamicDETR:
    """Random weights; the zero-initialised layers (encoder offsets, box deltas) get small random values too, so
    that the deformable convs sample at fractional offsets and the boxes depend on the image."""
    torch.manual_seed(seed)
    cfg = live_config()
    model = DynamicDETR(cfg.model).eval()
    model.run_config = cfg
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def well_conditioned(model: DynamicDETR, seed: int = 0) -> DynamicDETR:
    """Give `model`'s zero-initialised parameters (encoder offsets and masks, box deltas, norm biases) small
    random values scaled by 1 / sqrt(fan-in), and its residual gates 1, so that every layer depends on its input
    (sampling offsets of about a pixel, as after training) without making the model ill-conditioned. A larger,
    unscaled perturbation (0.05) gives paper_r50's offset convs offsets of hundreds of pixels on its 256-channel
    pyramid: its six encoder blocks then amplify float32 rounding a thousandfold, and PyTorch on one thread
    disagrees with PyTorch on two as much as with onnxruntime."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 0 and not p.any():  # the encoder's residual gates: the blocks' output counts fully
                p.fill_(1.0)
            elif not p.any():
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 / fan_in**0.5)
    return model


class ContinuousParts(torch.nn.Module):
    """The model's continuous computation as one traceable module: (letterboxed images, valid sizes, fixed
    proposals: content [B, K, d] and boxes [B, K, 4] cxcywh) -> the pyramid (backbone + FPN, finest first), the
    encoder's output, the dense head's logits, ltrb and centerness (with the dense head), and each decoder
    stage's logits and boxes. It is the model's own forward, with the proposals given instead of selected: what
    is left out (query selection's top-k and NMS, post-processing's top-k) are discrete choices that rounding
    can flip where scores are near-tied, as they are with random weights."""

    def __init__(self, model: DynamicDETR) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, valid_sizes: torch.Tensor, content: torch.Tensor,
                boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from dynamic_detr.export.onnx_export import padding_masks

        seen: dict[str, list[torch.Tensor]] = {}
        hooks = [self.model.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("pyramid", o)),
                 self.model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("encoder", o))]
        self.model._query_groups = lambda feats, dense, valid_hw: [(content, boxes)]
        try:
            out = self.model(images, padding_masks(images, valid_sizes))
        finally:
            for h in hooks:
                h.remove()
            del self.model._query_groups
        parts = [*seen["pyramid"], *seen["encoder"]]
        if "dense" in out:
            parts += [out["dense"][k] for k in ("logits", "ltrb", "centerness")]
        for stage in out["stages"]:
            parts += [stage["logits"], stage["boxes"]]
        return tuple(parts)

    def names(self, num_levels: int) -> list[str]:
        """A name for each output, in `forward`'s order."""
        out = [f"pyramid P{3 + i}" for i in range(num_levels)] + [f"encoder P{3 + i}" for i in range(num_levels)]
        if self.model.dense_head is not None:
            out += ["dense logits", "dense ltrb", "dense centerness"]
        for i in range(self.model.cfg.decoder.num_stages):
            out += [f"stage {i + 1} logits", f"stage {i + 1} boxes"]
        return out
