"""collate / Batch / build_loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from builders import ann, image
from dynamic_detr.config import get_preset
from dynamic_detr.data import Batch, CocoDetection, DatasetWarning, build_loader, build_transforms, collate


def _item(h: int, w: int, boxes: list[list[float]], image_id: int, fill: float = 0.5):
    img = tv_tensors.Image(torch.full((3, h, w), fill))
    t = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w), dtype=torch.float32)
         .reshape(-1, 4),
         "labels": torch.arange(len(boxes)), "image_id": image_id, "orig_size": torch.tensor([2 * h, 2 * w])}
    return img, t


def test_shapes_padding_masks_and_boxes() -> None:
    batch = collate([_item(40, 50, [[0, 0, 50, 40], [10, 20, 30, 30]], 3), _item(70, 33, [], 9, fill=0.8)],
                    size_divisibility=32)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 96, 64) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (2, 96, 64) and batch.masks.dtype == torch.bool
    # image 0: pixels [0:40, 0:50], zero padding elsewhere; mask True = padding
    assert (batch.images[0, :, :40, :50] == 0.5).all() and batch.images[0, :, 40:].abs().sum() == 0
    assert batch.images[0, :, :, 50:].abs().sum() == 0
    assert not batch.masks[0, :40, :50].any() and batch.masks[0, 40:].all() and batch.masks[0, :, 50:].all()
    assert (batch.images[1, :, :70, :33] == 0.8).all() and batch.masks[1].sum() == 96 * 64 - 70 * 33
    t0, t1 = batch.targets
    # cxcywh normalised by the image's own unpadded size (50 x 40), not the padded one
    torch.testing.assert_close(t0["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.4, 0.625, 0.4, 0.25]]))
    assert t0["labels"].dtype == torch.int64 and t0["labels"].tolist() == [0, 1]
    assert t0["image_id"] == 3 and t0["size"].tolist() == [40, 50] and t0["orig_size"].tolist() == [80, 100]
    assert t1["boxes"].shape == (0, 4) and t1["labels"].shape == (0,) and t1["size"].tolist() == [70, 33]


def test_size_divisibility_one_and_uint8_input() -> None:
    img = tv_tensors.Image(torch.full((3, 5, 7), 255, dtype=torch.uint8))
    t = {"boxes": tv_tensors.BoundingBoxes([[1, 1, 3, 3]], format="XYXY", canvas_size=(5, 7)),
         "labels": torch.tensor([0]), "image_id": 1, "orig_size": torch.tensor([5, 7])}
    batch = collate([(img, t)], size_divisibility=1)
    assert batch.images.shape == (1, 3, 5, 7) and batch.images.dtype == torch.float32
    assert batch.images.max() == 1.0 and not batch.masks.any()


def test_to_and_pickle() -> None:
    batch = collate([_item(8, 8, [[1, 1, 4, 4]], 1)], size_divisibility=32)
    moved = batch.to("cpu")
    assert moved.images.device.type == "cpu" and moved.targets[0]["image_id"] == 1
    moved = batch.to(torch.device("meta"))
    assert moved.images.is_meta and moved.targets[0]["boxes"].is_meta and moved.masks.is_meta
    back = pickle.loads(pickle.dumps(batch))
    assert torch.equal(back.images, batch.images)
    assert torch.equal(back.targets[0]["boxes"], batch.targets[0]["boxes"])


def test_loader_seeded_shuffle_and_workers(synth_root: Path) -> None:
    cfg = get_preset("cpu_tiny").data
    ds = CocoDetection(synth_root, "train", build_transforms(cfg, train=False))

    def order(seed: int, workers: int = 0) -> list[int]:
        loader = build_loader(ds, batch_size=5, train=True, num_workers=workers, size_divisibility=32,
                              seed=seed)
        return [t["image_id"] for b in loader for t in b.targets]

    a = order(1)
    assert sorted(a) == list(range(1, 13)) and a == order(1) and a != order(2)
    assert order(1, workers=1) == a  # batches come back whole through a worker (picklable)
    loader = build_loader(ds, batch_size=5, train=False, num_workers=0, size_divisibility=32)
    assert [t["image_id"] for b in loader for t in b.targets] == ds.image_ids  # eval: file order, no drop
    assert len(loader) == 3
    batch = next(iter(loader))
    assert batch.images.shape[-1] % 32 == 0 and batch.images.shape[-2] % 32 == 0


def test_loader_with_sampler(synth_root: Path) -> None:
    ds = CocoDetection(synth_root, "val")
    sampler = [3, 1]
    loader = build_loader(ds, batch_size=2, train=True, size_divisibility=32, sampler=sampler)
    (batch,) = list(loader)
    assert [t["image_id"] for t in batch.targets] == [4, 2]


def test_empty_batch_rejected() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def _with_undecodable_second_image(coco_writer) -> tuple[CocoDetection, Path]:
    root = coco_writer(images=[image(1), image(2), image(3)],
                       annotations=[ann(5, 1, [1, 1, 4, 4]), ann(6, 2, [1, 1, 4, 4]), ann(7, 3, [2, 2, 8, 8])])
    bad = root / "train" / "0002.png"
    bad.write_bytes(b"not an image")
    return CocoDetection(root, "train", build_transforms(get_preset("cpu_tiny").data, train=False)), bad


@pytest.mark.parametrize("batch_size", [1, 2])
def test_eval_loader_drops_stand_ins_and_reports_them(coco_writer, batch_size: int) -> None:
    """Evaluation: the sample served for an undecodable image is not scored in its place (it comes again at
    its own index); the failed image is named in `Batch.unreadable`. A batch may end up empty."""
    ds, bad = _with_undecodable_second_image(coco_writer)
    loader = build_loader(ds, batch_size=batch_size, train=False, size_divisibility=32)
    with pytest.warns(DatasetWarning, match="cannot decode image"):
        batches = list(loader)
    assert [t["image_id"] for b in batches for t in b.targets] == [1, 3]  # each image once, 2 not at all
    failed = [u for b in batches for u in b.unreadable]
    assert [i for i, _ in failed] == [2] and failed[0][1].startswith(f"{bad}: cannot decode image")
    if batch_size == 1:
        empty = batches[1]
        assert len(empty) == 0 and empty.targets == [] and empty.unreadable == failed


def test_train_loader_keeps_stand_ins_with_their_own_target(coco_writer) -> None:
    ds, _ = _with_undecodable_second_image(coco_writer)
    loader = build_loader(ds, batch_size=3, train=True, size_divisibility=32, sampler=[0, 1, 2])
    with pytest.warns(DatasetWarning):
        (batch,) = list(loader)
    assert [t["image_id"] for t in batch.targets] == [1, 3, 3]  # image 3 stands in for image 2
    torch.testing.assert_close(batch.targets[1]["boxes"], batch.targets[2]["boxes"])  # image 3's own boxes
    assert [i for i, _ in batch.unreadable] == [2]


def test_collate_of_stand_ins_only() -> None:
    img, t = _item(8, 8, [[1, 1, 4, 4]], 5)
    t["unreadable"] = [(4, "x/0004.png: cannot decode image (truncated file)")]
    kept = collate([(img, t)], drop_unreadable=False)
    assert len(kept) == 1 and kept.targets[0]["image_id"] == 5 and "unreadable" not in kept.targets[0]
    dropped = collate([(img, t)], drop_unreadable=True)
    assert len(dropped) == 0 and dropped.images.shape[0] == 0 and dropped.masks.shape[0] == 0
    assert dropped.unreadable == kept.unreadable == [(4, "x/0004.png: cannot decode image (truncated file)")]
    assert dropped.to("cpu").unreadable == dropped.unreadable
