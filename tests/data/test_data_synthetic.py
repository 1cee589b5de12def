"""The synthetic generator: determinism, statistics, COCO validity."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from dynamic_detr.data.synthetic import CLASSES, MIN_SIDE, generate, render


@pytest.fixture(scope="module")
def rendered() -> list[tuple[np.ndarray, list[dict]]]:
    """60 default-size train images, rendered in memory."""
    return [(np.asarray(img), objs) for img, objs in (render(0, "train", i) for i in range(60))]


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, train=3, val=2, image_size=96, seed=5)
    generate(b, train=3, val=2, image_size=96, seed=5)
    generate(c, train=3, val=2, image_size=96, seed=6)
    for split in ("train", "val"):
        ja = (a / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja == (b / "annotations" / f"instances_{split}.json").read_bytes()
        assert ja != (c / "annotations" / f"instances_{split}.json").read_bytes()
        for png in sorted((a / split).glob("*.png")):
            assert png.read_bytes() == (b / split / png.name).read_bytes()


def test_each_image_reproducible_alone(synth_root: Path) -> None:
    data = json.loads((synth_root / "annotations" / "instances_train.json").read_text())
    info = data["images"][4]
    img, objs = render(0, "train", 4, 320)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(synth_root / "train" / info["file_name"])))
    served = [{k: a[k] for k in ("category_id", "bbox", "area")} for a in data["annotations"]
              if a["image_id"] == info["id"]]
    assert served == objs
    assert (img.width, img.height) == (info["width"], info["height"])


def test_statistics_at_default_size(rendered) -> None:
    objs = [o for _, os_ in rendered for o in os_]
    classes = {o["category_id"] for o in objs}
    assert classes == set(range(1, len(CLASSES) + 1)) and len(CLASSES) >= 6
    small = np.mean([o["area"] < 32**2 for o in objs])
    assert small >= 0.40, f"only {small:.0%} small objects"
    assert np.mean([o["area"] >= 64**2 for o in objs]) > 0.05  # and not only small ones
    counts = [len(os_) for _, os_ in rendered]
    assert max(counts) <= 8 and np.mean(counts) >= 3.5 and np.mean([c >= 2 for c in counts]) >= 0.9
    sides = np.array([o["bbox"][2:] for o in objs])
    assert sides.min() >= MIN_SIDE
    assert sides.max() <= 0.45 * 320 + 2
    assert sides.max() >= 0.3 * 320  # the size range is used
    for arr, os_ in rendered:
        h, w = arr.shape[:2]
        assert max(h, w) == 320 and min(h, w) >= 0.75 * 320
        for o in os_:
            x, y, bw, bh = o["bbox"]
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            assert 0 < o["area"] <= bw * bh


def test_colour_does_not_give_away_class(rendered) -> None:
    """Luma at box centres (inside every filled class) spans dark and bright for each class, and the class
    means stay close to the overall mean."""
    luma: dict[int, list[float]] = {}
    for arr, objs in rendered:
        for o in objs:
            if CLASSES[o["category_id"] - 1] == "ring":
                continue  # the centre of a ring is background
            x, y, w, h = o["bbox"]
            px = arr[y + h // 2, x + w // 2].astype(float)
            luma.setdefault(o["category_id"], []).append(px @ [0.299, 0.587, 0.114])
    overall = np.mean([v for vs in luma.values() for v in vs])
    for cid, values in luma.items():
        assert min(values) < 90 and max(values) > 160, CLASSES[cid - 1]
        assert abs(np.mean(values) - overall) < 35, CLASSES[cid - 1]


def test_pycocotools_loads_output(synth_root: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(synth_root / "annotations" / "instances_val.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) >= 8
    for a in coco.loadAnns(coco.getAnnIds()):
        assert a["iscrowd"] == 0 and len(a["bbox"]) == 4 and a["area"] > 0
    data = json.loads((synth_root / "annotations" / "instances_val.json").read_text())
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    assert all((synth_root / "val" / img["file_name"]).is_file() for img in data["images"])


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, train=1, val=1, image_size=16)
    with pytest.raises(ValueError, match=">= 0"):
        generate(tmp_path, train=-1, val=1)
