"""Error analysis of one COCO evaluation, written to a folder (the run's `plots/`, or `eval --plots DIR`).

Everything comes from the `COCOeval` behind the metrics (`CocoEvaluator.coco_eval`): its ground truth, its
detections, its images (unreadable ones left out) and its `eval['precision']` array.

    pr_curves.png / .json                precision-recall per class and for all classes, IoU 0.5 and 0.75
    confusion_matrix.png / .csv / .json  classes plus background (missed objects, false positives)
    errors.png / .json                   TIDE-style error breakdown (`error_breakdown.py`)
    val_gt_vs_pred.png                   ground truth (left) beside predictions (right) on a few val images
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from ..fileio import atomic_write_json, atomic_write_text
from .error_breakdown import box_iou, error_breakdown
from .metrics import CocoEvaluator

PR_IOUS = (0.5, 0.75)
SCORE_THRESHOLD = 0.3
"""Detections below this score are left out of the confusion matrix and the drawn predictions."""
MATCH_IOU = 0.5
BACKGROUND = "background"


def pr_curves(coco_eval: COCOeval, class_names: dict[int, str]) -> dict[str, Any]:
    """Precision at COCO's 101 recall points, read from `coco_eval.eval['precision']` [T, R, K, A, M] (area `all`,
    100 detections) at IoU 0.5 and 0.75: no second computation.

    Returns:
        `recall` [101], `precision` {"0.50": {"all": [101], class name: [101], ...}, "0.75": ...} and `ap`
        (percent, the mean of each curve) with the same keys. A class without ground truth (pycocotools' -1) is
        left out; "all" is the mean over the other classes at each recall point, so its AP is the metrics' AP50 /
        AP75 (every class with ground truth has all 101 points).
    """
    p = coco_eval.params
    precision = coco_eval.eval["precision"]
    area, max_dets = p.areaRngLbl.index("all"), p.maxDets.index(100)
    out: dict[str, Any] = {"recall": [float(r) for r in p.recThrs], "precision": {}, "ap": {}}
    for iou in PR_IOUS:
        (t,) = np.flatnonzero(np.isclose(p.iouThrs, iou))
        block = precision[t, :, :, area, max_dets]  # [R, K]
        valid = block[0] > -1
        curves: dict[str, list[float]] = {}
        if valid.any():
            curves["all"] = block[:, valid].mean(axis=1).tolist()
        for k, cat_id in enumerate(p.catIds):
            if valid[k]:
                curves[class_names.get(cat_id, str(cat_id))] = block[:, k].tolist()
        key = f"{iou:.2f}"
        out["precision"][key] = curves
        out["ap"][key] = {name: float(np.mean(c) * 100) for name, c in curves.items()}
    return out


@dataclass
class ConfusionMatrix:
    """`counts[i, j]`: objects of class `names[i]` matched by a detection of class `names[j]`; the last row
    (background) counts false positives by predicted class, the last column (background) missed objects."""

    names: list[str]
    counts: np.ndarray
    score_threshold: float
    iou_threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"rows": "ground truth", "columns": "predicted", "names": self.names,
                "counts": self.counts.tolist(), "score_threshold": self.score_threshold,
                "iou_threshold": self.iou_threshold}

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["ground truth \\ predicted", *self.names])
        for name, row in zip(self.names, self.counts.tolist(), strict=True):
            writer.writerow([name, *row])
        return buf.getvalue()


def confusion_matrix(coco_eval: COCOeval, class_names: dict[int, str], score_threshold: float = SCORE_THRESHOLD,
                     iou_threshold: float = MATCH_IOU) -> ConfusionMatrix:
    """Detections scoring >= `score_threshold` matched to objects at IoU >= `iou_threshold`, greedily per image,
    best score first and each to its best-IoU free object: first to objects of their own class, then the ones left
    to objects of any class (so a confusion never takes an object that its own class found). Unmatched objects are
    missed (background column); unmatched detections are false positives (background row), except those on a crowd
    region (intersection over the detection >= `iou_threshold`), which COCO ignores too."""
    gt, dt = coco_eval.cocoGt, coco_eval.cocoDt
    cat_ids = list(coco_eval.params.catIds)
    index = {c: i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    counts = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    for img_id in coco_eval.params.imgIds:
        anns = [g for g in gt.imgToAnns.get(img_id, []) if g["category_id"] in index]
        objs = [g for g in anns if not g.get("iscrowd")]
        crowd = [g for g in anns if g.get("iscrowd")]
        dets = [d for d in dt.imgToAnns.get(img_id, []) if d["score"] >= score_threshold and d["category_id"] in index]
        dets.sort(key=lambda d: -d["score"])
        ious = box_iou(dets, objs)
        obj_of = [-1] * len(dets)
        taken = [False] * len(objs)
        for own_class in (True, False):
            for i, d in enumerate(dets):
                if obj_of[i] >= 0:
                    continue
                best = -1
                for j, g in enumerate(objs):
                    if taken[j] or ious[i, j] < iou_threshold:
                        continue
                    if own_class and g["category_id"] != d["category_id"]:
                        continue
                    if best < 0 or ious[i, j] > ious[i, best]:
                        best = j
                if best >= 0:
                    obj_of[i], taken[best] = best, True
        on_crowd = box_iou(dets, crowd, crowd=True).max(axis=1, initial=0.0) >= iou_threshold
        for i, d in enumerate(dets):
            if obj_of[i] >= 0:
                counts[index[objs[obj_of[i]]["category_id"]], index[d["category_id"]]] += 1
            elif not on_crowd[i]:
                counts[bg, index[d["category_id"]]] += 1
        for j, g in enumerate(objs):
            if not taken[j]:
                counts[index[g["category_id"]], bg] += 1
    names = [class_names.get(c, str(c)) for c in cat_ids] + [BACKGROUND]
    return ConfusionMatrix(names, counts, score_threshold, iou_threshold)


def write_analysis(out_dir: Path, evaluator: CocoEvaluator, images: Iterable[tuple[int, torch.Tensor]] = (),
                   score_threshold: float = SCORE_THRESHOLD) -> dict[str, Any]:
    """Write the analysis files (module docstring) of a summarized `evaluator` to `out_dir`.

    Args:
        images: (image id, uint8 [3, H, W] image as decoded) pairs to draw ground truth beside predictions on;
            images left out of the evaluation are skipped, and no `val_gt_vs_pred.png` is written without any.
        score_threshold: of the confusion matrix and the drawn predictions.

    Returns:
        `ap` (the PR curves' APs), `confusion_matrix` (`ConfusionMatrix.to_dict()`), `errors` (`error_breakdown`).
    """
    from ..visualize import gt_beside_predictions, save_pair_grid
    from . import analysis_plots

    coco_eval = evaluator.coco_eval
    if coco_eval is None:
        raise ValueError("write_analysis needs an evaluator that has been summarized")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = evaluator.class_names
    pr = pr_curves(coco_eval, names)
    atomic_write_json(out_dir / "pr_curves.json", pr)
    analysis_plots.plot_pr_curves(out_dir / "pr_curves.png", pr)
    cm = confusion_matrix(coco_eval, names, score_threshold)
    atomic_write_json(out_dir / "confusion_matrix.json", cm.to_dict())
    atomic_write_text(out_dir / "confusion_matrix.csv", cm.to_csv())
    analysis_plots.plot_confusion_matrix(out_dir / "confusion_matrix.png", cm)
    errors = error_breakdown(coco_eval)
    atomic_write_json(out_dir / "errors.json", errors)
    analysis_plots.plot_errors(out_dir / "errors.png", errors)
    scored = set(coco_eval.params.imgIds)
    pairs = []
    for image_id, image in images:
        if image_id not in scored:
            continue
        gts = [g for g in coco_eval.cocoGt.imgToAnns.get(image_id, []) if g["category_id"] in names]
        dets = list(coco_eval.cocoDt.imgToAnns.get(image_id, []))
        pairs.append(gt_beside_predictions(image, gts, dets, names, score_threshold))
    if pairs:
        save_pair_grid(pairs, out_dir / "val_gt_vs_pred.png",
                       caption=f"left: ground truth   right: predictions (score >= {score_threshold:g})")
    return {"ap": pr["ap"], "confusion_matrix": cm.to_dict(), "errors": errors}
