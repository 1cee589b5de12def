"""The compact records (numpy arrays, no Python object per image / annotation) serve exactly what the JSON says:
the same image, boxes, labels and ids as computed from the file directly, through pickling and forked workers,
and `coco_gt()` gives pycocotools' AP of the file itself, bit for bit."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from builders import ann, image
from dynamic_detr.data import CocoDetection
from dynamic_detr.data.collate import build_loader
from dynamic_detr.data.records import _ARRAYS

CATS = [{"id": 90, "name": "z"}, {"id": 3, "name": "c"}, {"id": 17, "name": "q"}]


def _mixed(coco_writer) -> Path:
    """Non-contiguous category ids, annotations out of image order, float boxes, a crowd one, int and float
    areas, an image without objects, portrait / landscape / square images, a large id; all records valid."""
    images = [image(90, w=60, h=40), image(5, w=30, h=50), image(17, w=40, h=40), image(2**40, w=33, h=21)]
    anns = [ann(7, 5, [1.1, 2.2, 10.37, 5.5], cat=3, area=40),
            ann(2, 90, [0.3, 0.7, 20.01, 30.9], cat=90, area=501.25),
            ann(300, 5, [3, 4, 5, 6], cat=17, iscrowd=1, area=30),
            ann(4, 90, [59.0, 39.0, 1.0, 1.0], cat=17, area=1),
            ann(11, 2**40, [0.1, 0.2, 0.3, 0.4], cat=3, area=0.12),
            ann(1, 5, [12.5, 0.0, 17.5, 49.99], cat=90, area=870.0)]
    return coco_writer(images=images, annotations=anns, categories=CATS)


def _reference(root: Path, split: str) -> list[tuple[int, np.ndarray, torch.Tensor, torch.Tensor, list[int]]]:
    """(image id, RGB pixels, boxes XYXY float32, labels, [h, w]) per image in file order, from the JSON
    directly, computed as the list-of-dicts implementation did (valid records only: no clipping)."""
    data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    label = {cid: k for k, cid in enumerate(sorted(c["id"] for c in data["categories"]))}
    out = []
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"] and not a.get("iscrowd")]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([label[a["category_id"]] for a in anns], dtype=torch.int64)
        with Image.open(root / split / img["file_name"]) as im:
            pixels = np.asarray(im.convert("RGB"))
        out.append((img["id"], pixels, boxes, labels, [img["height"], img["width"]]))
    return out


def _assert_same(ds: CocoDetection, expected) -> None:
    assert len(ds) == len(expected)
    assert ds.image_ids == [e[0] for e in expected]
    for i, (iid, pixels, boxes, labels, size) in enumerate(expected):
        img, t = ds[i]
        assert t["image_id"] == iid and isinstance(t["image_id"], int)
        assert np.array_equal(img.permute(1, 2, 0).numpy(), pixels)
        assert t["boxes"].dtype == torch.float32 and torch.equal(t["boxes"].as_subclass(torch.Tensor), boxes), iid
        assert t["labels"].dtype == torch.int64 and torch.equal(t["labels"], labels), iid
        assert t["orig_size"].tolist() == size


def test_samples_equal_the_json_hand_made(coco_writer) -> None:
    root = _mixed(coco_writer)
    ds = CocoDetection(root, "train")
    _assert_same(ds, _reference(root, "train"))
    assert ds.aspect_groups().tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("split", ["train", "val"])
def test_samples_equal_the_json_synthetic(synth_root: Path, split: str) -> None:
    ds = CocoDetection(synth_root, split)
    _assert_same(ds, _reference(synth_root, split))


def test_records_are_arrays_of_the_expected_size(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "train")
    r = ds.records
    data = json.loads((synth_root / "annotations" / "instances_train.json").read_text())
    n, m = len(data["images"]), len(data["annotations"])
    assert (len(r), r.num_annotations) == (n, m)
    for name in _ARRAYS:
        assert isinstance(getattr(r, name), np.ndarray) and getattr(r, name).dtype != object, name
    names = sum(len(img["file_name"].encode()) for img in data["images"])
    # ids / widths / heights, names + two offset arrays; per annotation id, label, 4 boxes, area (8 B), crowd (1 B)
    assert r.nbytes == 3 * 8 * n + names + 2 * 8 * (n + 1) + m * (8 + 8 + 32 + 8 + 1)
    # nothing per record is a Python object: the only containers are the categories, info, licenses, issues
    assert len(r.categories) < n
    assert not [k for k, v in vars(r).items() if isinstance(v, list | dict | tuple) and len(v) >= n]
    assert ds.records.annotations(0) == [
        {"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "bbox": [float(v) for v in
         a["bbox"]], "area": float(a["area"]), "iscrowd": 0}
        for a in data["annotations"] if a["image_id"] == data["images"][0]["id"]]


def test_ids_beyond_int64_are_kept_exact(coco_writer) -> None:
    big = 2**70
    root = coco_writer(images=[image(big), image(3)],
                       annotations=[ann(2**64, big, [1, 1, 4, 4]), ann(5, 3, [2, 2, 3, 3])])
    ds = CocoDetection(root, "train")
    assert ds.image_ids == [big, 3] and ds[0][1]["image_id"] == big
    gt = ds.coco_gt()
    assert sorted(gt.getImgIds()) == [3, big] and sorted(gt.getAnnIds()) == [5, 2**64]


def test_pickled_and_forked_workers_serve_the_same(coco_writer) -> None:
    root = _mixed(coco_writer)
    ds = CocoDetection(root, "train")
    expected = _reference(root, "train")
    _assert_same(pickle.loads(pickle.dumps(ds)), expected)  # spawn-started workers get a pickled copy
    loader = build_loader(ds, batch_size=2, train=False, num_workers=2, size_divisibility=1)
    targets = [t for b in loader for t in b.targets]
    assert [t["image_id"] for t in targets] == [e[0] for e in expected]
    for t, (_, _, boxes, labels, size) in zip(targets, expected, strict=True):
        h, w = size  # collate normalises boxes to cxcywh / (w, h) of the unpadded image
        xyxy = torch.cat([t["boxes"][:, :2] - t["boxes"][:, 2:] / 2, t["boxes"][:, :2] + t["boxes"][:, 2:] / 2], 1)
        assert torch.allclose(xyxy * torch.tensor([w, h, w, h]), boxes, atol=1e-4)
        assert torch.equal(t["labels"], labels)


# --------------------------------------------------------------------------- evaluation is exact
def _detections(gt_file: Path, seed: int = 0) -> list[dict]:
    """Jittered copies of every ground-truth box (some relabelled), plus false positives, with random scores."""
    data = json.loads(gt_file.read_text())
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in data["categories"]]
    dets = []
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.15, 4) * [w, h, w, h]
        cat = a["category_id"] if rng.random() > 0.15 else int(rng.choice(cats))
        dets.append({"image_id": a["image_id"], "category_id": cat, "score": float(rng.random()),
                     "bbox": [float(x + j[0]), float(y + j[1]), float(max(w + j[2], 0.5)), float(max(h + j[3], 0.5))]})
    for img in data["images"]:
        for _ in range(3):
            w, h = rng.uniform(2, img["width"] / 2), rng.uniform(2, img["height"] / 2)
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(cats)), "score": float(rng.random()),
                         "bbox": [float(rng.uniform(0, img["width"] - w)), float(rng.uniform(0, img["height"] - h)),
                                  float(w), float(h)]})
    return dets


def _evaluate(gt: COCO, dets: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats), e.eval["precision"]


@pytest.mark.parametrize("which", ["mixed", "synthetic"])
def test_coco_gt_gives_the_same_ap_as_the_file(coco_writer, synth_root: Path, which: str) -> None:
    root, split = (_mixed(coco_writer), "train") if which == "mixed" else (synth_root, "val")
    gt_file = root / "annotations" / f"instances_{split}.json"
    with contextlib.redirect_stdout(io.StringIO()):
        from_file = COCO(str(gt_file))
    ours = CocoDetection(root, split).coco_gt()
    assert sorted(ours.getImgIds()) == sorted(from_file.getImgIds())
    assert sorted(ours.getAnnIds()) == sorted(from_file.getAnnIds())
    dets = _detections(gt_file)
    stats_file, prec_file = _evaluate(from_file, dets)
    stats_ours, prec_ours = _evaluate(ours, dets)
    assert np.array_equal(stats_ours, stats_file), (stats_ours, stats_file)
    assert np.array_equal(prec_ours, prec_file)
    assert stats_file[0] > 0  # the detections do score: the comparison is not between two empty results
