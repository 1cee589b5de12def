"""Error analysis on a hand-built case: PR curves = COCOeval's APs, exact confusion counts, TIDE-style oracles."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from dynamic_detr.evaluate.analysis import confusion_matrix, pr_curves, write_analysis
from dynamic_detr.evaluate.error_breakdown import ERROR_TYPES, error_breakdown, format_errors
from dynamic_detr.evaluate.metrics import CocoEvaluator

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
GT = {  # annotation id -> (image id, category id, [x, y, w, h])
    1: (1, 1, [10, 10, 40, 40]),    # found by d1 (IoU 0.67: a hit at 0.5, not at 0.75), duplicated by d3
    2: (1, 2, [100, 100, 50, 50]),  # the dog that d2 calls a cat
    3: (2, 2, [120, 30, 40, 40]),   # only a badly placed dog (d6) and a badly placed cat (d8) near it
    4: (2, 1, [10, 100, 40, 40]),   # missed: nothing near it
}
DETS = [  # (name, image id, category id, box, score)
    ("d1", 1, 1, [18, 10, 40, 40], 0.9),    # correct
    ("d3", 1, 1, [12, 10, 40, 40], 0.85),   # duplicate of object 1 (IoU 0.90, but d1 scored higher)
    ("d2", 1, 1, [100, 100, 50, 50], 0.8),  # wrong class (object 2 is a dog)
    ("d4", 2, 2, [150, 150, 30, 30], 0.7),  # background
    ("d6", 2, 2, [140, 30, 40, 40], 0.6),   # localisation: IoU 0.33 with object 3
    ("d8", 2, 1, [145, 30, 40, 40], 0.4),   # both: a cat at IoU 0.23 with the dog, object 3
    ("d7", 1, 2, [160, 10, 20, 20], 0.05),  # background, below the confusion matrix's threshold
]


def _gt(cats: list[dict] = CATS) -> COCO:
    keep = {c["id"] for c in cats}
    anns = [{"id": i, "image_id": img, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (img, c, b) in GT.items() if c in keep]
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in (1, 2)],
                  "categories": cats, "annotations": anns}
    gt.createIndex()
    return gt


def _dets(cats: set[int] = frozenset({1, 2})) -> list[dict]:
    return [{"image_id": img, "category_id": c, "bbox": list(b), "score": s}
            for _, img, c, b, s in DETS if c in cats]


def _evaluate(gt: COCO, dets: list[dict]) -> tuple[CocoEvaluator, dict]:
    ev = CocoEvaluator(gt)
    ev.update(dets)
    return ev, ev.summarize()


@pytest.fixture
def evaluated() -> tuple[CocoEvaluator, dict]:
    return _evaluate(_gt(), _dets())


def test_pr_curve_area_is_the_evaluators_ap(evaluated) -> None:
    """The mean of each curve over the 101 recall points is COCOeval's AP50 / AP75: for all classes, and for a
    class (evaluated alone, which COCO's per-class evaluation is)."""
    ev, metrics = evaluated
    pr = pr_curves(ev.coco_eval, ev.class_names)
    assert len(pr["recall"]) == 101 and pr["recall"][0] == 0 and pr["recall"][-1] == 1
    for key, metric in (("0.50", "AP50"), ("0.75", "AP75")):
        curves = pr["precision"][key]
        assert set(curves) == {"all", "cat", "dog"}
        assert all(len(c) == 101 and min(c) >= 0 for c in curves.values())
        assert np.mean(curves["all"]) * 100 == pytest.approx(metrics[metric], abs=1e-9)
        assert pr["ap"][key]["all"] == pytest.approx(metrics[metric], abs=1e-9)
    _, cat_only = _evaluate(_gt([CATS[0]]), _dets({1}))
    assert np.mean(pr["precision"]["0.50"]["cat"]) * 100 == pytest.approx(cat_only["AP50"], abs=1e-9)
    assert np.mean(pr["precision"]["0.75"]["cat"]) * 100 == pytest.approx(cat_only["AP75"], abs=1e-9)
    assert 0 < cat_only["AP75"] < cat_only["AP50"] < 100  # d1 is a hit at 0.5 only: the curves differ


def test_class_without_ground_truth_is_left_out_of_the_curves() -> None:
    cats = [*CATS, {"id": 9, "name": "bird"}]
    ev, metrics = _evaluate(_gt(cats), _dets())
    curves = pr_curves(ev.coco_eval, ev.class_names)["precision"]["0.50"]
    assert "bird" not in curves
    assert np.mean(curves["all"]) * 100 == pytest.approx(metrics["AP50"], abs=1e-9)


def test_confusion_matrix_counts(evaluated) -> None:
    """Score >= 0.3 (d7 out), IoU >= 0.5: d1 correct; d2 a cat on a dog; d3 (duplicate), d4 (background), d6
    (IoU 0.33) and d8 (IoU 0.23) false positives; objects 3 and 4 missed."""
    ev, _ = evaluated
    cm = confusion_matrix(ev.coco_eval, ev.class_names, score_threshold=0.3)
    assert cm.names == ["cat", "dog", "background"]
    assert cm.counts.tolist() == [[1, 0, 1],   # cat objects: 1 found as cat, 1 missed
                                  [1, 0, 1],   # dog objects: 1 taken for a cat, 1 missed
                                  [2, 2, 0]]   # false positives: cats d3, d8; dogs d4, d6
    assert confusion_matrix(ev.coco_eval, ev.class_names, score_threshold=0.0).counts[2].tolist() == [2, 3, 0]
    assert confusion_matrix(ev.coco_eval, ev.class_names, score_threshold=0.95).counts.tolist() == [
        [0, 0, 2], [0, 0, 2], [0, 0, 0]]
    rows = list(csv.reader(io.StringIO(cm.to_csv())))
    assert rows[0] == ["ground truth \\ predicted", "cat", "dog", "background"]
    assert rows[3] == ["background", "2", "2", "0"]
    assert cm.to_dict()["counts"] == cm.counts.tolist() and cm.to_dict()["score_threshold"] == 0.3


def test_confusion_matrix_prefers_the_own_class_and_ignores_crowds() -> None:
    """A higher-scoring dog on a cat does not take the cat that a cat detection found; a detection on a crowd
    region is neither a hit nor a false positive."""
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 200, "height": 200}], "categories": CATS,
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50],
                                   "area": 2500, "iscrowd": 0},
                                  {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 100, 80, 80],
                                   "area": 6400, "iscrowd": 1}]}
    gt.createIndex()
    ev, _ = _evaluate(gt, [{"image_id": 1, "category_id": 2, "bbox": [10, 10, 50, 50], "score": 0.9},
                           {"image_id": 1, "category_id": 1, "bbox": [12, 10, 50, 50], "score": 0.5},
                           {"image_id": 1, "category_id": 2, "bbox": [110, 110, 30, 30], "score": 0.8}])
    assert confusion_matrix(ev.coco_eval, ev.class_names).counts.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_error_breakdown(evaluated) -> None:
    ev, metrics = evaluated
    b = error_breakdown(ev.coco_eval)
    assert b["AP50"] == pytest.approx(metrics["AP50"], abs=1e-9)
    counts = {k: v["count"] for k, v in b["errors"].items()}
    assert counts == {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1, "background": 2,
                      "missed": 1}
    for name, row in [*b["errors"].items(), *b["special"].items()]:
        assert row["dAP50"] >= -1e-9, name
        assert row["AP50"] == pytest.approx(b["AP50"] + row["dAP50"])
    assert b["all"]["AP50"] == pytest.approx(100.0)
    # d2 relabelled dog: a dog found first, as the cat d1 is; removing d3 / d4 / d7 / d8 moves nothing up
    assert b["errors"]["classification"]["dAP50"] == pytest.approx(b["AP50"])
    for name in ("duplicate", "background", "both"):
        assert b["errors"][name]["dAP50"] == pytest.approx(0.0), name
    assert b["errors"]["localisation"]["dAP50"] > 0
    assert b["errors"]["missed"]["dAP50"] == pytest.approx(50.0 - b["AP50"])  # cats: AP50 100 without object 4
    assert b["special"]["false_positives"]["count"] == 6 and b["special"]["false_negatives"]["count"] == 3
    table = format_errors(b)
    assert "classification" in table and "false negatives" in table and "100.0 with every error fixed" in table


def test_error_breakdown_fixes_to_100_when_boxes_are_only_badly_placed() -> None:
    """Every object found only at IoU 0.3: localisation fixed = everything fixed = AP50 100."""
    dets = [{"image_id": img, "category_id": c, "bbox": [b[0] + b[2] * 0.5, b[1], b[2], b[3]], "score": 0.5}
            for img, c, b in GT.values()]
    ev, metrics = _evaluate(_gt(), dets)
    b = error_breakdown(ev.coco_eval)
    assert metrics["AP50"] == 0 and b["AP50"] == 0
    assert b["errors"]["localisation"] == {"count": 4, "AP50": pytest.approx(100.0), "dAP50": pytest.approx(100.0)}
    assert all(b["errors"][t]["count"] == 0 for t in ERROR_TYPES if t != "localisation")


def test_write_analysis_files_open(evaluated, tmp_path) -> None:
    ev, _ = evaluated
    images = [(1, torch.full((3, 200, 200), 90, dtype=torch.uint8)), (2, torch.zeros(3, 200, 240, dtype=torch.uint8))]
    summary = write_analysis(tmp_path / "plots", ev, images)
    out = tmp_path / "plots"
    for name in ("pr_curves.png", "confusion_matrix.png", "errors.png", "val_gt_vs_pred.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100, name
    cm = json.loads((out / "confusion_matrix.json").read_text())
    assert cm["counts"] == [[1, 0, 1], [1, 0, 1], [2, 2, 0]] and cm["names"][-1] == "background"
    assert (out / "confusion_matrix.csv").read_text().startswith("ground truth \\ predicted,cat,dog,background")
    errors = json.loads((out / "errors.json").read_text())
    assert errors["all"]["AP50"] == pytest.approx(100.0) and set(errors["errors"]) == set(ERROR_TYPES)
    pr = json.loads((out / "pr_curves.json").read_text())
    assert set(pr["precision"]) == {"0.50", "0.75"} and summary["ap"] == pr["ap"]


def test_write_analysis_without_detections_or_images(tmp_path) -> None:
    ev, metrics = _evaluate(_gt(), [])
    summary = write_analysis(tmp_path, ev)
    assert summary["confusion_matrix"]["counts"] == [[0, 0, 2], [0, 0, 2], [0, 0, 0]]
    assert summary["ap"]["0.50"]["all"] == 0 == metrics["AP50"]
    assert summary["errors"]["errors"]["missed"]["count"] == 4
    assert not (tmp_path / "val_gt_vs_pred.png").exists()
    for name in ("pr_curves.png", "confusion_matrix.png", "errors.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()
    assert math.isnan(summary["errors"]["all"]["AP50"])  # every object gone: nothing left to score
    assert json.loads((tmp_path / "errors.json").read_text())["all"]["AP50"] is None


def test_write_analysis_needs_a_summarized_evaluator(tmp_path) -> None:
    with pytest.raises(ValueError, match="summarized"):
        write_analysis(tmp_path, CocoEvaluator(_gt()))
