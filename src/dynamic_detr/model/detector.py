"""DynamicDETR: backbone (ResNet-FPN, P3-P7) -> dynamic encoder -> dynamic decoder (docs/paper.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..config import ModelConfig
from ..errors import ConfigError
from . import checkpointing
from .backbone import Backbone
from .decoder import DynamicDecoder
from .denoising import group_attention_mask, noised_queries
from .dense_head import DenseHead, select_queries
from .encoder import DynamicEncoder
from .padding import level_masks

if TYPE_CHECKING:
    from ..config import Config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextmanager
def modes_kept(module: nn.Module) -> Iterator[None]:
    """Put every submodule's training flag back on exit (errors included), as it was, mixed states too (a frozen
    part in eval): `Predictor` sets eval mode, and a `predict` or `explain` inside a training loop must not."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


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
        # one id per class: a ConfigError from the config's checks (config/validate.py) for any config loaded
        assert not cfg.category_ids or len(cfg.category_ids) == cfg.num_classes, "model.category_ids vs num_classes"
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone, cfg.hidden_dim, load_weights=load_weights)
        self.encoder = DynamicEncoder(cfg.hidden_dim, len(self.backbone.strides), cfg.encoder)
        self.decoder = DynamicDecoder(cfg, self.backbone.strides)
        dc, d = cfg.decoder, cfg.hidden_dim
        self.dense_head = DenseHead(cfg, self.backbone.strides) if cfg.dense.enabled else None
        if dc.num_hybrid_queries:  # H-DETR's one-to-many branch: its own queries (content; boxes if learned)
            self.hybrid_embed = nn.Embedding(dc.num_hybrid_queries, d)
            self.hybrid_boxes = nn.Embedding(dc.num_hybrid_queries, 4)
            with torch.no_grad():
                self.hybrid_boxes.weight.copy_(torch.tensor([0.5, 0.5, 1.0, 1.0]))
        if dc.dn_queries:  # DN-DETR: the content of a denoising query is the embedding of its (noised) label
            self.label_embed = nn.Embedding(cfg.num_classes, d)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        ids = torch.tensor(cfg.category_ids, dtype=torch.long)
        self.register_buffer("category_ids", ids, persistent=False)
        self.run_config: Config | None = None
        """The full config (data section: eval transform for `predict`) when loaded from a file."""

    def set_eval_stages(self, n: int) -> None:
        """Run the first `n` decoder stages at inference (0 = all): `DecoderConfig.eval_stages`, kept in the
        model's config (and its run config) so that an export or a saved config records it."""
        num = self.cfg.decoder.num_stages
        if not 0 <= n <= num:
            raise ConfigError(f"decoder stages: {n} is not in [0, {num}] (this model has {num} decoder stages; "
                              "0 = all)")
        self.decoder.eval_stages = self.cfg.decoder.eval_stages = n
        if self.run_config is not None:
            self.run_config.model.decoder.eval_stages = n

    def forward(self, images: Tensor, masks: Tensor | None = None,
                targets: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """
        Args:
            images: [B, 3, H, W] float in [0, 1] (not normalised), zero-padded bottom / right.
            masks: [B, H, W] bool, True = padding (DETR); None = no padding.
            targets: training only, for the denoising queries (`decoder.dn_queries`): B dicts with `boxes`
                [N_b, 4] cxcywh normalised and `labels` [N_b].
        Returns:
            {"logits": [B, K, C'], "boxes": [B, K, 4] cxcywh normalised by each image's unpadded size,
             "stages": [{"logits", "boxes"} per decoder stage, last = final], "valid_hw": [B, 2]}; C' =
             num_classes (focal) or num_classes + 1 (softmax, last = no-object). With the dense head also
             "dense" (`DenseHead.forward`); in training mode, with their switches on, "hybrid_stages" (the
             one-to-many queries) and "dn_stages" + "dn" (the denoising queries, `noised_queries`).
        """
        # padding-aware pooling only where there is padding; in a traced graph (the letterboxed ONNX export)
        # whenever masks are given, since the padding is only known when the graph runs
        padded = masks is not None and (torch.jit.is_tracing() or bool(masks.any()))
        if masks is None:
            masks = images.new_zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
        # normalise, then zero the padding again: padded pixels are the mean colour, as when padding after
        # normalising (DETR, torchvision's GeneralizedRCNNTransform)
        x = ((images - self.pixel_mean) / self.pixel_std).masked_fill(masks[:, None], 0.0)
        valid_hw = valid_sizes(masks)
        feats = self.backbone(x, valid_hw if padded else None)
        # per-level masks of each image's unpadded region: the encoder's and dense head's statistics come from
        # the image alone, so its detections do not depend on the rest of the batch (model/padding.py)
        valid = level_masks(valid_hw, [(int(f.shape[-2]), int(f.shape[-1])) for f in feats],
                            self.backbone.strides) if padded else None
        feats = self.encoder(feats, valid)
        out: dict[str, Any] = {"valid_hw": valid_hw}
        dense = None
        if self.dense_head is not None:
            dense = out["dense"] = checkpointing.run(self.dense_head, feats, valid, enabled=self.cfg.dense.checkpoint)
        dc = self.cfg.decoder
        groups = self._query_groups(feats, dense, valid_hw)
        dn = None
        if self.training and dc.dn_queries and targets is not None:
            dn = noised_queries(targets, dc.dn_queries, self.cfg.num_classes, dc.dn_box_noise, dc.dn_label_noise)
            if dn is not None:
                out["dn"] = dn
                dn_groups = [(self.label_embed(lab), box) for lab, box in
                             zip(dn["labels"].split(dn["group_size"], 1), dn["boxes"].split(dn["group_size"], 1),
                                 strict=True)]
                groups += dn_groups
        if len(groups) == 1:
            stages = self.decoder(feats, valid_hw, *groups[0])
        else:
            stages = self._decode_groups(feats, valid_hw, groups, dn)
            out["hybrid_stages"] = [st.pop("hybrid") for st in stages] if dc.num_hybrid_queries else []
            if dn is not None:
                out["dn_stages"] = [st.pop("dn") for st in stages]
        out.update(logits=stages[-1]["logits"], boxes=stages[-1]["boxes"], stages=stages)
        return out

    def _query_groups(self, feats: list[Tensor], dense: dict[str, Tensor] | None, valid_hw: Tensor
                      ) -> list[tuple[Tensor, Tensor]]:
        """Content [B, L, d] and boxes [B, L, 4] of the matching queries and, in training with the hybrid
        branch on, of the one-to-many queries. With query selection the boxes (and contents) come from one
        top-(K + H) of the dense head: the matching queries take the K best, the hybrid ones the next H; with
        distinct queries (`query_nms`) the K are picked after the NMS and the hybrid ones are the plain top H."""
        dc = self.cfg.decoder
        b, k = valid_hw.shape[0], dc.num_queries
        h = dc.num_hybrid_queries if self.training else 0
        learned = [(self.decoder.query_embed, self.decoder.init_boxes)]
        if h:
            learned.append((self.hybrid_embed, self.hybrid_boxes))
        if dc.query_selection == "none" or dense is None:
            return [(e.weight[None].expand(b, -1, -1), bx.weight[None].expand(b, -1, -1)) for e, bx in learned]
        boxes, idx = select_queries(dense, valid_hw, k + h, nms=dc.query_nms, k_distinct=k)
        if dc.query_selection == "boxes+content":
            flat = torch.cat([f.flatten(2) for f in feats], dim=2).transpose(1, 2)  # [B, N, d]
            picked = flat.gather(1, idx[..., None].expand(-1, -1, flat.shape[-1])).detach()
            content = self.decoder.content_proj(picked)
        else:
            content = torch.cat([e.weight[None].expand(b, -1, -1) for e, _ in learned], dim=1)
        return [(content[:, :k], boxes[:, :k]), *([(content[:, k:], boxes[:, k:])] if h else [])]

    def _decode_groups(self, feats: list[Tensor], valid_hw: Tensor, groups: list[tuple[Tensor, Tensor]],
                       dn: dict[str, Tensor] | None) -> list[dict[str, Any]]:
        """One decoder pass over several query groups (matching, hybrid, denoising groups) that never attend to
        each other; each stage's output is split back: {"logits", "boxes"} of the matching queries, plus
        "hybrid" and "dn" sub-dicts."""
        b = valid_hw.shape[0]
        contents, boxes = zip(*groups, strict=True)
        sizes = [c.shape[1] for c in contents]
        key_valid = None
        if dn is not None:
            n_plain = sum(sizes) - dn["target"].shape[1]
            key_valid = torch.cat([dn["target"].new_ones(b, n_plain, dtype=torch.bool), dn["target"] >= 0], dim=1)
        mask = group_attention_mask(sizes, self.cfg.decoder.num_heads, key_valid).to(valid_hw.device)
        stages = self.decoder(feats, valid_hw, torch.cat(contents, 1), torch.cat(boxes, 1), mask)
        k, h = sizes[0], self.cfg.decoder.num_hybrid_queries
        split = []
        for st in stages:
            part = {key: v[:, :k] for key, v in st.items()}
            if h:
                part["hybrid"] = {key: v[:, k:k + h] for key, v in st.items()}
            if dn is not None:
                part["dn"] = {key: v[:, k + h:] for key, v in st.items()}
            split.append(part)
        return split

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
        xyxy, scores, labels = top_k_detections(outputs["logits"], outputs["boxes"], orig_sizes,
                                                focal=self.cfg.class_loss == "focal", top_k=top_k)
        if self.category_ids.numel():
            labels = self.category_ids.to(labels.device)[labels]
        return xyxy, scores, labels


def top_k_detections(logits: Tensor, boxes: Tensor, orig_sizes: Tensor, focal: bool,
                     top_k: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """Set-prediction post-processing, batched and traceable (no loop over the batch).

    logits: [B, K, C'] (focal: C' = C; softmax: last class = no-object); boxes: [B, K, 4] cxcywh normalised;
    orig_sizes: [B, 2] (h, w). Focal: the top-k (query, class) pairs of sigmoid scores (Deformable DETR);
    softmax: each query's best non-background class, top-k queries (DETR). Returns boxes [B, k, 4] xyxy in
    original pixels clamped to the image, scores [B, k], contiguous labels [B, k].
    """
    boxes = boxes.float()
    b = logits.shape[0]
    scores, query, labels = top_k_queries(logits, focal, top_k)
    boxes = boxes.gather(1, query[..., None].expand(-1, -1, 4))
    sizes = torch.as_tensor(orig_sizes, device=boxes.device).float().reshape(b, 2)
    scale = sizes.flip(-1).repeat(1, 2)[:, None, :]  # [B, 1, 4] (w, h, w, h)
    xyxy = box_convert(boxes, "cxcywh", "xyxy") * scale
    return torch.minimum(xyxy.clamp(min=0), scale), scores, labels


def top_k_queries(logits: Tensor, focal: bool, top_k: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """The selection of `top_k_detections`: scores [B, k], the query index [B, k] of each detection and its
    contiguous label [B, k] (`predict/explain.py` follows a detection back through the decoder stages)."""
    logits = logits.float()
    k, c = logits.shape[1:]
    if focal:
        prob = logits.sigmoid().flatten(1)  # [B, K*C]
        scores, idx = prob.topk(min(top_k, k * c), dim=1)
        return scores, idx // c, idx % c
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # [B, K]
    scores, query = scores.topk(min(top_k, k), dim=1)
    return scores, query, labels.gather(1, query)
