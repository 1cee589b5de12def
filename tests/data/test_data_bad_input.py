"""Every bad-input case of docs/data.md: what stops (DatasetError), what is skipped (warning) and what
`data check` reports; messages name the file and the ids."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from PIL import Image

from builders import ann, image
from dynamic_detr.data import CocoDetection, DatasetWarning, check_dataset
from dynamic_detr.errors import DatasetError


def _ann_file(root: Path, split: str = "train") -> str:
    return str(root / "annotations" / f"instances_{split}.json")


def _load_quietly(root: Path) -> tuple[CocoDetection, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(root, "train")
    return ds, [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]


# --------------------------------------------------------------------------- structural: stop
def test_annotation_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="annotation file not found") as e:
        CocoDetection(tmp_path, "train")
    assert _ann_file(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_annotation_file_not_json(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    Path(_ann_file(tmp_path)).write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"not valid JSON \(.* line 1 column 13\)") as e:
        CocoDetection(tmp_path, "train")
    assert str(e.value).startswith(_ann_file(tmp_path))


def test_annotation_file_nested_too_deeply(tmp_path: Path) -> None:
    """Valid JSON nested deeper than the parser's recursion limit: one error naming the file (was a
    RecursionError traceback)."""
    (tmp_path / "annotations").mkdir()
    Path(_ann_file(tmp_path)).write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DatasetError, match="JSON nested too deeply") as e:
        CocoDetection(tmp_path, "train")
    assert str(e.value).startswith(_ann_file(tmp_path))


@pytest.mark.parametrize("content,match", [
    ({"images": [], "annotations": []}, "missing required key 'categories'"),
    ({"annotations": []}, "missing required keys 'images', 'categories'"),
    ({"images": {}, "annotations": [], "categories": []}, "'images' must be a list"),
    ([1, 2], "expected a JSON object"),
    ({"images": [], "annotations": [], "categories": []}, "no usable categories"),
])
def test_annotation_file_structure(tmp_path: Path, content, match: str) -> None:
    (tmp_path / "annotations").mkdir()
    Path(_ann_file(tmp_path)).write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=match) as e:
        CocoDetection(tmp_path, "train")
    assert str(e.value).startswith(_ann_file(tmp_path))
    with pytest.raises(DatasetError, match=match):
        check_dataset(tmp_path, "train")  # nothing to lint: the checker stops too


@pytest.mark.parametrize("kind", ["image", "annotation", "category"])
def test_duplicate_ids_stop(coco_writer, kind: str) -> None:
    images = [image(1), image(2)]
    anns = [ann(1, 1, [1, 1, 4, 4]), ann(2, 2, [1, 1, 4, 4])]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    if kind == "image":
        images[1] = image(1, name="other.png")
    elif kind == "annotation":
        anns[1]["id"] = 1
    else:
        cats[1]["id"] = 1
    root = coco_writer(images=images, annotations=anns, categories=cats)
    msg = f"{_ann_file(root)}: {kind} 1: duplicate {kind} id"
    with pytest.raises(DatasetError) as e:
        CocoDetection(root, "train")
    assert str(e.value) == msg
    report = check_dataset(root, "train")
    assert msg in report.errors and not report.ok


def test_unknown_category_stops(coco_writer) -> None:
    root = coco_writer(images=[image(4)], annotations=[ann(17, 4, [1, 1, 4, 4], cat=5)])
    with pytest.raises(DatasetError) as e:
        CocoDetection(root, "train")
    assert str(e.value) == f"{_ann_file(root)}: annotation 17 (image 4): unknown category 5"
    assert str(e.value) in check_dataset(root, "train").errors


@pytest.mark.parametrize("record,match", [
    ({"file_name": "a.png", "width": 4, "height": 4}, r"images\[0\]: missing or non-integer 'id'"),
    ({"id": 3, "width": 4, "height": 4}, "image 3: missing or non-string 'file_name'"),
    ({"id": 3, "file_name": "a.png", "width": 0, "height": 4},
     r"image 3: 'width' and 'height' must be integers from 1 to 1048576, got 0 x 4"),
    ({"id": 3, "file_name": "a.png", "width": 10**400, "height": 4},  # no float holds it: was an OverflowError
     r"image 3: 'width' and 'height' must be integers from 1 to 1048576, got 10{36}\.\.\. x 4"),
])
def test_malformed_image_record_stops(coco_writer, record, match: str) -> None:
    root = coco_writer(images=[record], annotations=[], write_images=False)
    with pytest.raises(DatasetError, match=match):
        CocoDetection(root, "train")


def test_image_folder_or_all_files_missing_stop(coco_writer) -> None:
    root = coco_writer(images=[image(1), image(2)], annotations=[], write_images=False)
    with pytest.raises(DatasetError, match=r"none of the 2 images of instances_train.json is there"):
        CocoDetection(root, "train")
    (root / "train").rmdir()
    with pytest.raises(DatasetError, match="image folder not found") as e:
        CocoDetection(root, "train")
    assert str(root / "train") in str(e.value)


# --------------------------------------------------------------------------- per record: skip and count
@pytest.mark.parametrize("bbox,problem", [
    ([1, 1, 0, 5], "box has non-positive width"),
    ([1, 1, 5, -2], "box has non-positive height"),
    ([1, math.nan, 5, 5], "box has NaN, infinite or out-of-range values"),
    ([1, 1, math.inf, 5], "box has NaN, infinite or out-of-range values"),
    ([1, 1, 10**400, 5], "box has NaN, infinite or out-of-range values"),  # was an OverflowError traceback
    ([1, 1, 5], "box must be a list [x, y, width, height]"),
    (["1", 1, 5, 5], "box has non-numeric values"),
    ([50, 1, 5, 5], "box [50, 1, 5, 5] lies outside the 40x30 image"),
])
def test_bad_box_dropped(coco_writer, bbox, problem: str) -> None:
    root = coco_writer(images=[image(4)], annotations=[ann(17, 4, bbox), ann(18, 4, [2, 2, 6, 6])])
    msg = f"{_ann_file(root)}: annotation 17 (image 4): {problem}; dropped"
    ds, warned = _load_quietly(root)
    assert ds[0][1]["boxes"].tolist() == [[2.0, 2.0, 8.0, 8.0]]  # the good box survives
    assert len(warned) == 1 and msg in warned[0] and "1 annotations with a bad box" in warned[0]
    assert msg in check_dataset(root, "train").errors


def test_box_partly_outside_clipped_with_warning(coco_writer) -> None:
    root = coco_writer(images=[image(4)],
                       annotations=[ann(17, 4, [-5, 10, 20, 30]), ann(18, 4, [0, 0, 40.5, 30])])
    ds, warned = _load_quietly(root)
    assert ds[0][1]["boxes"].tolist() == [[0.0, 10.0, 15.0, 30.0], [0.0, 0.0, 40.0, 30.0]]
    msg = f"{_ann_file(root)}: annotation 17 (image 4): box [-5, 10, 20, 30] extends 10.0 px outside"
    assert len(warned) == 1 and msg in warned[0] and "1 boxes clipped" in warned[0]  # 0.5 px: silent
    report = check_dataset(root, "train")
    assert report.ok and len(report.warnings) == 1 and report.warnings[0].startswith(msg)


def test_annotation_of_unknown_image_dropped(coco_writer) -> None:
    root = coco_writer(images=[image(4)], annotations=[ann(17, 99, [1, 1, 4, 4]), ann(18, 4, [1, 1, 4, 4])])
    ds, warned = _load_quietly(root)
    assert len(ds) == 1 and len(ds[0][1]["boxes"]) == 1
    msg = f"{_ann_file(root)}: annotation 17: refers to unknown image 99; dropped"
    assert len(warned) == 1 and msg in warned[0]
    assert check_dataset(root, "train").errors == [msg]


@pytest.mark.parametrize("name,reason", [
    ("../outside.png", "escapes the image folder ('..')"),
    ("sub/../../outside.png", "escapes the image folder ('..')"),
    ("/etc/passwd", "is an absolute path"),
    ("C:\\data\\x.png", "is an absolute path"),
])
def test_file_name_escaping_folder_refused(coco_writer, name: str, reason: str) -> None:
    root = coco_writer(images=[image(1), image(2, name=name)], annotations=[ann(5, 2, [1, 1, 4, 4])])
    ds, warned = _load_quietly(root)
    assert ds.image_ids == [1] and ds.coco_gt().getAnnIds() == []
    msg = f"{_ann_file(root)}: image 2: file_name '{name}' {reason}; image refused"
    assert len(warned) == 1 and msg in warned[0]
    assert check_dataset(root, "train").errors == [msg]  # its annotation is not reported again


def test_missing_image_file_dropped(coco_writer) -> None:
    root = coco_writer(images=[image(1), image(2)], annotations=[ann(5, 2, [1, 1, 4, 4])])
    (root / "train" / "0002.png").unlink()
    ds, warned = _load_quietly(root)
    assert ds.image_ids == [1] and ds.coco_gt().getImgIds() == [1]
    msg = f"{root / 'train' / '0002.png'}: image file not found (image 2)"
    assert len(warned) == 1 and msg in warned[0]
    assert check_dataset(root, "train").errors == [msg]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage,reason", [
    (_truncate, "truncated file"),
    (lambda p: p.write_text("hello, not an image"), "not an image file, or an unsupported format"),
    (lambda p: p.write_bytes(b""), "not an image file, or an unsupported format"),
])
def test_undecodable_image_substituted_and_reported(coco_writer, damage, reason: str) -> None:
    root = coco_writer(images=[image(1, w=64, h=48), image(2, w=64, h=48)],
                       annotations=[ann(5, 2, [1, 1, 4, 4])])
    path = root / "train" / "0001.png"
    Image.effect_noise((64, 48), 60).convert("RGB").save(path)  # incompressible: truncation hits pixels
    damage(path)
    ds, warned = _load_quietly(root)
    assert len(ds) == 2 and warned == []  # decoding is lazy: construction does not notice
    with pytest.warns(DatasetWarning, match="replaced by another sample") as w:
        _, t = ds[0]
    assert t["image_id"] == 2  # the next readable sample
    assert str(w[0].message).startswith(f"{path}: cannot decode image ({reason})")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[0]  # warned once; further failures are only counted
    assert ds.load_failures["unreadable"] == 2
    report = check_dataset(root, "train")
    assert report.errors == [f"{path}: cannot decode image ({reason}) (image 1)"]


def test_stand_in_keeps_its_own_target_and_names_the_failed_image(coco_writer) -> None:
    """Training may serve another sample for an undecodable one, but with that sample's own target; the
    failure rides along in `unreadable` so that evaluation can drop the stand-in (tests/data/test_data_collate)."""
    root = coco_writer(images=[image(1), image(2), image(3)],
                       annotations=[ann(5, 2, [1, 1, 4, 4]), ann(6, 3, [2, 2, 8, 8])])
    bad = root / "train" / "0001.png"
    bad.write_text("hello, not an image")
    ds, _ = _load_quietly(root)
    with pytest.warns(DatasetWarning, match="replaced by another sample"):
        _, stand_in = ds[0]
    _, own = ds[1]
    assert stand_in["image_id"] == own["image_id"] == 2
    assert stand_in["boxes"].tolist() == own["boxes"].tolist() == [[1.0, 1.0, 5.0, 5.0]]
    assert stand_in["labels"].tolist() == own["labels"].tolist() == [0]
    assert stand_in["unreadable"] == [
        (1, f"{bad}: cannot decode image (not an image file, or an unsupported format)")]
    assert "unreadable" not in own


def test_extreme_aspect_ratio_image_refused(coco_writer) -> None:
    """A 1 x 1000 image would resize to a 1 px sliver (0 px before the resize was clamped): refused at load
    like a missing file, with its annotations; 100:1 (the limit) is kept."""
    root = coco_writer(images=[image(1, w=1, h=1000), image(2), image(3, w=100, h=1)],
                       annotations=[ann(5, 1, [0, 0, 1, 10]), ann(6, 2, [1, 1, 4, 4])])
    ds, warned = _load_quietly(root)
    assert ds.image_ids == [2, 3]
    assert ds.coco_gt().getImgIds() == [2, 3] and ds.coco_gt().getAnnIds() == [6]
    msg = (f"{root / 'train' / '0001.png'}: a 1x1000 image: aspect ratio 1000:1 exceeds the 100:1 limit "
           "(image 1); image refused")
    assert len(warned) == 1 and msg in warned[0] and "1 images with an extreme aspect ratio" in warned[0]
    assert check_dataset(root, "train").errors == [msg]


def test_image_decoding_to_an_extreme_aspect_ratio_is_substituted(coco_writer) -> None:
    """The JSON says 40x30 but the file is 1x1000: treated like an undecodable file when read."""
    root = coco_writer(images=[image(1), image(2)], annotations=[ann(5, 2, [1, 1, 4, 4])])
    path = root / "train" / "0001.png"
    Image.new("RGB", (1, 1000)).save(path)
    ds, _ = _load_quietly(root)
    problem = f"{path}: a 1x1000 image: aspect ratio 1000:1 exceeds the 100:1 limit (image 1)"
    with pytest.warns(DatasetWarning, match="replaced by another sample") as w:
        _, t = ds[0]
    assert str(w[0].message).startswith(problem)
    assert t["image_id"] == 2 and t["unreadable"] == [(1, problem)]
    assert f"{problem}; not usable" in check_dataset(root, "train").errors


def test_all_images_undecodable_stops(coco_writer) -> None:
    root = coco_writer(images=[image(1)], annotations=[])
    (root / "train" / "0001.png").write_text("junk")
    ds, _ = _load_quietly(root)
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match="none of the 1 images"):
        ds[0]


def test_size_mismatch_is_a_warning(coco_writer) -> None:
    root = coco_writer(images=[image(1, w=40, h=30)], annotations=[ann(5, 1, [20, 5, 15, 20])])
    Image.new("RGB", (30, 30)).save(root / "train" / "0001.png")
    report = check_dataset(root, "train")
    assert report.ok
    assert report.warnings == [f"{root / 'train' / '0001.png'}: image is 30x30 but instances_train.json says "
                               "40x30 (image 1); boxes are clamped to the file"]
    ds, _ = _load_quietly(root)
    with pytest.warns(DatasetWarning, match="image is 30x30"):
        img, t = ds[0]
    assert img.shape == (3, 30, 30) and t["boxes"].tolist() == [[20.0, 5.0, 30.0, 25.0]]
    assert t["orig_size"].tolist() == [30, 30]


def test_check_collects_several_structural_errors(coco_writer) -> None:
    """Not strict: the checker lists every problem instead of stopping at the first."""
    root = coco_writer(images=[image(1), image(1, name="dup.png"), image(2)], annotations=[
        ann(1, 1, [1, 1, 4, 4], cat=7), ann(1, 2, [1, 1, 4, 4]), ann(3, 2, [1, 1, 0, 4])])
    errors = check_dataset(root, "train").errors
    f = _ann_file(root)
    assert errors == [f"{f}: image 1: duplicate image id", f"{f}: annotation 1 (image 1): unknown category 7",
                      f"{f}: annotation 1: duplicate annotation id",
                      f"{f}: annotation 3 (image 2): box has non-positive width; dropped"]


def test_clean_dataset_has_no_warning(coco_writer) -> None:
    root = coco_writer(images=[image(1)], annotations=[ann(1, 1, [0, 0, 40, 30])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(root, "train")
        ds[0]
    assert check_dataset(root, "train").warnings == []


def test_exif_rotated_size_mismatch_named_in_check(coco_writer) -> None:
    """The JSON gives the stored (sideways) size of a file with EXIF 'rotate 90': the warning says so."""
    root = coco_writer(images=[image(1, w=30, h=40, name="0001.jpg")], annotations=[ann(1, 1, [1, 1, 4, 4])],
                       write_images=False)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 40)).save(root / "train" / "0001.jpg", exif=exif)  # upright: 40 wide, 30 high
    report = check_dataset(root, "train")
    assert report.exif_rotated == 1 and report.image_modes == {"RGB": 1}
    assert report.warnings == [f"{root / 'train' / '0001.jpg'}: image is 40x30 after EXIF rotation but "
                               "instances_train.json says 30x40 (image 1); boxes are clamped to the file"]
