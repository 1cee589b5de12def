"""Set-prediction loss with deep supervision: every decoder stage is matched and supervised on its own.

Per stage s: class loss (sigmoid focal as in Deformable DETR / Sparse R-CNN, or DETR's softmax cross-entropy
with a down-weighted no-object class), L1 on cxcywh and 1 - GIoU on the matched pairs; the L1 / GIoU (and
focal) sums are divided by the number of target boxes, averaged over processes (DETR).

Beyond the paper (LossConfig switches, off by default): an IoU-aware class loss instead of the focal one
(varifocal, DEIM's MAL or Stable-DINO's position-supervised loss, iou_targets.py) and Stable-DINO's
position-modulated matching cost (matcher.py). The class loss chosen applies to every stage of every branch
(the one-to-one queries, the one-to-many ones and the denoising ones); the matching cost wherever a branch is
Hungarian-matched (one-to-one, one-to-many; the denoising queries have fixed targets).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..config import LossConfig
from .boxes import safe_xyxy
from .dense_loss import dense_loss
from .iou_targets import matchability_aware_loss, matched_iou, position_supervised_loss, varifocal_loss
from .matcher import HungarianMatcher


class SetCriterion(nn.Module):
    """DETR-style loss over all decoder stages.

    Args:
        num_classes: C, number of object classes (labels 0..C-1).
        cfg: matching costs, loss weights, focal alpha / gamma, no-object weight.
        class_loss: "focal" (logits [B, K, C]) or "softmax" (logits [B, K, C + 1], last = no-object).
    """

    def __init__(self, num_classes: int, cfg: LossConfig, class_loss: str, dense_radius: float = 1.5) -> None:
        super().__init__()
        self.dense_radius = dense_radius
        if class_loss not in ("focal", "softmax"):
            raise ValueError(f"class_loss must be 'focal' or 'softmax', got {class_loss!r}")
        self.num_classes = num_classes
        self.cfg = cfg
        self.class_loss = class_loss
        self.matcher = HungarianMatcher(cfg.cost_class, cfg.cost_bbox, cfg.cost_giou, class_loss,
                                        cfg.focal_alpha, cfg.focal_gamma,
                                        cfg.cost_position_exponent if cfg.cost_position_modulated else None)
        # DETR's eos_coef: weight of the no-object class in the softmax cross-entropy
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = cfg.no_object_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Losses for a batch.

        Args:
            outputs: `logits` [B, K, C'], `boxes` [B, K, 4] cxcywh normalised and `stages`, one
                {"logits", "boxes"} per decoder stage (last = final); without `stages` only the final
                prediction is supervised.
            targets: B dicts with `boxes` [N_b, 4] cxcywh normalised and `labels` int64 [N_b] in 0..C-1.

        Returns:
            `loss_class_{s}`, `loss_bbox_{s}`, `loss_giou_{s}` (unweighted, s = 0..S-1), `loss_class`,
            `loss_bbox`, `loss_giou` (= final stage) and `loss` (weighted sum over all stages), all float32
            scalars; `loss` carries the gradient.
        """
        outputs = float32_outputs(outputs)  # the model's may be bf16 / fp16 under autocast
        stages = outputs.get("stages") or [outputs]
        device = stages[-1]["logits"].device
        targets = [{"boxes": t["boxes"].to(device, torch.float32), "labels": t["labels"].to(device)}
                   for t in targets]
        self._check_labels(targets)
        expected = self.num_classes + (self.class_loss == "softmax")
        if stages[-1]["logits"].shape[-1] != expected:
            raise ValueError(f"{self.class_loss} loss with {self.num_classes} classes expects logits [B, K, "
                             f"{expected}], got {list(stages[-1]['logits'].shape)}")
        num_boxes = self._num_boxes(targets, device)
        w = self.cfg
        losses: dict[str, Tensor] = {}
        with torch.autocast(device_type=device.type, enabled=False):
            total = self._stages_loss(stages, targets, num_boxes, losses, "")
            if outputs.get("hybrid_stages"):  # H-DETR one-to-many: every target repeated k times
                k = w.hybrid_k
                many = [{"boxes": t["boxes"].repeat(k, 1), "labels": t["labels"].repeat(k)} for t in targets]
                total = total + w.hybrid_weight * self._stages_loss(outputs["hybrid_stages"], many, num_boxes * k,
                                                                    losses, "hybrid")
            if outputs.get("dn_stages"):  # denoising: each query reconstructs its own target
                dn = outputs["dn"]
                matches = [(torch.nonzero(t >= 0).squeeze(1).cpu(), t[t >= 0].cpu()) for t in dn["target"]]
                total = total + w.dn_weight * self._stages_loss(outputs["dn_stages"], targets,
                                                                num_boxes * dn["groups"], losses, "dn", matches)
            if outputs.get("dense") is not None and "valid_hw" in outputs:
                terms = dense_loss(outputs["dense"], targets, outputs["valid_hw"].float(), self.dense_radius,
                                   w.focal_alpha, w.focal_gamma)
                losses.update(terms)
                # FCOS weighs its three terms 1:1:1; GIoU x2 here, the class : GIoU ratio of the decoder's loss
                dense_total = terms["dense_class"] + 2.0 * terms["dense_giou"] + terms["dense_ctr"]
                losses["loss_dense"] = dense_total
                total = total + w.dense_weight * dense_total
        losses["loss"] = total
        return losses

    def _stages_loss(self, stages: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], num_boxes: Tensor,
                     losses: dict[str, Tensor], branch: str,
                     matches: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Weighted sum over stages of class + L1 + GIoU; each stage Hungarian-matched unless `matches` is
        given (fixed assignment). Main branch (""): logs every stage's terms and the final stage's as
        `loss_{term}`; other branches log their weighted total as `loss_{branch}`."""
        w = self.cfg
        # Stable-DINO weighs its position-supervised loss higher than DINO's focal one (6 against 1)
        w_class = w.position_supervised_weight if self.iou_target == "position_supervised" else w.loss_class
        total = torch.zeros((), device=num_boxes.device)
        for s, stage in enumerate(stages):
            logits, boxes = stage["logits"].float(), stage["boxes"].float()
            m = matches if matches is not None else self.matcher(logits, boxes, targets)
            terms = {"class": self.loss_class(logits, targets, m, num_boxes, boxes),
                     **self.loss_boxes(boxes, targets, m, num_boxes)}
            if not branch:
                for name, value in terms.items():
                    losses[f"loss_{name}_{s}"] = value
            total = total + w_class * terms["class"] + w.loss_bbox * terms["bbox"] + w.loss_giou * terms["giou"]
        if not branch:
            last = len(stages) - 1
            for name in ("class", "bbox", "giou"):
                losses[f"loss_{name}"] = losses[f"loss_{name}_{last}"]
        else:
            losses[f"loss_{branch}"] = total
        return total

    # ------------------------------------------------------------------ terms
    def loss_class(self, logits: Tensor, targets: list[dict[str, Tensor]],
                   matches: list[tuple[Tensor, Tensor]], num_boxes: Tensor, boxes: Tensor | None = None) -> Tensor:
        """Class loss over all K queries of every image; unmatched queries are trained towards "no object"
        (all sigmoids 0 for focal, the extra class for softmax). logits [B, K, C'].

        With an IoU-aware loss (`iou_target`; focal only, needs `boxes` [B, K, 4], else the focal loss): a
        matched query's target depends on the IoU of its box with its target's (iou_targets.py)."""
        B, K = logits.shape[:2]
        batch_idx, pred_idx, tgt_labels = self._matched(targets, matches, logits.device)
        target_classes = torch.full((B, K), self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, pred_idx] = tgt_labels
        if self.class_loss == "softmax":
            # DETR: weighted mean over queries, sum(w_q * CE_q) / sum(w_q), w = no_object_weight for "none"
            weight = self.class_weight.to(logits.device)
            return F.cross_entropy(logits.transpose(1, 2), target_classes, weight=weight)
        # Deformable DETR: sum of the per-logit focal terms / number of target boxes
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        w = self.cfg
        if self.iou_target is not None and boxes is not None:
            iou = matched_iou(boxes, targets, matches, batch_idx, pred_idx)
            if self.iou_target == "position_supervised":
                loss = position_supervised_loss(logits, onehot, iou, w.focal_alpha, w.focal_gamma)
            elif self.iou_target == "mal":
                loss = matchability_aware_loss(logits, onehot, iou, w.mal_gamma)
            else:
                loss = varifocal_loss(logits, onehot, iou, w.focal_alpha, w.focal_gamma)
            return loss / num_boxes
        focal = sigmoid_focal_loss(logits, onehot, alpha=w.focal_alpha, gamma=w.focal_gamma, reduction="sum")
        return focal / num_boxes

    def loss_boxes(self, boxes: Tensor, targets: list[dict[str, Tensor]],
                   matches: list[tuple[Tensor, Tensor]], num_boxes: Tensor) -> dict[str, Tensor]:
        """`bbox`: L1 on cxcywh, `giou`: 1 - GIoU, both summed over matched pairs / num_boxes.
        boxes [B, K, 4] cxcywh normalised."""
        batch_idx, pred_idx, _ = self._matched(targets, matches, boxes.device)
        src = boxes[batch_idx, pred_idx]  # [M, 4]
        tgt = torch.cat([t["boxes"][j.to(boxes.device)] for t, (_, j) in zip(targets, matches, strict=True)])
        l1 = F.l1_loss(src, tgt, reduction="sum")
        giou = generalized_box_iou_loss(safe_xyxy(src), safe_xyxy(tgt), reduction="sum")
        return {"bbox": l1 / num_boxes, "giou": giou / num_boxes}

    # ------------------------------------------------------------------ helpers
    @property
    def iou_target(self) -> str | None:
        """The IoU-aware class loss in use: "position_supervised", "mal", "varifocal" or None (focal). MAL and
        the position-supervised loss each replace the varifocal loss of `iou_aware` (config validation rejects
        both at once)."""
        w = self.cfg
        if w.position_supervised:
            return "position_supervised"
        if w.mal:
            return "mal"
        return "varifocal" if w.iou_aware else None

    @staticmethod
    def _matched(targets: list[dict[str, Tensor]], matches: list[tuple[Tensor, Tensor]],
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Flattened (image index [M], query index [M], target label [M]) of all matched pairs."""
        batch_idx = torch.cat([torch.full_like(i, b) for b, (i, _) in enumerate(matches)]).to(device)
        pred_idx = torch.cat([i for i, _ in matches]).to(device)
        labels = torch.cat([t["labels"][j.to(device)] for t, (_, j) in zip(targets, matches, strict=True)])
        return batch_idx, pred_idx, labels

    def _check_labels(self, targets: list[dict[str, Tensor]]) -> None:
        labels = torch.cat([t["labels"] for t in targets])
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"target labels must be in 0..{self.num_classes - 1}, got "
                             f"{int(labels.min())}..{int(labels.max())}")

    @staticmethod
    def _num_boxes(targets: list[dict[str, Tensor]], device: torch.device) -> Tensor:
        """Target boxes per process, averaged over processes (DDP averages gradients), at least 1."""
        n = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return n.clamp(min=1)


def float32_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """Model outputs in float32 for the loss (they may be bf16 under autocast); integer tensors unchanged."""
    def cast(v):
        if torch.is_tensor(v):
            return v.float() if v.is_floating_point() else v
        if isinstance(v, list):
            return [cast(x) for x in v]
        if isinstance(v, dict):
            return {k: cast(x) for k, x in v.items()}
        return v
    return cast(outputs)
