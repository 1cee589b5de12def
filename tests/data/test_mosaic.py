"""Mosaic (DEIM's Dense O2O): four painted images in one; every box still covers its own object after the tiling
and the random affine, boxes stay on the canvas, degenerate ones go, labels and the other per-box entries stay
aligned with the boxes."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from dynamic_detr.data.mosaic import Mosaic

# (h, w, boxes) of the four images; each box is painted in its own colour, its label is its colour's index
IMAGES = [
    (60, 90, [(6, 6, 36, 36), (50, 30, 86, 56)]),
    (80, 60, [(0, 0, 60, 20)]),
    (50, 50, [(10, 10, 40, 45)]),
    (70, 70, [(20, 5, 68, 30), (4, 40, 30, 66)]),
]
COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20), (250, 20, 250), (20, 250, 250),
           (130, 250, 20), (250, 130, 130)]


def painted(images=IMAGES, extra: dict | None = None) -> list[tuple[tv_tensors.Image, dict]]:
    """The four (image, target) pairs: black images, box k filled with COLOURS[label], label = k over all
    images; `extra`: per-box entries added to every target (key -> per-image lists)."""
    samples, label = [], 0
    for i, (h, w, boxes) in enumerate(images):
        img = torch.zeros(3, h, w, dtype=torch.uint8)
        labels = []
        for x0, y0, x1, y1 in boxes:
            img[:, y0:y1, x0:x1] = torch.tensor(COLOURS[label], dtype=torch.uint8)[:, None, None]
            labels.append(label)
            label += 1
        target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                    format="XYXY", canvas_size=(h, w)),
                  "labels": torch.tensor(labels, dtype=torch.int64), "image_id": 100 + i,
                  "orig_size": torch.tensor([h, w])}
        for key, values in (extra or {}).items():
            target[key] = values[i]
        samples.append((tv_tensors.Image(img), target))
    return samples


def extent(img: torch.Tensor, label: int) -> list[int] | None:
    """(x0, y0, x1, y1), exclusive ends, of the pixels of `label`'s colour (within 40 per channel: the
    resize blends the edges), None when none is left."""
    colour = torch.tensor(COLOURS[label], dtype=torch.float32)[:, None, None]
    close = ((img.float() - colour).abs() <= 40).all(0)
    ys, xs = torch.nonzero(close, as_tuple=True)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_mosaic_tiles_four_images_each_box_on_its_object():
    """Without the affine (no rotation, shift or scale): a 2 x 2 grid of the four images at short side 40 on a
    canvas twice the largest tile; all six boxes, in order, each on its painted object (within the resize's
    blended edge), the first image's id."""
    torch.manual_seed(0)
    image, target = Mosaic(40, degrees=0, translate=0, scale=(1, 1))(painted())
    tiles = [(40, 60), (53, 40), (40, 40), (40, 40)]  # short side 40, long side floored
    assert image.shape == (3, 2 * max(h for h, _ in tiles), 2 * max(w for _, w in tiles)) == (3, 106, 120)
    assert image.dtype == torch.uint8
    boxes = torch.Tensor.as_subclass(target["boxes"], torch.Tensor)
    assert target["boxes"].canvas_size == (106, 120)
    assert target["labels"].tolist() == [0, 1, 2, 3, 4, 5]
    assert target["image_id"] == 100 and target["orig_size"].tolist() == [60, 90]
    for box, label in zip(boxes.tolist(), target["labels"].tolist(), strict=True):
        found = extent(image, label)
        assert found is not None and max(abs(a - b) for a, b in zip(found, box, strict=True)) <= 1.5, (label, box)
    # each image's boxes lie in its own quarter (top-left corner of each: (0, 0), (60, 0), (0, 53), (60, 53))
    assert boxes[0, 2] <= 60 and boxes[2, 0] >= 60 and boxes[3, 1] >= 53 and boxes[4, 0] >= 60


@pytest.mark.parametrize("seed", range(6))
def test_boxes_follow_the_random_affine_and_stay_on_the_canvas(seed):
    """DEIM's affine without rotation (shift 0.2, scale 0.5-1.5): every kept box is its object's extent on the
    canvas (objects pushed partly off are clipped), every object still visible over more than 2 x 2 px kept."""
    torch.manual_seed(seed)
    image, target = Mosaic(40, degrees=0, translate=0.2, scale=(0.5, 1.5))(painted())
    h, w = image.shape[-2:]
    boxes = torch.Tensor.as_subclass(target["boxes"], torch.Tensor)
    assert len(boxes) == len(target["labels"]) and len(boxes) >= 1
    assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()
    kept = target["labels"].tolist()
    for box, label in zip(boxes.tolist(), kept, strict=True):
        found = extent(image, label)
        assert found is not None and max(abs(a - b) for a, b in zip(found, box, strict=True)) <= 2.0, (label, box)
    for label in range(sum(len(b) for *_, b in IMAGES)):
        found = extent(image, label)
        if found is not None and found[2] - found[0] > 2 and found[3] - found[1] > 2:
            assert label in kept, label


def test_a_rotated_mosaic_keeps_each_object_inside_its_box():
    """With DEIM's 10 degrees of rotation a box becomes the box around its rotated corners: it holds its whole
    object."""
    for seed in range(4):
        torch.manual_seed(seed)
        image, target = Mosaic(40, degrees=10, translate=0.1, scale=(0.5, 1.5))(painted())
        boxes = torch.Tensor.as_subclass(target["boxes"], torch.Tensor)
        for box, label in zip(boxes.tolist(), target["labels"].tolist(), strict=True):
            x0, y0, x1, y1 = extent(image, label)
            assert box[0] - 1 <= x0 and box[1] - 1 <= y0 and x1 <= box[2] + 1 and y1 <= box[3] + 1, (label, box)


def test_degenerate_boxes_are_dropped_with_their_labels_and_per_box_entries():
    """A 2 x 2 px object in a 200 px image is 0.4 px after the resize to 40: dropped, with its label, area and
    iscrowd; the others stay aligned (each keeps its own label, area and iscrowd)."""
    images = [(200, 200, [(10, 10, 110, 110), (150, 150, 152, 152), (120, 20, 190, 90)]), *IMAGES[1:]]
    n = [len(b) for _, _, b in images]
    area = [torch.arange(k, dtype=torch.float32) + 10 * i for i, k in enumerate(n)]
    iscrowd = [torch.zeros(k, dtype=torch.int64) + i for i, k in enumerate(n)]
    torch.manual_seed(0)
    _, target = Mosaic(40, degrees=0, translate=0, scale=(1, 1))(painted(images, {"area": area,
                                                                                   "iscrowd": iscrowd}))
    assert target["labels"].tolist() == [0, 2, 3, 4, 5, 6]  # label 1, the 2 x 2 px object, is gone
    assert target["area"].tolist() == [0, 2, 10, 20, 30, 31]
    assert target["iscrowd"].tolist() == [0, 0, 1, 2, 3, 3]
    assert len(target["boxes"]) == 6


def test_mosaic_lists_the_unreadable_stand_ins_of_all_four():
    samples = painted()
    samples[2][1]["unreadable"] = [(7, "a.jpg: broken")]
    _, target = Mosaic(40)(samples)
    assert target["unreadable"] == [(7, "a.jpg: broken")]
    with pytest.raises(ValueError, match="4 samples"):
        Mosaic(40)(samples[:3])
