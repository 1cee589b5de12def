"""`dynamic-detr data show`: the boxes drawn are exactly the dataset's (with --augment exactly the samples the trainer
builds), at the right place in the picture, and the summary counts are the annotations' counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import ann, image
from dynamic_detr.cli.main import main
from dynamic_detr.config import apply_overrides, get_preset
from dynamic_detr.data import CocoDetection, check_dataset
from dynamic_detr.data import show as show_mod
from dynamic_detr.data.loaders import load_split, train_loader
from dynamic_detr.data.sampler import ResumableSampler
from dynamic_detr.visualize import draw_ground_truth


def _spy_drawing(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every (image, boxes, labels) `data show` hands to the drawing function."""
    calls: list[dict] = []
    real = show_mod.draw_ground_truth

    def spy(img, boxes, labels, names):
        calls.append({"image": img.clone(), "boxes": boxes.clone(), "labels": labels.clone(), "names": names})
        return real(img, boxes, labels, names)

    monkeypatch.setattr(show_mod, "draw_ground_truth", spy)
    return calls


def test_show_draws_the_annotated_boxes(synth_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    calls = _spy_drawing(monkeypatch)
    out = tmp_path / "show"
    assert main(["data", "show", "--data", str(synth_root), "--n", "5", "--seed", "3", "--out", str(out)]) == 0
    assert "5 image(s) with ground truth" in capsys.readouterr().out

    coco = json.loads((synth_root / "annotations" / "instances_train.json").read_text())
    cat_ids = sorted(c["id"] for c in coco["categories"])
    sampler = ResumableSampler(len(coco["images"]), shuffle=True, seed=3)
    order = [i for i, _ in sampler][:5]  # epoch 0 of a training run with train.seed = 3
    assert len(calls) == 5
    for k, (i, call) in enumerate(zip(order, calls, strict=True)):
        img = coco["images"][i]
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        assert torch.equal(call["boxes"], want.reshape(-1, 4))
        assert call["labels"].tolist() == [cat_ids.index(a["category_id"]) for a in anns]
        png = out / f"{k:03d}_{Path(img['file_name']).stem}.png"
        with Image.open(png) as drawn:
            assert drawn.size == (img["width"], img["height"])
        with Image.open(synth_root / "train" / img["file_name"]) as original:
            assert torch.equal(call["image"], torch.from_numpy(np.array(original.convert("RGB"))).permute(2, 0, 1))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{k:03d}_{Path(coco['images'][i]['file_name']).stem}.png" for k, i in enumerate(order)] + ["summary.png"])


def test_show_augment_draws_the_trainers_samples(synth_root: Path, tmp_path: Path, monkeypatch) -> None:
    """--augment pictures are the first samples of the trainer's epoch 0 (its sampler, dataset wrapper and train
    transforms, from `data.loaders.train_loader` as the trainer builds them), boxes and pixels, crops and flips
    on."""
    calls = _spy_drawing(monkeypatch)
    overrides = ["data.crop_prob=1.0", "data.hflip_prob=0.5", "train.seed=7"]
    out = tmp_path / "aug"
    assert main(["data", "show", "--data", str(synth_root), "--augment", "--n", "6", "--out", str(out),
                 "--preset", "cpu_tiny", *overrides]) == 0

    # the trainer's per-sample order (its batches grouped by orientation are those samples, regrouped)
    cfg = apply_overrides(get_preset("cpu_tiny"), [*overrides, "data.group_by_aspect=false"])
    loader, sampler = train_loader(load_split(synth_root, "train", cfg.data), cfg.data, cfg.train.batch_size,
                                   cfg.train.seed)
    sampler.set_epoch(0)
    keys = list(sampler)[:6]
    assert len(calls) == 6
    for k, (key, call) in enumerate(zip(keys, calls, strict=True)):
        img, target = loader.dataset[key]
        boxes = torch.Tensor.as_subclass(target["boxes"], torch.Tensor)
        assert torch.equal(call["boxes"], boxes)
        assert torch.equal(call["labels"], target["labels"])
        want = show_mod.to_uint8(img)
        assert torch.equal(call["image"], want)
        assert tuple(want.shape[-2:]) != (320, 320)  # cropped and resized: not the file as read
        (png,) = out.glob(f"{k:03d}_*.png")
        drawn = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(drawn, draw_ground_truth(want, boxes, target["labels"], call["names"]))


def test_show_draws_the_box_where_the_annotation_is(coco_writer, tmp_path: Path) -> None:
    """One box on a grey image: its outline has the class colour on all four sides, the rest stays grey."""
    root = coco_writer(images=[image(1, w=96, h=64)], annotations=[ann(1, 1, [10, 8, 50, 32])])
    out = tmp_path / "one"
    assert main(["data", "show", "--data", str(root), "--n", "1", "--out", str(out)]) == 0
    a = np.asarray(Image.open(out / "000_0001.png").convert("RGB"))
    red = (0xE6, 0x19, 0x4B)  # the palette's first colour: class 0
    grey = (90, 90, 90)
    for x, y in [(10, 28), (60, 28), (35, 8), (35, 40)]:  # left, right, top, bottom edge (x1 = 60, y1 = 40)
        assert tuple(a[y, x]) == red, (x, y)
    for x, y in [(5, 28), (66, 28), (35, 3), (35, 46), (45, 34)]:  # outside, and inside away from the label
        assert tuple(a[y, x]) == grey, (x, y)


def test_summary_counts_are_the_annotations(coco_writer, tmp_path: Path, monkeypatch, capsys) -> None:
    cats = [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}, {"id": 9, "name": "unused"}]
    root = coco_writer(images=[image(1, w=200, h=150), image(2), image(3)], categories=cats, annotations=[
        ann(1, 1, [0, 0, 10, 10], cat=1, area=100.0),  # small
        ann(2, 1, [0, 0, 50, 50], cat=2, area=2500.0),  # medium
        ann(3, 1, [0, 0, 150, 100], cat=2, area=15000.0, iscrowd=1),  # large, crowd
        ann(4, 2, [0, 0, 5, 5], cat=2, area=25.0),  # small
    ])
    seen = []
    real = show_mod.plot_summary
    monkeypatch.setattr(show_mod, "plot_summary", lambda stats, path, title="": (seen.append(stats),
                                                                                   real(stats, path, title)))
    out = tmp_path / "summary"
    assert main(["data", "show", "--data", str(root), "--n", "0", "--out", str(out)]) == 0
    assert "3 images, 4 objects; small 2, medium 1, large 1" in capsys.readouterr().out
    (stats,) = seen
    assert stats.classes == ["a", "b", "unused"] and stats.objects_per_class == [1, 3, 0]
    assert stats.boxes_per_image == [3, 1, 0]
    assert sorted(stats.sqrt_areas) == [5.0, 10.0, 50.0, math.sqrt(15000.0)]
    assert stats.size_counts() == (2, 1, 1)
    report = check_dataset(root, "train", progress=False)  # the same counts as `data check`
    assert dict(zip(stats.classes, stats.objects_per_class, strict=True)) == report.per_class
    assert stats == show_mod.dataset_stats(CocoDetection(root, "train").records)
    with Image.open(out / "summary.png") as png:
        assert png.size == (1500, 450)
    assert [p.name for p in out.iterdir()] == ["summary.png"]


def test_show_bad_arguments(coco_writer, capsys) -> None:
    root = coco_writer(images=[image(1)], annotations=[])
    assert main(["data", "show", "--data", str(root), "--n", "-1", "--out", str(root / "x")]) == 2
    assert capsys.readouterr().err.strip() == "error: --n must be >= 0, got -1"
    assert main(["data", "show", "--data", str(root), "--out", str(root / "train")]) == 2
    assert "is the dataset's image folder" in capsys.readouterr().err
    assert main(["data", "show", "--data", str(root / "nowhere"), "--out", str(root / "x")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
