"""Denoising queries (DN-DETR, Li et al. 2022; DINO), training only; not in the paper (`decoder.dn_queries`).

Each ground-truth box, with its centre moved by up to lambda * w / 2 (resp. h) and its sides scaled by up to
1 +- lambda, becomes an extra query whose content is the embedding of its label (flipped to a random class
with probability `label_noise`); the decoder learns to reconstruct the true box and class. For an RoI decoder
a noised box is literally a proposal, so these queries train every stage's refinement from the first step.
Groups of such queries are appended to the matching queries; `group_attention_mask` lets no group see another
(the matching queries never see a denoising query, so inference is unchanged).
"""

from __future__ import annotations

import torch
from torch import Tensor


def noised_queries(targets: list[dict[str, Tensor]], max_queries: int, num_classes: int, box_noise: float,
                   label_noise: float) -> dict[str, Tensor] | None:
    """Noised copies of the targets, in groups of `max_gt` slots (the most targets of an image in the batch).

    Args:
        targets: B dicts, `boxes` [G, 4] cxcywh normalised, `labels` [G].
        max_queries: at most this many denoising queries per image (groups = max_queries // max_gt, >= 1).
    Returns:
        None when the batch has no target; else {"boxes": [B, D, 4] cxcywh normalised, "labels": [B, D]
        (noised), "target": [B, D] index of the target each query reconstructs (-1 = padding slot),
        "groups": number of groups, "group_size": max_gt}.
    """
    max_gt = max(len(t["labels"]) for t in targets)
    if max_gt == 0:
        return None
    device = targets[0]["boxes"].device
    groups = max(1, max_queries // max_gt)
    b, d = len(targets), groups * max_gt
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1], device=device).repeat(b, d, 1)
    labels = torch.zeros(b, d, dtype=torch.long, device=device)
    target = torch.full((b, d), -1, dtype=torch.long, device=device)
    for i, t in enumerate(targets):
        g = len(t["labels"])
        if g == 0:
            continue
        slots = (torch.arange(groups, device=device)[:, None] * max_gt + torch.arange(g, device=device)).flatten()
        boxes[i, slots] = t["boxes"].float().repeat(groups, 1)
        labels[i, slots] = t["labels"].repeat(groups)
        target[i, slots] = torch.arange(g, device=device).repeat(groups)
    real = target >= 0
    # box noise (DN-DETR): centre shift up to lambda * size / 2, size factor in [1 - lambda, 1 + lambda]
    wh = boxes[..., 2:]
    shift = (torch.rand_like(wh) * 2 - 1) * box_noise * wh / 2
    scale = 1 + (torch.rand_like(wh) * 2 - 1) * box_noise
    noised = torch.cat([boxes[..., :2] + shift, wh * scale], dim=-1)
    noised = torch.cat([noised[..., :2].clamp(0, 1), noised[..., 2:].clamp(1e-3, 1)], dim=-1)
    boxes = torch.where(real[..., None], noised, boxes)
    flip = (torch.rand(b, d, device=device) < label_noise) & real
    labels = torch.where(flip, torch.randint_like(labels, num_classes), labels)
    return {"boxes": boxes, "labels": labels, "target": target, "groups": groups, "group_size": max_gt}


def group_attention_mask(sizes: list[int], num_heads: int, key_valid: Tensor | None = None) -> Tensor:
    """Self-attention mask for query groups laid out one after another (`sizes` of each group): a query may
    attend only to its own group (True = blocked).

    key_valid: optional [B, L] bool; invalid keys (denoising padding slots) are blocked too, except for a
    query attending to itself. Returns [L, L] without `key_valid`, else [B * num_heads, L, L].
    """
    total = sum(sizes)
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    blocked = group[:, None] != group[None, :]
    if key_valid is None:
        return blocked
    blocked = blocked.to(key_valid.device)[None] | ~key_valid[:, None, :]  # [B, L, L]
    blocked &= ~torch.eye(total, dtype=torch.bool, device=key_valid.device)[None]
    return blocked.repeat_interleave(num_heads, dim=0)
