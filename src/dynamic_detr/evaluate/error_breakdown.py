"""TIDE-style error breakdown (Bolya et al., ECCV 2020) computed with pycocotools' own COCOeval.

COCOeval at IoU 0.5 (all areas, 100 detections per image and class) matches detections to objects. Each detection
it leaves unmatched (crowd-matched ones are ignored, as COCOeval does) gets one error type, tested in TIDE's order,
from its best IoU with a non-crowd object of its own class (`iou_same`) and of another class (`iou_other`):

    localisation    0.1 <= iou_same <= 0.5
    classification  iou_other >= 0.5
    duplicate       iou_same >= 0.5 (the object was already matched by a higher-scoring detection)
    background      iou <= 0.1 with every object
    both            otherwise (0.1 < iou_other < 0.5: wrong class and badly placed)

An object that nothing matched and at which no localisation or classification error points is `missed`.

Each type's oracle fixes only that type, and COCOeval is re-run on the fixed detections (and ground truth):
localisation takes the object's box and classification the object's class, unless that object is already matched
(by a true positive or a higher-scoring fixed detection): then the detection is removed, as a duplicate would be;
duplicate, background and both are removed; missed objects leave the ground truth. dAP50 = AP50 fixed - AP50.
As in TIDE the oracles are applied one at a time, so the dAPs need not add up to 100 - AP50; `all` fixes every
type at once (then every detection left is a true positive and every object is found or gone: AP50 100). TIDE's
two "special" oracles: `false_positives` removes every unmatched detection (precision 1 at the same recall),
`false_negatives` every unmatched object (recall 1 at the same precision; a class that loses all its objects leaves
the mean, as COCOeval leaves out classes without objects).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .metrics import load_results

ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
SPECIAL_TYPES = ("false_positives", "false_negatives")
FG_IOU = 0.5
BG_IOU = 0.1
MAX_DETS = 100


@dataclass
class _Miss:
    """An unmatched detection: its error type and, for localisation / classification, the object it points at."""

    det: dict[str, Any]
    error: str
    target: int | None = None


def box_iou(dets: list[dict[str, Any]], gts: list[dict[str, Any]], crowd: bool = False) -> np.ndarray:
    """[D, G] IoU of COCO `bbox` (xywh) lists, pycocotools' (intersection over the detection's area for `crowd`)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    d = [[float(v) for v in x["bbox"]] for x in dets]
    g = [[float(v) for v in x["bbox"]] for x in gts]
    return np.asarray(mask_utils.iou(d, g, [int(crowd)] * len(g)), dtype=np.float64).reshape(len(d), len(g))


def error_breakdown(coco_eval: COCOeval) -> dict[str, Any]:
    """The breakdown of the evaluation `coco_eval` (after `evaluate()`): its ground truth, detections and images.

    Returns:
        `iou` (0.5), `background_iou` (0.1), `AP50` (percent, as `CocoEvaluator`'s), `errors` {type: {`count`,
        `AP50` with that type fixed, `dAP50`}} for `ERROR_TYPES`, `special` (the same for `SPECIAL_TYPES`) and
        `all` {`AP50` with every type fixed}.
    """
    gt, dt = coco_eval.cocoGt, coco_eval.cocoDt
    img_ids = list(coco_eval.params.imgIds)
    base_eval = _eval50(gt, dt, img_ids)
    base = _ap50(base_eval)
    kept, matched, unmatched_gt, misses = _classify(gt, dt, base_eval)
    targeted = {m.target for m in misses if m.error in ("localisation", "classification")}
    missed = unmatched_gt - targeted

    def fixed_ap(fixes: set[str], drop_all_fp: bool = False, removed_gt: set[int] | None = None) -> float:
        dets = _fixed_detections(gt, kept, matched, misses, fixes, drop_all_fp)
        truth = _without(gt, removed_gt or set())
        return _ap50(_eval50(truth, load_results(truth, dets), img_ids))

    counts = {t: sum(m.error == t for m in misses) for t in ERROR_TYPES}
    counts["missed"] = len(missed)
    errors = {}
    for t in ERROR_TYPES:
        ap = fixed_ap(set(), removed_gt=missed) if t == "missed" else fixed_ap({t})
        errors[t] = {"count": counts[t], "AP50": ap, "dAP50": ap - base}
    special = {}
    ap = fixed_ap(set(), drop_all_fp=True)
    special["false_positives"] = {"count": len(misses), "AP50": ap, "dAP50": ap - base}
    ap = fixed_ap(set(), removed_gt=unmatched_gt)
    special["false_negatives"] = {"count": len(unmatched_gt), "AP50": ap, "dAP50": ap - base}
    everything = fixed_ap(set(ERROR_TYPES) - {"missed"}, removed_gt=missed)
    return {"iou": FG_IOU, "background_iou": BG_IOU, "AP50": base, "errors": errors, "special": special,
            "all": {"AP50": everything, "dAP50": everything - base}}


def format_errors(breakdown: dict[str, Any]) -> str:
    """A small table of the breakdown: count and dAP50 per error type."""
    lines = [f"error breakdown (TIDE-style, IoU {breakdown['iou']}): AP50 {_fmt(breakdown['AP50'])}, "
             f"{_fmt(breakdown['all']['AP50'])} with every error fixed",
             f"{'error':<16}{'count':>8}{'dAP50':>8}"]
    for name, row in [*breakdown["errors"].items(), *breakdown["special"].items()]:
        lines.append(f"{name.replace('_', ' '):<16}{row['count']:>8}{_fmt(row['dAP50']):>8}")
    return "\n".join(lines)


def _classify(gt: COCO, dt: COCO, ev: COCOeval) -> tuple[list[dict], set[int], set[int], list[_Miss]]:
    """From COCOeval's matching: the detections it scored that are true positives or ignored (`kept`), the objects
    they matched, the objects left unmatched (non-crowd), and the unmatched detections with their error type."""
    kept: list[dict[str, Any]] = []
    matched: set[int] = set()
    unmatched_gt: set[int] = set()
    false_pos: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in ev.evalImgs:
        if e is None:
            continue
        for did, m, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], strict=True):
            det = dt.anns[did]
            if m > 0 or ignored:
                kept.append(det)
                if m > 0 and not ignored:
                    matched.add(int(m))
            else:
                false_pos[det["image_id"]].append(det)
        for gid, m, ignored in zip(e["gtIds"], e["gtMatches"][0], e["gtIgnore"], strict=True):
            if not ignored and m == 0:
                unmatched_gt.add(int(gid))
    cats = set(ev.params.catIds)
    misses: list[_Miss] = []
    for img_id, dets in false_pos.items():
        objs = [g for g in gt.imgToAnns.get(img_id, []) if not g.get("iscrowd") and g["category_id"] in cats]
        ious = box_iou(dets, objs)
        for i, det in enumerate(dets):
            misses.append(_error_type(det, objs, ious[i]))
    misses.sort(key=lambda m: -m.det["score"])  # fixes claim objects best score first (stable)
    return kept, matched, unmatched_gt, misses


def _error_type(det: dict[str, Any], objs: list[dict[str, Any]], ious: np.ndarray) -> _Miss:
    if not objs:
        return _Miss(det, "background")
    same = np.array([g["category_id"] == det["category_id"] for g in objs])
    iou_same = np.where(same, ious, -1.0)
    iou_other = np.where(same, -1.0, ious)
    j = int(iou_same.argmax())
    if BG_IOU <= iou_same[j] <= FG_IOU:
        return _Miss(det, "localisation", int(objs[j]["id"]))
    k = int(iou_other.argmax())
    if iou_other[k] >= FG_IOU:
        return _Miss(det, "classification", int(objs[k]["id"]))
    if iou_same[j] >= FG_IOU:
        return _Miss(det, "duplicate")
    if ious.max() <= BG_IOU:
        return _Miss(det, "background")
    return _Miss(det, "both")


def _fixed_detections(gt: COCO, kept: list[dict], matched: set[int], misses: list[_Miss], fixes: set[str],
                      drop_all_fp: bool) -> list[dict[str, Any]]:
    out = [_plain(d) for d in kept]
    if drop_all_fp:
        return out
    claimed = set(matched)
    for m in misses:
        if m.error not in fixes:
            out.append(_plain(m.det))
        elif m.error in ("localisation", "classification") and m.target not in claimed:
            claimed.add(m.target)
            obj = gt.anns[m.target]
            d = _plain(m.det)
            if m.error == "localisation":
                d["bbox"] = [float(v) for v in obj["bbox"]]
            else:
                d["category_id"] = int(obj["category_id"])
            out.append(d)
        # else removed: a duplicate, background or both error, or a fix whose object is already matched
    return out


def _plain(det: dict[str, Any]) -> dict[str, Any]:
    return {"image_id": det["image_id"], "category_id": det["category_id"], "bbox": list(det["bbox"]),
            "score": det["score"]}


def _without(gt: COCO, removed: set[int]) -> COCO:
    """`gt` without the annotations `removed` (a new COCO object; `gt` itself when nothing is removed)."""
    if not removed:
        return gt
    truth = COCO()
    truth.dataset = {**gt.dataset, "annotations": [a for a in gt.dataset["annotations"] if a["id"] not in removed]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return truth


def _eval50(gt: COCO, dt: COCO, img_ids: list[int]) -> COCOeval:
    """COCOeval at IoU 0.5 only, area `all`, 100 detections: a tenth of the full evaluation's matching work."""
    ev = COCOeval(gt, dt, "bbox")
    p = ev.params
    p.imgIds = list(img_ids)
    p.areaRng, p.areaRngLbl = [p.areaRng[p.areaRngLbl.index("all")]], ["all"]
    p.iouThrs = np.array([FG_IOU])
    p.maxDets = [MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev


def _ap50(ev: COCOeval) -> float:
    """AP50 in percent, as COCOeval's `summarize` computes it (classes without objects left out)."""
    p = ev.eval["precision"][0, :, :, 0, 0]
    p = p[p > -1]
    return float(p.mean() * 100) if p.size else math.nan


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}"
