"""`dynamic-detr data synth | check` through the real entry point, and the check report's statistics."""

from __future__ import annotations

import json
from pathlib import Path

from builders import ann, image
from dynamic_detr.cli.main import main
from dynamic_detr.data import check_dataset


def test_synth_then_check(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shapes"
    assert main(["data", "synth", "--out", str(out), "--train", "6", "--val", "3", "--image-size", "128",
                 "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "6 classes" in printed and "train: 6 images" in printed and "val: 3 images" in printed
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["instances_train.json",
                                                                         "instances_val.json"]
    assert len(list((out / "train").glob("*.png"))) == 6
    assert json.loads((out / "annotations" / "instances_val.json").read_text())["info"]["seed"] == 3

    assert main(["data", "check", "--data", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "instances_train.json: 6 images" in printed and "instances_val.json: 3 images" in printed
    assert "per class: circle" in printed and "sizes (COCO area): small" in printed
    assert printed.rstrip().endswith("OK")
    assert main(["data", "check", "--data", str(out), "--split", "val", "--headers-only"]) == 0
    assert "instances_train.json" not in capsys.readouterr().out


def test_check_broken_dataset_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("not json")
    assert main(["data", "check", "--data", str(tmp_path), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'annotations' / 'instances_val.json'}: not valid JSON")
    assert main(["data", "check", "--data", str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "check", "--data", str(empty)]) == 2
    assert "no instances_<split>.json" in capsys.readouterr().err


def test_check_lists_errors_and_exits_1(coco_writer, capsys) -> None:
    root = coco_writer(images=[image(1), image(2)], annotations=[ann(4, 1, [1, 1, -3, 2])])
    (root / "train" / "0002.png").write_bytes(b"\x89PNG broken")
    assert main(["data", "check", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    ann_file = root / "annotations" / "instances_train.json"
    assert f"error: {ann_file}: annotation 4 (image 1): box has non-positive width; dropped" in out
    assert f"error: {root / 'train' / '0002.png'}: cannot decode image" in out
    assert out.rstrip().endswith("FAILED: errors found (see above)")


def test_synth_bad_arguments(tmp_path: Path, capsys) -> None:
    assert main(["data", "synth", "--out", str(tmp_path), "--image-size", "8"]) == 2
    assert capsys.readouterr().err.strip() == "error: --image-size must be >= 32, got 8"


def test_report_statistics(coco_writer) -> None:
    cats = [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}, {"id": 9, "name": "unused"}]
    root = coco_writer(images=[image(1, w=200, h=150), image(2), image(3)], categories=cats, annotations=[
        ann(1, 1, [0, 0, 10, 10], cat=1, area=100.0),  # small
        ann(2, 1, [0, 0, 50, 50], cat=2, area=2500.0),  # medium
        ann(3, 1, [0, 0, 150, 100], cat=2, area=15000.0, iscrowd=1),  # large, crowd
        ann(4, 2, [0, 0, 5, 5], cat=2, area=25.0),  # small
    ])
    r = check_dataset(root, "train", progress=False)
    assert r.ok and (r.num_images, r.num_objects, r.num_crowd, r.num_empty_images) == (3, 4, 1, 1)
    assert r.per_class == {"a": 1, "b": 3, "unused": 0}
    assert r.size_share == {"small": 0.5, "medium": 0.25, "large": 0.25}
    assert r.image_modes == {"RGB": 3} and r.exif_rotated == 0
    assert r.warnings == [f"{root / 'annotations' / 'instances_train.json'}: category 9 'unused' has no "
                          "annotations"]
    assert "3 images, 4 objects (1 crowd), 3 classes, 1 images without objects" in r.summary()


def test_check_prints_a_lone_surrogate_file_name_escaped(coco_writer, capsys) -> None:
    """A JSON `file_name` may hold a lone surrogate (`"\\ud800"`), which stdout cannot encode: printing the
    finding crashed with UnicodeEncodeError; it is printed with a backslash escape instead."""
    from PIL import Image

    root = coco_writer(images=[image(1), image(2, name="bad\ud800.png")], annotations=[], write_images=False)
    Image.new("RGB", (40, 30)).save(root / "train" / "0001.png")  # the other is missing: an error naming it
    assert main(["data", "check", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "bad\\ud800.png" in out and "\ud800" not in out
    assert out.rstrip().endswith("FAILED: errors found (see above)")
