"""Datasets as they come: YOLO, Pascal VOC, a Roboflow COCO export and COCO at any path are read (and converted)
to the same images, boxes and class names as the COCO set they were written from, through the same validation;
their own errors name the file and line."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from formats_helpers import write_roboflow, write_voc, write_yolo
from PIL import Image

from dynamic_detr.cli.main import main
from dynamic_detr.config import DataConfig
from dynamic_detr.data import CocoDetection, DatasetWarning, check_dataset
from dynamic_detr.data.layout import find_splits, resolve_split, split_source
from dynamic_detr.data.records import Records, load_records
from dynamic_detr.errors import ConfigError, DatasetError


def _content(records: Records) -> dict[str, tuple]:
    """file_name (without the `<split>_` prefix the VOC writer adds) -> (width, height, sorted (class name, crowd,
    box xywh rounded to 1e-4 px))."""
    names = [c["name"] for c in records.categories]
    out = {}
    for i in range(len(records)):
        rows = records.ann_slice(i)
        rows_of = zip(records.ann_labels[rows], records.ann_crowd[rows], records.ann_boxes[rows], strict=True)
        objs = sorted((names[lab], bool(crowd), tuple(np.round(box, 4).tolist())) for lab, crowd, box in rows_of)
        name = records.file_name(i).removeprefix("train_").removeprefix("val_")
        out[name] = (int(records.widths[i]), int(records.heights[i]), objs)
    return out


def _same(a: Records, b: Records) -> None:
    ca, cb = _content(a), _content(b)
    assert ca.keys() == cb.keys()
    for name in ca:
        wa, ha, oa = ca[name]
        wb, hb, ob = cb[name]
        assert (wa, ha) == (wb, hb), name
        assert [o[:2] for o in oa] == [o[:2] for o in ob], name
        np.testing.assert_allclose([o[2] for o in oa], [o[2] for o in ob], atol=1e-3, err_msg=name)


@pytest.fixture(scope="module")
def formats(tmp_path_factory, small_coco: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("formats")
    return {"coco": small_coco, "yolo": write_yolo(small_coco, base / "yolo"),
            "voc": write_voc(small_coco, base / "voc"), "roboflow": write_roboflow(small_coco, base / "rf")}


@pytest.fixture(scope="session")
def small_coco(tmp_path_factory) -> Path:
    """8 train / 3 val synthetic images at 128 px (the round trips below compare every box)."""
    from dynamic_detr.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth_formats")
    generate(root, train=8, val=3, image_size=128, seed=4)
    return root


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["yolo", "voc", "roboflow"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip_to_the_coco_set(formats, fmt: str, split: str) -> None:
    ours = CocoDetection(formats[fmt], split)
    coco = CocoDetection(formats["coco"], split)
    assert ours.source.format == ("coco" if fmt == "roboflow" else fmt)
    _same(ours.records, coco.records)
    assert sorted(ours.class_names) == sorted(coco.class_names)  # VOC: sorted names (below: a labels.txt)
    img, target = ours[0]
    assert tuple(img.shape[-2:]) == tuple(target["orig_size"].tolist())


def test_yolo_and_roboflow_keep_the_class_order(formats) -> None:
    coco = CocoDetection(formats["coco"], "train")
    yolo = CocoDetection(formats["yolo"], "train")
    assert yolo.class_names == coco.class_names and yolo.category_ids == [1, 2, 3, 4, 5, 6]
    rf = CocoDetection(formats["roboflow"], "val")  # the placeholder category 0 is dropped, 'valid' found
    assert rf.class_names == coco.class_names and rf.category_ids == coco.category_ids
    assert rf.source.name == "valid" and "Roboflow" in rf.source.describe()


def test_voc_class_list_file_sets_the_order(tmp_path: Path, small_coco: Path) -> None:
    voc = write_voc(small_coco, tmp_path / "voc", labels_file=True)
    assert CocoDetection(voc, "train").class_names == CocoDetection(small_coco, "train").class_names


def test_voc_standard_classes_keep_their_order(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax>"
                              "<ymax>4</ymax></bndbox></object>")
    ds = CocoDetection(root, "train")
    assert len(ds.class_names) == 20 and ds.class_names[11] == "dog" and ds.category_ids[11] == 12


def test_find_splits_per_layout(formats) -> None:
    assert find_splits(formats["yolo"]) == ["train", "val"]
    assert find_splits(formats["voc"]) == ["train", "val"]
    assert find_splits(formats["roboflow"]) == ["train", "valid"]
    assert find_splits(formats["coco"]) == ["train", "val"]


# --------------------------------------------------------------------------- VOC specifics
def _voc_one(root: Path, objects: str, size: str = "<size><width>10</width><height>8</height></size>",
             image: tuple[int, int] | None = (10, 8)) -> Path:
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    (root / "Annotations/a.xml").write_text(f"<annotation><filename>a.jpg</filename>{size}{objects}</annotation>")
    if image:
        Image.new("RGB", image).save(root / "JPEGImages/a.jpg")
    return root


def test_voc_boxes_are_one_based_inclusive_and_difficult_is_crowd(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>1</xmax>"
                              "<ymax>1</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult>"
                              "<bndbox><xmin>3</xmin><ymin>2</ymin><xmax>10</xmax><ymax>8</ymax></bndbox></object>")
    r = load_records(root, "train")
    np.testing.assert_array_equal(r.ann_boxes, [[0, 0, 1, 1], [2, 1, 8, 7]])  # the 1-pixel box; the whole width
    assert r.ann_crowd.tolist() == [False, True]
    _, target = CocoDetection(root, "train")[0]
    assert target["boxes"].tolist() == [[0, 0, 1, 1]]  # difficult: not a training target, kept in coco_gt()


def test_voc_without_size_reads_the_image(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "", size="")
    r = load_records(root, "train", strict=False)
    assert (r.widths.tolist(), r.heights.tolist()) == ([10], [8])
    assert [i.message for i in r.issues] == [f"{root / 'Annotations/a.xml'}: no usable <size>; 10x8 read from "
                                             "the image file"]


def test_voc_without_size_or_image(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "", size="", image=None)
    report = check_dataset(root, "train", progress=False)
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{root / 'Annotations/a.xml'}: no usable "
                                                                   "<size> and the image cannot be read")


def test_voc_devkit_as_downloaded_combines_the_years(tmp_path: Path, small_coco: Path) -> None:
    """`DIR/VOCdevkit/VOC2007` + `VOC2012` (what people download): a split is read from every year that has it
    (07+12), `file_name`s relative to the devkit, and the report names the layout; a split only one year has
    (2007's test) is that year's alone. `DIR` may also be the devkit folder itself."""
    devkit = tmp_path / "VOCdevkit"
    write_voc(small_coco, devkit / "VOC2007", {"train": "trainval", "val": "test"})
    write_voc(small_coco, devkit / "VOC2012", {"train": "trainval"})
    for root in (tmp_path, devkit):
        source = resolve_split(root, "trainval")
        assert source.layout == "Pascal VOC devkit (VOC2007 + VOC2012)" and source.image_dir == devkit
        assert "VOC2007/JPEGImages" in source.describe() and "VOC2012/JPEGImages" in source.describe()
        assert find_splits(root) == ["test", "trainval"]
    r = load_records(tmp_path, "trainval")
    single = load_records(devkit / "VOC2007", "trainval")
    assert len(r) == 2 * len(single) and r.num_annotations == 2 * single.num_annotations
    assert len(set(r.image_ids.tolist())) == len(r) and len(set(r.ann_ids.tolist())) == r.num_annotations
    assert r.file_name(0).startswith("VOC2007/JPEGImages/") and r.file_name(len(r) - 1).startswith("VOC2012/")
    np.testing.assert_array_equal(r.ann_boxes[: single.num_annotations], single.ann_boxes)
    test = resolve_split(tmp_path, "test")
    assert test.layout == "Pascal VOC devkit (VOC2007)" and len(load_records(tmp_path, "test")) == 3
    ds = CocoDetection(tmp_path, "trainval")
    image, target = ds[len(ds) - 1]
    assert image.shape[-2:] != (0, 0) and len(target["boxes"]) >= 1
    assert check_dataset(tmp_path, "trainval", progress=False).ok


def test_voc_filename_outside_the_folder_is_refused_before_it_is_opened(tmp_path: Path, monkeypatch) -> None:
    """`<filename>/etc/hostname</filename>` without `<size>`: refused by the path rule; the file is never opened
    (before: read for its size first, then refused)."""
    from dynamic_detr.data import voc

    root = _voc_one(tmp_path, "", size="", image=None)
    xml = root / "Annotations/a.xml"
    xml.write_text(xml.read_text().replace("<filename>a.jpg</filename>", "<filename>/etc/hostname</filename>"))
    opened = []
    monkeypatch.setattr(voc, "probe_image", lambda path, **kw: opened.append(path))
    r = load_records(root, "train", strict=False)
    assert opened == [] and len(r) == 0
    assert [i.message for i in r.issues if i.kind == "unsafe_path"] == [
        f"{xml}: <filename> '/etc/hostname' is an absolute path; image refused"]


@pytest.mark.parametrize("objects,message", [
    ("<object><name>cat</name></object>", "a.xml: object 1 ('cat'): no <bndbox>"),
    ("<object><name>cat</name><bndbox><xmin>x</xmin></bndbox></object>", "<bndbox> needs numeric xmin"),
    ("<object><bndbox/></object>", "a.xml: object 1: no <name>"),
    ("<object", "a.xml: not valid XML"),
])
def test_voc_malformed(tmp_path: Path, objects: str, message: str) -> None:
    root = _voc_one(tmp_path, objects)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CocoDetection(root, "train")
    assert any(message in e for e in check_dataset(root, "train", progress=False).errors)


@pytest.mark.parametrize("size", ["<size><width>inf</width><height>8</height></size>",
                                  "<size><width>1e999</width><height>nan</height></size>"])
def test_voc_infinite_size_reads_the_image(tmp_path: Path, size: str) -> None:
    """An infinite or NaN <size> is no usable size (was an OverflowError traceback): the image is read."""
    root = _voc_one(tmp_path, "", size=size)
    r = load_records(root, "train", strict=False)
    assert (r.widths.tolist(), r.heights.tolist()) == ([10], [8])


def test_voc_infinite_box_is_named(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax>"
                              "<ymax>3</ymax></bndbox></object>")
    with pytest.raises(DatasetError, match=r"a.xml: object 1 \('cat'\): <bndbox> needs numeric"):
        CocoDetection(root, "train")


@pytest.mark.parametrize("which", ["labels.txt", "ImageSets/Main/train.txt"])
def test_voc_lists_that_are_not_utf8_are_named(tmp_path: Path, which: str) -> None:
    """A class list or split list in another encoding is one DatasetError naming the file (was a
    UnicodeDecodeError traceback)."""
    root = _voc_one(tmp_path, "")
    (root / which).write_bytes("chat\nb\xe9b\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=f"{which}: not UTF-8 text"):
        CocoDetection(root, "train")


def test_voc_ids_are_plain_file_names(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "")
    (root / "ImageSets/Main/train.txt").write_text("a\n../../outside\n")
    assert check_dataset(root, "train", progress=False).errors == [
        f"{root / 'ImageSets/Main/train.txt'}:2: image id '../../outside' is not a plain file name; image refused"]


def test_format_is_validated() -> None:
    from dynamic_detr.config import apply_overrides, get_preset

    with pytest.raises(ConfigError, match=r"data\.format must be auto\|coco\|yolo\|voc"):
        apply_overrides(get_preset("cpu_tiny"), ["data.format=xml"])


def test_voc_box_errors_name_the_xml_and_object(tmp_path: Path) -> None:
    root = _voc_one(tmp_path, "<object><name>cat</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>3</xmax>"
                              "<ymax>4</ymax></bndbox></object>")
    assert check_dataset(root, "train", progress=False).errors == [
        f"{root / 'Annotations/a.xml'} (object 1): annotation 1 (image 1): box has non-positive width; dropped"]


def test_voc_entity_bomb_is_refused(tmp_path: Path) -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
            + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefg", "bcdefgh", strict=True))
            + "]><annotation><filename>&h;</filename></annotation>")  # 10^8 bytes if expanded
    root = _voc_one(tmp_path, "")
    (root / "Annotations/a.xml").write_text(bomb)
    with pytest.raises(DatasetError, match="not valid XML"):  # expat's amplification limit, not 10^9 bytes
        CocoDetection(root, "train")


# --------------------------------------------------------------------------- YOLO specifics
def _yolo_one(root: Path, label: str, names: object = ("a", "b")) -> Path:
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(root / "images/train/x.jpg")
    (root / "labels/train/x.txt").write_text(label)
    (root / "data.yaml").write_text(json.dumps({"train": "images/train", "names": names}))
    return root


@pytest.mark.parametrize("label,message", [
    ("0 0.5 0.5 0.2\n", "x.txt:1: expected 'class cx cy w h' (5 values)"),
    ("\n0 0.5 0.5 0.2 nan\n1 0.5 0.5 0.2 zero\n", "x.txt:3: 'zero' is not a number"),
    ("0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n", "x.txt:2: class 2 is not in 'names'"),
    ("1.5 0.5 0.5 0.2 0.2\n", "x.txt:1: class 1.5 is not in 'names'"),
])
def test_yolo_bad_lines_name_file_and_line(tmp_path: Path, label: str, message: str) -> None:
    root = _yolo_one(tmp_path, label)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        CocoDetection(root, "train")
    assert str(root / "labels/train/x.txt") in str(e.value) and "\n" not in str(e.value)
    assert any(message in err for err in check_dataset(root, "train", progress=False).errors)


def test_yolo_box_problems_go_through_the_shared_validation(tmp_path: Path) -> None:
    root = _yolo_one(tmp_path, "0 0.5 0.5 0 0.2\n1 0.5 0.5 1.4 0.2\n0 0.5 0.5 0.2 0.2\n")
    report = check_dataset(root, "train", progress=False)
    where = root / "labels/train/x.txt"
    assert report.errors == [f"{where}:1: annotation 1 (image 1): box has non-positive width; dropped"]
    assert report.warnings == [f"{where}:2: annotation 2 (image 1): box [-4, 4, 28, 2] extends 4.0 px outside "
                               "the 20x10 image; clipped"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(root, "train")
    assert any(issubclass(w.category, DatasetWarning) for w in caught)
    assert ds[0][1]["boxes"].tolist() == [[0, 4, 20, 6], [8, 4, 12, 6]]


def test_yolo_polygon_lines_dict_names_and_negatives(tmp_path: Path) -> None:
    root = _yolo_one(tmp_path, "1 0.1 0.2 0.5 0.2 0.3 0.8\n", names={0: "a", 1: "b"})
    Image.new("RGB", (8, 8)).save(root / "images/train/y.png")  # no label file: a negative
    r = load_records(root, "train")
    assert [c["name"] for c in r.categories] == ["a", "b"] and r.ann_labels.tolist() == [1]
    np.testing.assert_allclose(r.ann_boxes, [[2, 2, 8, 6]])
    assert np.diff(r.ann_offsets).tolist() == [1, 0]


def test_yolo_txt_list_with_a_missing_image(tmp_path: Path) -> None:
    root = _yolo_one(tmp_path, "0 0.5 0.5 0.2 0.2\n")
    (root / "train.txt").write_text("./images/train/x.jpg\nimages/train/gone.jpg\n")
    (root / "data.yaml").write_text(json.dumps({"train": "train.txt", "names": ["a", "b"]}))
    report = check_dataset(root, "train", progress=False)
    assert report.errors == [f"{root / 'images/train/gone.jpg'}: image file not found; image refused"]
    assert report.num_images == 1 and report.num_objects == 1


def test_yolo_list_mixing_relative_and_absolute_entries(tmp_path: Path, monkeypatch) -> None:
    """A `train:` list with a relative folder and an absolute one, for a dataset given by a relative path (was
    a ValueError traceback from os.path.commonpath): both folders' images are read."""
    monkeypatch.chdir(tmp_path)
    root = _yolo_one(Path("ds"), "0 0.5 0.5 0.2 0.2\n")
    extra = tmp_path / "extra" / "images"
    (tmp_path / "extra" / "labels").mkdir(parents=True)
    extra.mkdir(parents=True)
    Image.new("RGB", (20, 10)).save(extra / "y.jpg")
    (tmp_path / "extra" / "labels" / "y.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(json.dumps({"train": ["images/train", str(extra)], "names": ["a", "b"]}))
    ds = CocoDetection(root, "train")
    assert len(ds) == 2 and sorted(int(t["labels"][0]) for _, t in (ds[0], ds[1])) == [0, 1]


@pytest.mark.parametrize("yaml_text,message", [
    ("train: images/train\n", "'names' must be a list or a mapping"),
    ("names: [a]\ntrain: nowhere\n", "nowhere is not an image folder"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_yolo_bad_yaml(tmp_path: Path, yaml_text: str, message: str) -> None:
    root = _yolo_one(tmp_path, "")
    (root / "data.yaml").write_text(yaml_text)
    with pytest.raises(DatasetError, match=message) as e:
        CocoDetection(root, "train")
    assert str(e.value).startswith(str(root / "data.yaml"))


def test_yolo_roboflow_paths(tmp_path: Path, small_coco: Path) -> None:
    """Roboflow's YOLO export: train/images + train/labels, and `../train/images` in its data.yaml."""
    yolo = write_yolo(small_coco, tmp_path / "y", splits={"val": "valid"})
    rf = tmp_path / "rf"
    (rf / "valid").mkdir(parents=True)
    shutil.move(yolo / "images/valid", rf / "valid/images")
    shutil.move(yolo / "labels/valid", rf / "valid/labels")
    spec = yaml.safe_load((yolo / "data.yaml").read_text())
    (rf / "data.yaml").write_text(json.dumps({"names": spec["names"], "val": "../valid/images"}))
    _same(load_records(rf, "val"), load_records(small_coco, "val"))


# --------------------------------------------------------------------------- COCO at any path, detection
def test_any_path_fields(tmp_path: Path, small_coco: Path) -> None:
    shutil.copytree(small_coco / "val", tmp_path / "pics")
    (tmp_path / "meta").mkdir()
    shutil.copy(small_coco / "annotations/instances_val.json", tmp_path / "meta/result.json")
    cfg = DataConfig(val_ann="meta/result.json", val_images="pics")
    src = split_source(tmp_path, "val", cfg)
    assert (src.ann_file, src.image_dir) == (tmp_path / "meta/result.json", tmp_path / "pics")
    _same(CocoDetection(tmp_path, "val", source=src).records, load_records(small_coco, "val"))
    # without the image folder: beside the annotation file
    beside = resolve_split(tmp_path, "val", ann=str(tmp_path / "pics" / "a.json"))
    assert beside.image_dir == tmp_path / "pics"
    with pytest.raises(ConfigError, match=r"data\.format is 'yolo'"):
        split_source(tmp_path, "val", DataConfig(val_ann="x.json", format="yolo"))


def test_standard_layout_wins_and_missing_split_lists_the_layouts(tmp_path: Path, formats) -> None:
    both = tmp_path / "both"
    shutil.copytree(formats["roboflow"], both)
    shutil.copytree(formats["coco"] / "annotations", both / "annotations")
    shutil.copytree(formats["coco"] / "train", both / "train", dirs_exist_ok=True)
    assert resolve_split(both, "train").layout == "COCO"
    with pytest.raises(DatasetError, match=r"annotation file not found .*_annotations\.coco\.json.*data\.yaml"):
        resolve_split(tmp_path, "test")
    with pytest.raises(DatasetError, match=r"no data\.yaml"):
        resolve_split(formats["voc"], "train", fmt="yolo")


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_convert_cli_writes_the_coco_layout(tmp_path: Path, formats, fmt: str, capsys) -> None:
    out = tmp_path / "coco"
    assert main(["data", "convert", "--from", fmt, "--to", "coco", "--data", str(formats[fmt]),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out / 'annotations' / 'instances_train.json'}: 8 images" in printed
    for split in ("train", "val"):
        _same(load_records(out, split), load_records(formats["coco"], split))
        assert resolve_split(out, split).layout == "COCO"
    assert main(["data", "check", "--data", str(out)]) == 0
    # the JSON is never overwritten, nor the source's own folder written into
    assert main(["data", "convert", "--data", str(formats[fmt]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "convert", "--data", str(formats[fmt]), "--out", str(formats[fmt])]) == 2


def test_convert_refuses_images_that_link_out_of_the_dataset(tmp_path: Path, formats, capsys) -> None:
    """An image that is a symlink to a file outside the image folder would have its target (any file on the
    machine) copied into the new dataset: refused, nothing written. A linked image folder is fine."""
    src = tmp_path / "yolo"
    shutil.copytree(formats["yolo"], src)
    image = sorted(p for p in (src / "images" / "train").iterdir() if p.is_file())[0]
    secret = tmp_path / f"secret{image.suffix}"
    shutil.copy(image, secret)
    image.unlink()
    image.symlink_to(secret)
    out = tmp_path / "out"
    assert main(["data", "convert", "--data", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"1 image(s) are links leading out of the image folder (e.g. {image.name} -> {secret})" in err
    assert not (out / "train" / image.name).exists()
    linked = tmp_path / "linked"  # the folder itself a link (another disk): converted as usual
    shutil.copytree(formats["yolo"], tmp_path / "real")
    linked.symlink_to(tmp_path / "real", target_is_directory=True)
    assert main(["data", "convert", "--data", str(linked), "--out", str(tmp_path / "out2")]) == 0


def test_convert_lists_dropped_records_and_exits_1(tmp_path: Path, capsys) -> None:
    root = _yolo_one(tmp_path / "y", "0 0.5 0.5 0 0.2\n0 0.5 0.5 0.2 0.2\n")
    out = tmp_path / "out"
    assert main(["data", "convert", "--data", str(root), "--out", str(out), "--image-files", "symlink"]) == 1
    printed = capsys.readouterr().out
    assert f"skipped: {root / 'labels/train/x.txt'}:1: annotation 1 (image 1): box has non-positive width" in printed
    assert (out / "train" / "x.jpg").is_symlink() and len(load_records(out, "train").ann_ids) == 1


def test_check_cli_on_yolo_and_roboflow(formats, capsys) -> None:
    assert main(["data", "check", "--data", str(formats["yolo"]), "--headers-only"]) == 0
    out = capsys.readouterr().out
    assert f"layout: train: YOLO: {formats['yolo'] / 'data.yaml'}" in out and out.rstrip().endswith("OK")
    assert main(["data", "check", "--data", str(formats["roboflow"]), "--split", "val", "--headers-only"]) == 0
    assert "(split 'val' read as 'valid')" in capsys.readouterr().out
    root = formats["coco"]
    assert main(["data", "check", "--data", str(root), "--ann", "annotations/instances_val.json",
                 "--images", "val", "--headers-only"]) == 0
    assert "COCO (paths from the config)" in capsys.readouterr().out
