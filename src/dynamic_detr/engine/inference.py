"""Running a model over a data loader: postprocessed detections, gathered across ranks, and COCO metrics."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from . import distributed as dist_utils
from .evaluate import CocoEvaluator, to_coco_detections


def autocast(device: torch.device, amp: str):
    """`torch.autocast` for "bf16" (CPU or CUDA) and "fp16" (CUDA); a no-op for "none"."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_loader(model: torch.nn.Module, loader, device: torch.device, amp: str = "none",
                   top_k: int = 100) -> list[dict[str, Any]]:
    """COCO-format detections (dataset image / category ids) for every image this rank sees, unthresholded."""
    model.eval()
    detections: list[dict[str, Any]] = []
    for batch in loader:
        batch = batch.to(device)
        with autocast(device, amp):
            outputs = model(batch.images, batch.masks)
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
        orig = torch.stack([t["orig_size"] for t in batch.targets]).to(device)
        results = _unwrap(model).postprocess(outputs, orig, top_k=top_k)
        results = [{k: v.cpu() for k, v in r.items()} for r in results]
        detections += to_coco_detections(results, [int(t["image_id"]) for t in batch.targets])
    return detections


def evaluate_model(model: torch.nn.Module, loader, coco_gt, class_names: dict[int, str] | None,
                   device: torch.device, amp: str = "none") -> tuple[dict[str, Any] | None, list[dict]]:
    """COCO metrics and all ranks' detections on rank 0; (None, []) on the other ranks."""
    dets = predict_loader(model, loader, device, amp)
    gathered = dist_utils.all_gather_objects(dets)
    if dist_utils.is_dist() and torch.distributed.get_rank() != 0:
        return None, []
    merged = [d for part in gathered for d in part]  # the eval sampler shards without padding: no repeats
    evaluator = CocoEvaluator(coco_gt, class_names)
    evaluator.update(merged)
    return evaluator.summarize(), merged


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying model of a DDP / AveragedModel wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model
