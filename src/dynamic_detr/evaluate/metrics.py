"""COCO bbox evaluation with pycocotools: AP, AP50, AP75, APs/m/l and per-class AP, in percent.

Detections are evaluated as given (COCO results format, the dataset's own ids): nothing is thresholded,
pycocotools itself keeps the 100 best per image. Undefined metrics (pycocotools' -1, e.g. APs when the
ground truth has no small object) are NaN in the headline keys and None in `per_class`.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""The first six entries of `COCOeval.stats`, in that order."""


class CocoEvaluator:
    """Collects detections and computes the standard COCO bbox metrics.

    Args:
        coco_gt: the ground truth; every one of its images is evaluated (an image without detections
            counts its objects as missed).
        class_names: category id -> name for `per_class`; default: the names in `coco_gt`.
    """

    def __init__(self, coco_gt: COCO, class_names: dict[int, str] | None = None) -> None:
        self.coco_gt = coco_gt
        self.cat_ids = sorted(coco_gt.getCatIds())
        self.img_ids = set(coco_gt.getImgIds())
        given = class_names or {}
        names = {c: str(given.get(c) or coco_gt.cats[c].get("name") or c) for c in self.cat_ids}
        counts = {n: list(names.values()).count(n) for n in names.values()}
        self.class_names = {c: n if counts[n] == 1 else f"{n} (id {c})" for c, n in names.items()}
        self.detections: list[dict[str, Any]] = []
        self.skipped: dict[int, str] = {}
        self.coco_eval: COCOeval | None = None
        """The last `summarize()`'s COCOeval (its ground truth, detections, images and `eval` arrays), for the
        error analysis (`evaluate/analysis.py`)."""

    def skip_images(self, reasons: dict[int, str]) -> None:
        """Leave these images out of the evaluation (their objects are neither found nor missed): images
        that could not be read. `reasons`: image id -> message naming the file, listed in the metrics."""
        unknown = sorted(set(reasons) - self.img_ids)
        if unknown:
            raise ValueError(f"cannot skip image_id {unknown[0]}, which is not in the ground truth")
        self.skipped.update(reasons)

    def update(self, detections: list[dict[str, Any]]) -> None:
        """Add detections `{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}`
        (absolute pixels of the original image). Raises ValueError for an image id the ground truth lacks."""
        for d in detections:
            if d["image_id"] not in self.img_ids:
                raise ValueError(f"detection for image_id {d['image_id']}, which is not in the ground truth")
            if len(d["bbox"]) != 4:
                raise ValueError(f"detection bbox must be [x, y, w, h], got {d['bbox']!r}")
            self.detections.append({"image_id": int(d["image_id"]), "category_id": int(d["category_id"]),
                                    "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])})

    def summarize(self) -> dict[str, Any]:
        """Run COCOeval (bbox) over all images but the skipped ones.

        Returns:
            `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl` (percent floats, NaN when undefined), `per_class`
            ({class name: AP percent over IoU 0.5:0.95, area all, 100 dets; None for a class without
            ground truth}), `summary_text` (pycocotools' 12-line summary), `num_detections`, `num_images`
            (images scored) and `skipped_images` (messages of the images left out, by image id).
        """
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            coco_dt = self._results()
            coco_eval = COCOeval(self.coco_gt, coco_dt, "bbox")
            coco_eval.params.imgIds = sorted(self.img_ids - set(self.skipped))
            coco_eval.evaluate()
            coco_eval.accumulate()
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            coco_eval.summarize()
        self.coco_eval = coco_eval
        metrics: dict[str, Any] = {name: _percent(coco_eval.stats[i]) for i, name in enumerate(AP_NAMES)}
        metrics["per_class"] = self._per_class(coco_eval)
        metrics["summary_text"] = text.getvalue().rstrip("\n")
        metrics["num_detections"] = len(self.detections)
        metrics["num_images"] = len(coco_eval.params.imgIds)
        metrics["skipped_images"] = [self.skipped[i] for i in sorted(self.skipped)]
        return metrics

    def _results(self) -> COCO:
        return load_results(self.coco_gt, self.detections)

    def _per_class(self, coco_eval: COCOeval) -> dict[str, float | None]:
        precision = coco_eval.eval["precision"]  # [T iou, R recall, K class, A area, M maxdets]
        area = coco_eval.params.areaRngLbl.index("all")
        max_dets = coco_eval.params.maxDets.index(100)
        out: dict[str, float | None] = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, area, max_dets]
            p = p[p > -1]
            out[self.class_names[cat_id]] = float(p.mean() * 100) if p.size else None
        return out

    @staticmethod
    def format_table(metrics: dict[str, Any]) -> str:
        """Same as the module-level `format_table`."""
        return format_table(metrics)


def load_results(coco_gt: COCO, detections: list[dict[str, Any]]) -> COCO:
    """COCO-format detections as a pycocotools results object (the dicts are copied: `loadRes` adds keys);
    `loadRes` rejects an empty list, so no detections give an empty results set over the same images and
    categories."""
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(d) for d in detections])
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


def format_table(metrics: dict[str, Any], columns: int = 3) -> str:
    """A readable table: the six headline APs, then per-class AP in `columns` name / AP column pairs, then the
    images left out of the scoring, if any (first 10)."""
    lines = ["  ".join(f"{k:>6}" for k in AP_NAMES), "  ".join(f"{_fmt(metrics[k]):>6}" for k in AP_NAMES)]
    per_class = list(metrics.get("per_class", {}).items())
    if per_class:
        width = max(len("class"), *(len(n) for n, _ in per_class))
        cols = min(columns, len(per_class))
        rows = math.ceil(len(per_class) / cols)
        cell = f"{{:<{width}}}  {{:>6}}"
        lines += ["", "per-class AP (IoU 0.50:0.95, all areas)",
                  "   ".join(cell.format("class", "AP") for _ in range(cols))]
        for r in range(rows):
            cells = [cell.format(n, _fmt(ap)) for n, ap in per_class[r::rows]]
            lines.append("   ".join(cells).rstrip())
    skipped = metrics.get("skipped_images") or []
    if skipped:
        scored = f"{metrics['num_images']} images scored; " if "num_images" in metrics else ""
        lines += ["", f"{scored}{len(skipped)} skipped (could not be read, not scored):"]
        lines += [f"  {m}" for m in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"  ... and {len(skipped) - 10} more")
    return "\n".join(lines)


def to_coco_detections(results: list[dict[str, torch.Tensor]], image_ids: list[int]) -> list[dict[str, Any]]:
    """Postprocessed predictions -> COCO results format, all detections kept.

    Args:
        results: per image, `boxes` [M, 4] xyxy in original-image pixels, `scores` [M], `labels` [M]
            (dataset category ids).
        image_ids: the dataset image id of each result.

    Returns:
        `{"image_id", "category_id", "bbox": [x, y, w, h] (2 decimals), "score"}` per detection; scores keep 4
        significant digits (not decimals) so that low-scoring detections still rank.
    """
    if len(results) != len(image_ids):
        raise ValueError(f"{len(results)} results for {len(image_ids)} image ids")
    out: list[dict[str, Any]] = []
    for r, image_id in zip(results, image_ids, strict=True):
        boxes = box_convert(torch.as_tensor(r["boxes"]).detach().float().cpu().reshape(-1, 4), "xyxy", "xywh")
        scores = torch.as_tensor(r["scores"]).detach().float().cpu().tolist()
        labels = torch.as_tensor(r["labels"]).detach().cpu().tolist()
        for box, score, label in zip(boxes.tolist(), scores, labels, strict=True):
            out.append({"image_id": int(image_id), "category_id": int(label),
                        "bbox": [round(v, 2) for v in box], "score": float(f"{score:.4g}")})
    return out


def _percent(stat: float) -> float:
    return float(stat) * 100 if stat > -1 else math.nan


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def metrics_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics file's content (`metrics.json` of a run, `eval --out`): AP..APl, per class, and the raw
    (non-EMA) weights' APs when the run evaluated both."""
    data: dict[str, Any] = {k: metrics[k] for k in AP_NAMES}
    data["per_class"] = metrics.get("per_class", {})
    if "raw" in metrics:
        data["raw"] = metrics["raw"]
    return data
