"""D-FINE's training loss as the official criterion computes it (Peterande/D-FINE, src/zoo/dfine/
dfine_criterion.py, DFINECriterion), from the outputs of Hugging Face's `DFineModel`.

Why not HF's own loss (transformers 5.25, loss/loss_d_fine.py, `DFineForObjectDetectionLoss`): HF's decoder
stacks L + 1 logit / box outputs (index 0 is the "pre" head: layer 0's class head without the LQE and
`pre_bbox_head`'s boxes, then layers 0..L-1) but only L corner outputs (layers 0..L-1). HF's loss zips
`logits[:, :-1]` (pre, 0..L-2) with `corners[:, :-1]` (0..L-2), so that
- the pre head gets layer 0's corners (FGL / DDF on layer 0's distributions, scored with the pre boxes),
  layer l gets layer l + 1's corners, and layer L - 2 gets no loss at all (zip stops one short);
- the last layer has no `pred_corners` entry, so no FGL term;
- the denoising outputs are paired the same way (the last denoising layer gets no loss);
- every output is matched and normalised on its own, where D-FINE uses GO-LSD's union of the matchings of all
  decoder layers, the pre head and the encoder ("indices_go") for the box and localisation terms.

What this module does instead, output by output as DFINECriterion does:
- layers 0..L-1 (L-1 = the main output): VFL with its own matching; L1 + GIoU and FGL with the union matching
  (normalised by its size); DDF (distillation from the last layer's corners and scores, temperature 5) on
  layers 0..L-2;
- the pre head and the encoder's top-k: VFL with their own matching, L1 + GIoU with the union matching;
- denoising: every layer (VFL, L1 + GIoU, FGL, DDF) and the denoising pre head (VFL, L1 + GIoU), matched by
  construction, normalised by the targets times the number of groups; DDF's positive / negative balance from
  the matching queries, as the official criterion (which caches it) does.
Terms are named `loss_<term>_<output>` (output: `layer<l>`, `pre`, `enc`, `dn_layer<l>`, `dn_pre`) and weighted
by D-FINE's weights (VFL 1, L1 5, GIoU 2, FGL 0.15, DDF 1.5).

HF's pieces that match the official code are reused: the Hungarian matcher, VFL, L1 + GIoU, the unimodal
distribution focal loss (FGL) and `bbox2distance`. Two small differences from the official code, both HF's:
predicted boxes are clamped to [0, 1] before the loss (HF does it; it keeps the GIoU's corner-order check from
failing on a degenerate box early in training from random weights), and ties in the union matching go to the
lowest target index (the official code's order among equally frequent pairs is unspecified).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Indices = list[tuple[Tensor, Tensor]]
TEMPERATURE = 5.0
"""DDF's distillation temperature (DFINECriterion.loss_local, T=5)."""


def official_layout(out: Any) -> dict[str, Any]:
    """HF `DFineModelOutput` (training mode) -> the outputs D-FINE's criterion scores, each a dict with HF's
    key names (`logits`, `pred_boxes`, and for decoder layers `pred_corners`, `ref_points`, `teacher_*`):
    `layers` (L dicts, the last = the main output), `pre`, `enc`, and with denoising `dn_layers`, `dn_pre`,
    `dn_meta`."""
    logits = out.intermediate_logits  # [B, L + 1, Q, C]: index 0 = pre head, l + 1 = layer l
    boxes = out.intermediate_reference_points.clamp(0, 1)  # [B, L + 1, Q, 4]
    corners = out.intermediate_predicted_corners  # [B, L, Q, 4 (R + 1)]
    refs = out.initial_reference_points  # [B, L, Q, 4]
    meta = out.denoising_meta_values
    num_layers = corners.shape[1]
    if logits.shape[1] != num_layers + 1 or boxes.shape[1] != num_layers + 1:
        raise ValueError(f"D-FINE outputs: expected {num_layers + 1} logit / box outputs (pre head + "
                         f"{num_layers} layers), got {logits.shape[1]} / {boxes.shape[1]}")

    def part(t: Tensor, which: int) -> Tensor:  # 0: denoising queries, 1: matching queries
        return t if meta is None else t.split(meta["dn_num_split"], dim=2)[which]

    def outputs(which: int) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        lg, bx, cr, rf = part(logits, which), part(boxes, which), part(corners, which), part(refs, which)
        layers = [{"logits": lg[:, i + 1], "pred_boxes": bx[:, i + 1], "pred_corners": cr[:, i],
                   "ref_points": rf[:, i]} for i in range(num_layers)]
        for layer in layers[:-1]:  # the last layer teaches the others (GO-LSD)
            layer["teacher_corners"], layer["teacher_logits"] = cr[:, -1], lg[:, -1]
        return layers, {"logits": lg[:, 0], "pred_boxes": bx[:, 0]}

    layers, pre = outputs(1)
    result = {"layers": layers, "pre": pre,
              "enc": {"logits": out.enc_topk_logits, "pred_boxes": out.enc_topk_bboxes.clamp(0, 1)}}
    if meta is not None:
        result["dn_layers"], result["dn_pre"] = outputs(0)
        result["dn_meta"] = meta
    return result


def union_matching(matchings: list[Indices]) -> Indices:
    """GO-LSD's union of several matchings (DFINECriterion._get_go_indices): per image, every query matched in
    any of them, with the target it was matched to most often (ties: the lowest target index)."""
    result = []
    for per_image in zip(*matchings, strict=True):
        counts = Counter((int(q), int(t)) for src, tgt in per_image for q, t in zip(src.tolist(), tgt.tolist(),
                                                                                   strict=True))
        best: dict[int, tuple[int, int]] = {}
        for (q, t), n in counts.items():
            if q not in best or (n, -t) > (best[q][1], -best[q][0]):
                best[q] = (t, n)
        device = per_image[0][0].device
        queries = sorted(best)
        result.append((torch.tensor(queries, dtype=torch.long, device=device),
                       torch.tensor([best[q][0] for q in queries], dtype=torch.long, device=device)))
    return result


class DFineCriterion:
    """D-FINE's loss (see the module docstring) on HF `DFineModel` outputs; `config` is the model's
    `DFineConfig` (matcher costs, loss weights, bins, `reg_scale`, `up`)."""

    def __init__(self, config: Any) -> None:
        from transformers.loss.loss_d_fine import DFineLoss

        self.hf = DFineLoss(config)  # matcher, VFL, boxes, the unimodal distribution focal loss
        self.weights = dict(self.hf.weight_dict)
        self.bins = config.max_num_bins

    def __call__(self, out: Any, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        o = official_layout(out)
        device = o["layers"][-1]["logits"].device
        self.hf.to(device)
        num_boxes = max(sum(len(t["class_labels"]) for t in targets), 1)
        own = {name: self.hf.matcher(x, targets) for name, x in self.named_outputs(o)}
        go = union_matching(list(own.values()))
        num_go = max(sum(len(src) for src, _ in go), 1)
        losses: dict[str, Tensor] = {}
        fgl_cache: dict[str, Any] = {}
        balance = self.ddf_balance(o["layers"][-1]["logits"], go)
        for name, x in self.named_outputs(o):
            losses.update(self.vfl(x, targets, own[name], num_boxes, name))
            losses.update(self.boxes(x, targets, go, num_go, name))
            if "pred_corners" in x:
                losses.update(self.local(x, targets, go, num_go, name, fgl_cache, "matching", balance))
        if "dn_meta" in o:
            meta = o["dn_meta"]
            dn = self.hf.get_cdn_matched_indices(meta, targets)
            num_dn = num_boxes * meta["dn_num_group"]
            for i, x in enumerate([*o["dn_layers"], o["dn_pre"]]):
                name = "dn_pre" if i == len(o["dn_layers"]) else f"dn_layer{i}"
                losses.update(self.vfl(x, targets, dn, num_dn, name))
                losses.update(self.boxes(x, targets, dn, num_dn, name))
                if "pred_corners" in x:
                    losses.update(self.local(x, targets, dn, num_dn, name, fgl_cache, "dn", balance))
        return {k: torch.nan_to_num(v, nan=0.0) for k, v in losses.items()}  # as DFINECriterion does

    @staticmethod
    def named_outputs(o: dict[str, Any]) -> list[tuple[str, dict[str, Tensor]]]:
        return [*((f"layer{i}", x) for i, x in enumerate(o["layers"])), ("pre", o["pre"]), ("enc", o["enc"])]

    def weighted(self, terms: dict[str, Tensor], name: str) -> dict[str, Tensor]:
        return {f"{k}_{name}": v * self.weights[k] for k, v in terms.items()}

    def vfl(self, x: dict[str, Tensor], targets, indices: Indices, num: float, name: str) -> dict[str, Tensor]:
        return self.weighted(self.hf.loss_labels_vfl(x, targets, indices, num), name)

    def boxes(self, x: dict[str, Tensor], targets, indices: Indices, num: float, name: str) -> dict[str, Tensor]:
        return self.weighted(self.hf.loss_boxes(x, targets, indices, num), name)

    @staticmethod
    def ddf_balance(logits: Tensor, go: Indices) -> tuple[float, float]:
        """DDF's weights of its positive (matched) and negative means: the square roots of their counts among
        the matching queries (the official code's per-GPU batch scale cancels in the ratio)."""
        positives = 4 * sum(len(src) for src, _ in go)
        negatives = 4 * logits.shape[0] * logits.shape[1] - positives
        return positives**0.5, negatives**0.5

    def local(self, x: dict[str, Tensor], targets, indices: Indices, num: float, name: str,
              cache: dict[str, Any], group: str, balance: tuple[float, float]) -> dict[str, Tensor]:
        """Fine-grained localisation (FGL) and, with a teacher, decoupled distillation focal (DDF) terms."""
        from transformers.image_transforms import center_to_corners_format
        from transformers.loss.loss_d_fine import bbox2distance
        from transformers.loss.loss_for_object_detection import box_iou

        idx = self.hf._get_source_permutation_idx(indices)
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices, strict=True)])
        corners = x["pred_corners"][idx].reshape(-1, self.bins + 1)
        if group not in cache:  # every layer refines the same initial boxes: one set of targets per group
            with torch.no_grad():
                cache[group] = bbox2distance(x["ref_points"][idx].detach(), center_to_corners_format(target_boxes),
                                             self.bins, self.hf.reg_scale, self.hf.up.to(corners.device))
        target_corners, weight_right, weight_left = cache[group]
        ious = torch.diag(box_iou(center_to_corners_format(x["pred_boxes"][idx]),
                                  center_to_corners_format(target_boxes))[0]).detach()
        terms = {"loss_fgl": self.hf.unimodal_distribution_focal_loss(
            corners, target_corners, weight_right, weight_left, ious.repeat_interleave(4), avg_factor=num)}
        if "teacher_corners" in x:
            pred = x["pred_corners"].reshape(-1, self.bins + 1)
            teacher = x["teacher_corners"].reshape(-1, self.bins + 1).detach()
            weight = x["teacher_logits"].sigmoid().amax(-1).detach().clone()
            weight[idx] = ious.to(weight.dtype)
            mask = torch.zeros_like(weight, dtype=torch.bool)
            mask[idx] = True
            weight, mask = weight.repeat_interleave(4, dim=-1).reshape(-1), mask.repeat_interleave(4, -1).reshape(-1)
            kl = F.kl_div(F.log_softmax(pred / TEMPERATURE, dim=1), F.softmax(teacher / TEMPERATURE, dim=1),
                          reduction="none").sum(-1)
            kl = weight * TEMPERATURE**2 * kl
            w_pos, w_neg = balance
            pos = kl[mask].mean() if mask.any() else kl.sum() * 0
            neg = kl[~mask].mean() if (~mask).any() else kl.sum() * 0
            terms["loss_ddf"] = (pos * w_pos + neg * w_neg) / (w_pos + w_neg)
        return self.weighted(terms, name)
