"""COCO metrics of tiled inference (`eval --tile`): each image of a split at its original resolution through a
`TiledPredictor`, scored by the same evaluator as `eval` (`evaluate.metrics.CocoEvaluator`).

The eval loader resizes every image to the model's eval size, which is what tiling avoids, so this reads the
split's images one at a time, untransformed; only one image and its detections are held at a time. Images that
do not decode are left out of the scoring and named (as `evaluate.inference.evaluate_model` does)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..evaluate.inference import score_detections
from ..evaluate.metrics import to_coco_detections
from ..progress import progress
from .tiling import Detect

if TYPE_CHECKING:
    from ..data.coco import CocoDetection


def predict_split(detect: Detect, dataset: CocoDetection, desc: str | None = None
                  ) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """(COCO-format detections of every readable image, {image id: message} of the unreadable ones).
    `dataset` must have no transforms: `detect` gets the decoded images (uint8 [3, H, W])."""
    if dataset.transforms is not None:
        raise ValueError("predict_split needs the dataset's raw images (no transforms)")
    detections: list[dict[str, Any]] = []
    unreadable: dict[int, str] = {}
    done: set[int] = set()
    for index in progress(range(len(dataset)), desc or "", enabled=desc is not None, unit="img"):
        image, target = dataset[index]
        unreadable.update(dict(target.get("unreadable", ())))
        image_id = int(target["image_id"])
        if image_id in done:  # a stand-in for an unreadable image, already scored as itself
            continue
        done.add(image_id)
        result = detect([torch.Tensor.as_subclass(image, torch.Tensor)])[0]
        detections += to_coco_detections([result], [image_id])
    return detections, {iid: msg for iid, msg in unreadable.items() if iid not in done}


def evaluate_tiled(detect: Detect, dataset: CocoDetection, class_names: dict[int, str] | None = None,
                   keep: dict[str, Any] | None = None, desc: str | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(COCO metrics, detections) of `detect` over `dataset`'s raw images; `keep` receives `evaluator` (the
    `CocoEvaluator`, for the error analysis), as `evaluate_model`'s does."""
    detections, skipped = predict_split(detect, dataset, desc)
    return score_detections(dataset.coco_gt(), class_names, detections, skipped, keep), detections
