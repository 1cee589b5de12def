"""DynamicDETR: backbone (ResNet-FPN, P3-P7) -> dynamic encoder -> dynamic decoder (PAPER.md, Figure 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..config import ModelConfig
from ..errors import ConfigError
from .backbone import Backbone
from .decoder import DynamicDecoder
from .encoder import DynamicEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def valid_sizes(masks: Tensor) -> Tensor:
    """masks: [B, H, W] bool, True = padding -> [B, 2] float (h, w) of each image's unpadded region."""
    valid = ~masks
    h = valid.any(dim=2).sum(dim=1)
    w = valid.any(dim=1).sum(dim=1)
    return torch.stack([h, w], dim=1).float()


class DynamicDETR(nn.Module):
    """End-to-end detector: K queries, each giving class logits and a box, refined over M decoder stages.

    Args:
        cfg: model config.
        load_weights: read the backbone weights named in `cfg.backbone.weights`; False builds the same
            architecture (norm, frozen stages) without reading anything, e.g. to count parameters.
    """

    def __init__(self, cfg: ModelConfig, *, load_weights: bool = True) -> None:
        super().__init__()
        if cfg.category_ids and len(cfg.category_ids) != cfg.num_classes:
            raise ConfigError(f"model.category_ids has {len(cfg.category_ids)} ids but model.num_classes is "
                              f"{cfg.num_classes}")
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.hidden_dim, load_weights=load_weights)
        self.encoder = DynamicEncoder(cfg.hidden_dim, len(self.backbone.strides), cfg.encoder)
        self.decoder = DynamicDecoder(cfg, self.backbone.strides)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        ids = torch.tensor(cfg.category_ids, dtype=torch.long)
        self.register_buffer("category_ids", ids, persistent=False)

    def forward(self, images: Tensor, masks: Tensor | None = None) -> dict[str, Any]:
        """
        Args:
            images: [B, 3, H, W] float in [0, 1] (not normalised), zero-padded bottom / right.
            masks: [B, H, W] bool, True = padding (DETR); None = no padding.
        Returns:
            {"logits": [B, K, C'], "boxes": [B, K, 4] cxcywh normalised by each image's unpadded size,
             "stages": [{"logits", "boxes"} per decoder stage, last = final]}; C' = num_classes (focal) or
             num_classes + 1 (softmax, last = no-object).
        """
        if masks is None:
            masks = images.new_zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
        # normalise, then zero the padding again: padded pixels are the mean colour, as when padding after
        # normalising (DETR, torchvision's GeneralizedRCNNTransform)
        x = ((images - self.pixel_mean) / self.pixel_std).masked_fill(masks[:, None], 0.0)
        feats = self.encoder(self.backbone(x))
        stages = self.decoder(feats, valid_sizes(masks))
        return {"logits": stages[-1]["logits"], "boxes": stages[-1]["boxes"], "stages": stages}

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Any], orig_sizes: Tensor,
                    top_k: int = 100) -> list[dict[str, Tensor]]:
        """Detections per image, highest score first; no NMS, no threshold.

        Args:
            outputs: `forward`'s result (only "logits" and "boxes" are used).
            orig_sizes: [B, 2] (h, w) of the original images.
            top_k: detections kept per image. Focal: the top-k (query, class) pairs of sigmoid scores
                (Deformable DETR); softmax: each query's best non-background class, top-k queries.
        Returns:
            per image {"boxes": [k, 4] xyxy in original pixels (clamped to the image), "scores": [k],
            "labels": [k] dataset category ids (`cfg.category_ids`; contiguous labels if it is empty)}.
        """
        boxes, scores, labels = self.postprocess_batched(outputs, orig_sizes, top_k)
        return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(len(boxes))]

    def postprocess_batched(self, outputs: dict[str, Any], orig_sizes: Tensor,
                            top_k: int = 100) -> tuple[Tensor, Tensor, Tensor]:
        """`postprocess` as batched tensors (boxes [B, k, 4], scores [B, k], labels [B, k]), with no loop over
        the batch, so that an ONNX export keeps the batch dimension free."""
        logits, boxes = outputs["logits"].float(), outputs["boxes"].float()
        b, k, c = logits.shape
        if self.cfg.class_loss == "focal":
            prob = logits.sigmoid().flatten(1)  # [B, K*C]
            scores, idx = prob.topk(min(top_k, k * c), dim=1)
            query, labels = idx // c, idx % c
        else:
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # [B, K]
            scores, query = scores.topk(min(top_k, k), dim=1)
            labels = labels.gather(1, query)
        boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
        sizes = torch.as_tensor(orig_sizes, device=boxes.device).float().reshape(b, 2)
        scale = sizes.flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, 4] (w, h, w, h)
        xyxy = box_convert(boxes, "cxcywh", "xyxy") * scale
        xyxy = torch.minimum(xyxy.clamp(min=0), scale)
        if self.category_ids.numel():
            labels = self.category_ids.to(labels.device)[labels]
        return xyxy, scores, labels
