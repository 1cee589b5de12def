"""CocoDetection on good input: labels, targets, coco_gt, image modes and EXIF orientation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from builders import ann, image, write_coco
from dynamic_detr.data import CocoDetection
from dynamic_detr.data.synthetic import CLASSES


def test_non_contiguous_category_ids_round_trip(coco_writer) -> None:
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}, {"id": 17, "name": "cat"}]
    root = coco_writer(images=[image(7), image(9)], categories=cats, annotations=[
        ann(1, 7, [1, 2, 10, 5], cat=17), ann(2, 7, [5, 5, 4, 4], cat=90), ann(3, 9, [0, 0, 3, 3], cat=3)])
    ds = CocoDetection(root, "train")
    assert ds.category_ids == [3, 17, 90]
    assert ds.class_names == ["car", "cat", "toothbrush"]
    assert ds.cat_id_to_label == {3: 0, 17: 1, 90: 2}
    assert all(ds.cat_id_to_label[ds.category_ids[k]] == k for k in range(3))
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 2]
    assert [ds.category_ids[k] for k in t["labels"].tolist()] == [17, 90]


def test_target_structure(coco_writer) -> None:
    root = coco_writer(images=[image(4, w=40, h=30)], annotations=[ann(1, 4, [2.5, 3, 10, 20])])
    ds = CocoDetection(root, "train")
    img, t = ds[0]
    assert isinstance(img, tv_tensors.Image) and img.dtype == torch.uint8 and img.shape == (3, 30, 40)
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes)
    assert t["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY and t["boxes"].canvas_size == (30, 40)
    assert t["boxes"].dtype == torch.float32
    assert t["boxes"].tolist() == [[2.5, 3.0, 12.5, 23.0]]
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [0]
    assert t["image_id"] == 4 and isinstance(t["image_id"], int)
    assert t["orig_size"].dtype == torch.int64 and t["orig_size"].tolist() == [30, 40]
    assert ds.image_ids == [4]


def test_empty_images_kept_and_crowd_only_in_gt(coco_writer) -> None:
    root = coco_writer(images=[image(1), image(2)], annotations=[
        ann(10, 1, [1, 1, 5, 5]), ann(11, 1, [10, 10, 8, 8], iscrowd=1, area=50.0)])
    ds = CocoDetection(root, "train")
    assert len(ds) == 2
    assert ds[0][1]["boxes"].shape == (1, 4)  # crowd box is not a training target (DETR)
    assert ds[1][1]["boxes"].shape == (0, 4) and ds[1][1]["labels"].shape == (0,)
    gt = ds.coco_gt()
    assert sorted(gt.getImgIds()) == [1, 2]
    assert sorted(gt.getAnnIds()) == [10, 11]
    assert gt.anns[11]["iscrowd"] == 1 and gt.anns[11]["area"] == 50.0


def test_coco_gt_matches_served_after_validation(coco_writer) -> None:
    """The GT holds exactly what is served: clipped boxes, dropped records gone, area filled in."""
    root = coco_writer(images=[image(1), image(2, name="../escape.png")], annotations=[
        ann(1, 1, [30, 20, 20, 20], area=None),  # partly outside a 40x30 image: clipped to [30, 20, 10, 10]
        ann(2, 1, [5, 5, 0, 4]),  # bad box: dropped
        ann(3, 2, [1, 1, 2, 2]),  # its image is refused
    ])
    with pytest.warns(UserWarning):
        ds = CocoDetection(root, "train")
    gt = ds.coco_gt()
    assert gt.getImgIds() == [1] and gt.getAnnIds() == [1]
    assert gt.anns[1]["bbox"] == [30.0, 20.0, 10.0, 10.0] and gt.anns[1]["area"] == 100.0
    assert ds[0][1]["boxes"].tolist() == [[30.0, 20.0, 40.0, 30.0]]


def test_synthetic_dataset_loads(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "val")
    assert len(ds) == 4 and ds.class_names == list(CLASSES)
    data = json.loads((synth_root / "annotations" / "instances_val.json").read_text())
    for i in range(len(ds)):
        img, t = ds[i]
        info = data["images"][i]
        assert img.shape[-2:] == (info["height"], info["width"]) and t["image_id"] == info["id"]
        n = sum(a["image_id"] == info["id"] for a in data["annotations"])
        assert len(t["boxes"]) == n
    assert len(ds.coco_gt().getAnnIds()) == len(data["annotations"])


# --------------------------------------------------------------------------- image modes
H, W = 20, 30
_RGB = np.zeros((H, W, 3), np.uint8)
_RGB[:, :, 0] = np.linspace(0, 255, W, dtype=np.uint8)[None]  # red ramp left -> right
_RGB[2:6, 3:9] = (10, 200, 30)  # green marker near the top-left corner


def _save_mode(path: Path, mode: str) -> np.ndarray:
    """Write `path` in `mode`; return the RGB pixels the loader must produce."""
    if mode == "L":
        g = _RGB[..., 0]
        Image.fromarray(g, "L").save(path)
        return np.repeat(g[..., None], 3, 2)
    if mode == "RGBA":
        a = np.dstack([_RGB, np.full((H, W), 128, np.uint8)])
        Image.fromarray(a, "RGBA").save(path)
        return _RGB
    if mode == "P":
        Image.fromarray(_RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
        return np.asarray(Image.open(path).convert("RGB"))
    if mode == "I;16":
        g16 = (_RGB[..., 0].astype(np.uint16) * 257)  # full 16-bit range
        Image.fromarray(g16).save(path)
        return np.repeat(_RGB[..., :1], 3, 2)
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_image_modes_become_rgb_uint8(tmp_path: Path, mode: str) -> None:
    root = write_coco(tmp_path, images=[image(1, w=W, h=H)], annotations=[], write_images=False)
    expected = _save_mode(tmp_path / "train" / "0001.png", mode)
    with Image.open(tmp_path / "train" / "0001.png") as im:
        assert im.mode.startswith(mode[0])  # the file really is in that mode
    img, t = CocoDetection(root, "train")[0]
    assert img.dtype == torch.uint8 and img.shape == (3, H, W)
    np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), expected)
    assert t["orig_size"].tolist() == [H, W]


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    """A JPEG stored sideways with an EXIF orientation tag loads upright, in the frame of the JSON sizes."""
    upright = Image.fromarray(_RGB)
    # store the pixels so that applying `orientation` gives back `upright`
    stored = {3: upright.rotate(180), 6: upright.rotate(90, expand=True), 8: upright.rotate(-90, expand=True)}
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "train" / "0001.jpg"
    root = write_coco(tmp_path, images=[image(1, w=W, h=H, name="0001.jpg")],
                      annotations=[ann(1, 1, [3, 2, 6, 4])], write_images=False)
    stored[orientation].save(path, quality=98, exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sizes agree with the JSON: no warning
        img, t = CocoDetection(root, "train")[0]
    assert img.shape == (3, H, W)
    arr = img.permute(1, 2, 0).numpy().astype(int)
    assert arr[3, 5, 1] > 150 and arr[3, 5, 0] < 80  # the green marker is back at the top-left
    assert arr[H - 3, W - 3, 0] > 200 and arr[H - 3, 2, 0] < 40  # red ramp runs left -> right
    assert t["boxes"].tolist() == [[3.0, 2.0, 9.0, 6.0]]
