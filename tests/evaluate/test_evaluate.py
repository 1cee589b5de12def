"""CocoEvaluator on a hand-made in-memory COCO ground truth; evaluate_model with an undecodable val image."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from pycocotools.coco import COCO

from builders import shapes_dataset, tiny_config
from dynamic_detr.data import CocoDetection, DatasetWarning, build_loader, build_transforms
from dynamic_detr.data.sampler import SeededDataset
from dynamic_detr.evaluate.inference import evaluate_model
from dynamic_detr.evaluate.metrics import CocoEvaluator, format_table, to_coco_detections

# category 9 ("bird") has no ground truth; ids are not contiguous on purpose
GT_BOXES = {  # image id -> [(category id, [x, y, w, h])]
    1: [(1, [10, 10, 20, 20]), (5, [60, 60, 50, 50])],
    2: [(5, [30, 20, 120, 120]), (1, [150, 150, 40, 30])],
    3: [],
}


def _coco_gt() -> COCO:
    objects = [(img, c, b) for img, objs in GT_BOXES.items() for c, b in objs]
    anns = [{"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3],
             "iscrowd": 0} for i, (img, cat, box) in enumerate(objects)]
    gt = COCO()
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in GT_BOXES]
    gt.dataset = {"images": images,
                  "categories": [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"},
                                 {"id": 9, "name": "bird"}],
                  "annotations": anns}
    gt.createIndex()
    return gt


def _perfect(score: float = 0.9) -> list[dict]:
    return [{"image_id": img, "category_id": c, "bbox": list(b), "score": score}
            for img, objs in GT_BOXES.items() for c, b in objs]


@pytest.fixture
def gt() -> COCO:
    return _coco_gt()


def test_perfect_detections_give_100(gt: COCO) -> None:
    ev = CocoEvaluator(gt)
    ev.update(_perfect())
    m = ev.summarize()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert m[key] == pytest.approx(100.0), key
        assert isinstance(m[key], float)
    assert m["per_class"] == {"cat": pytest.approx(100.0), "dog": pytest.approx(100.0), "bird": None}
    assert len(m["summary_text"].splitlines()) == 12
    assert m["summary_text"].splitlines()[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")


def test_shifted_boxes_give_lower_ap(gt: COCO) -> None:
    dets = _perfect()
    for d in dets:
        x, y, w, h = d["bbox"]
        d["bbox"] = [x + 0.15 * w, y, w, h]  # IoU ~0.74: counts at 0.5 / 0.7, not at 0.75+
    ev = CocoEvaluator(gt)
    ev.update(dets)
    m = ev.summarize()
    assert m["AP50"] == pytest.approx(100.0)
    assert m["AP75"] == pytest.approx(0.0)
    assert 0 < m["AP"] < 100


def test_empty_detections_give_zero(gt: COCO, capsys: pytest.CaptureFixture[str]) -> None:
    ev = CocoEvaluator(gt)
    ev.update([])
    m = ev.summarize()
    assert m["AP"] == 0.0 and m["AP50"] == 0.0
    assert m["per_class"] == {"cat": 0.0, "dog": 0.0, "bird": None}
    assert len(m["summary_text"].splitlines()) == 12
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced


def test_low_scores_are_not_thresholded(gt: COCO) -> None:
    dets = _perfect(score=0.001)
    ev = CocoEvaluator(gt)
    ev.update(dets)
    assert ev.summarize()["AP"] == pytest.approx(100.0)


def test_undefined_area_metric_is_nan() -> None:
    gt = COCO()
    gt.dataset = {"images": [{"id": 7, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "a"}],
                  "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 50],
                                   "area": 2500, "iscrowd": 0}]}
    gt.createIndex()
    ev = CocoEvaluator(gt)
    ev.update([{"image_id": 7, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.5}])
    m = ev.summarize()
    assert m["APm"] == pytest.approx(100.0)
    assert math.isnan(m["APs"]) and math.isnan(m["APl"])


def test_class_names_override_and_unknown_image(gt: COCO) -> None:
    ev = CocoEvaluator(gt, class_names={1: "kitty", 5: "doggo", 9: "birdie"})
    with pytest.raises(ValueError, match="image_id 42"):
        ev.update([{"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    ev.update(_perfect())
    m = ev.summarize()
    assert set(m["per_class"]) == {"kitty", "doggo", "birdie"}
    table = format_table(m)
    assert "kitty" in table and "birdie" in table and "n/a" in table and "100.0" in table
    assert CocoEvaluator.format_table(m) == table


def test_to_coco_detections_converts_and_keeps_everything() -> None:
    results = [{"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.123456, 1.0, 2.5, 3.0]]),
                "scores": torch.tensor([0.987654321, 0.00001234]), "labels": torch.tensor([5, 1])},
               {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64)}]
    dets = to_coco_detections(results, [3, 4])
    assert dets == [{"image_id": 3, "category_id": 5, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9877},
                    {"image_id": 3, "category_id": 1, "bbox": [0.12, 1.0, 2.38, 2.0], "score": 1.234e-05}]
    assert all(type(v) is float for d in dets for v in [*d["bbox"], d["score"]])
    assert all(type(d["category_id"]) is int and type(d["image_id"]) is int for d in dets)
    with pytest.raises(ValueError, match="2 results for 1 image ids"):
        to_coco_detections(results, [3])


def test_round_trip_through_to_coco_detections(gt: COCO) -> None:
    results, ids = [], []
    for img, objs in GT_BOXES.items():
        xyxy = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in objs]).reshape(-1, 4).float()
        results.append({"boxes": xyxy, "scores": torch.full((len(objs),), 0.5),
                        "labels": torch.tensor([c for c, _ in objs], dtype=torch.int64)})
        ids.append(img)
    ev = CocoEvaluator(gt)
    ev.update(to_coco_detections(results, ids))
    assert ev.summarize()["AP"] == pytest.approx(100.0)


def test_skipped_image_is_left_out_of_the_scoring(gt: COCO) -> None:
    """Image 2 could not be read: its objects are neither found nor missed, and the table says so."""
    dets = [d for d in _perfect() if d["image_id"] != 2]
    reference = CocoEvaluator(gt)
    reference.update(dets)
    assert reference.summarize()["AP50"] < 100  # scored, image 2's objects count as misses
    ev = CocoEvaluator(gt)
    ev.update(dets)
    ev.skip_images({2: "val/2.png: cannot decode image (truncated file)"})
    m = ev.summarize()
    assert m["AP"] == pytest.approx(100.0) and m["num_images"] == 2
    assert m["skipped_images"] == ["val/2.png: cannot decode image (truncated file)"]
    table = format_table(m)
    assert "2 images scored; 1 skipped" in table and "val/2.png: cannot decode image" in table
    with pytest.raises(ValueError, match="image_id 42"):
        ev.skip_images({42: "nope"})


class _WholeImageModel(torch.nn.Module):
    """A stand-in detector: one detection per image, its whole frame, category 3, score 0.5."""

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"n": torch.tensor(float(images.shape[0]))}

    def postprocess(self, outputs: dict, orig_sizes: torch.Tensor, top_k: int = 100) -> list[dict]:
        return [{"boxes": torch.tensor([[0.0, 0.0, float(w), float(h)]]), "scores": torch.tensor([0.5]),
                 "labels": torch.tensor([3])} for h, w in orig_sizes.tolist()]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_undecodable_val_image_is_skipped_not_scored_twice(tmp_path, capsys, batch_size: int) -> None:
    """The dataset once served the next image in place of an undecodable one, with that image's id, so
    evaluation scored the next image twice and counted the broken one's objects as misses."""
    root = shapes_dataset(tmp_path / "data", {"val": 4})
    bad = root / "val" / "0001.png"  # image id 2
    bad.write_bytes(b"not an image")
    ds = CocoDetection(root, "val")
    transforms = build_transforms(tiny_config(px=96, run=True).data, train=False)
    loader = build_loader(SeededDataset(ds, transforms), batch_size, train=False, size_divisibility=32)
    with pytest.warns(DatasetWarning, match="cannot decode image"):
        metrics, dets = evaluate_model(_WholeImageModel(), loader, ds.coco_gt(), None, torch.device("cpu"))
    assert Counter(d["image_id"] for d in dets) == {1: 1, 3: 1, 4: 1}  # each readable image once
    assert metrics is not None and metrics["num_images"] == 3
    (skipped,) = metrics["skipped_images"]
    assert skipped.startswith(f"{bad}: cannot decode image")
    assert str(bad) in capsys.readouterr().err and str(bad) in format_table(metrics)
