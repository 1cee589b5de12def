"""Transforms keep boxes consistent with pixels; the resize-with-max-size rule; config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dynamic_detr.config import DataConfig, get_preset
from dynamic_detr.data.transforms import RandomSizeCrop, build_transforms, resize_short_side
from dynamic_detr.errors import ConfigError

hypothesis = pytest.importorskip("hypothesis")  # the dev extra: without it this module is skipped
st = pytest.importorskip("hypothesis.strategies")
example, given, settings = hypothesis.example, hypothesis.given, hypothesis.settings

H, W = 40, 60
BOX = (10, 5, 25, 20)  # x0, y0, x1, y1 of the white rectangle


def rect_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """[h, w, 3] uint8 black with a white filled rectangle at box = (x0, y0, x1, y1) (exclusive ends)."""
    a = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    return a


def _sample(box=BOX, h: int = H, w: int = W):
    img = tv_tensors.Image(torch.from_numpy(rect_image(h, w, box)).permute(2, 0, 1).contiguous())
    boxes = tv_tensors.BoundingBoxes([list(box)], format="XYXY", canvas_size=(h, w), dtype=torch.float32)
    target = {"boxes": boxes,
              "labels": torch.tensor([3]), "image_id": 7, "orig_size": torch.tensor([h, w])}
    return img, target


def _bright_box(img: torch.Tensor) -> list[float] | None:
    """Extent (x0, y0, x1, y1, exclusive ends) of the pixels brighter than half: where the rectangle is."""
    g = img.float().mean(0)
    g = g / 255 if img.dtype == torch.uint8 else g
    ys, xs = torch.nonzero(g > 0.5, as_tuple=True)
    if len(xs) == 0:
        return None
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def _cfg(**kw) -> DataConfig:
    base = dict(train_short_sides=[48, 64, 80], train_max_size=100, crop_resize_sides=[40, 50],
                crop_size=[20, 36], eval_short_side=80, eval_max_size=200)
    return DataConfig(**{**base, **kw})


# --------------------------------------------------------------------------- resize rule
@pytest.mark.parametrize("hw,side,max_size,expected", [
    ((480, 640), 320, 1000, (320, 426)),  # short side = s, long follows the aspect ratio (floored)
    ((640, 480), 320, 1000, (426, 320)),
    ((100, 400), 320, 640, (160, 640)),  # the long side would be 1280 > 640: long = max
    ((400, 100), 320, 640, (640, 160)),
    ((50, 50), 320, 384, (320, 320)),  # upsampling is allowed
    ((800, 1333), 800, 1333, (800, 1333)),  # exactly at the cap
    ((1, 1000), 256, 288, (1, 288)),  # capped short side 0.288 px: clamped to 1 (torchvision floors it to 0)
    ((1000, 1), 256, 288, (288, 1)),
])
def test_resize_with_max_size_picks_right_size(hw, side: int, max_size: int, expected) -> None:
    out = resize_short_side([side], max_size)(torch.zeros(3, *hw))
    assert tuple(out.shape[-2:]) == expected


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 2000), w=st.integers(1, 2000), side=st.integers(1, 120), extra=st.integers(1, 200))
@example(h=1, w=1000, side=100, extra=100)  # 1 x 1000 was once resized to 0 px and crashed
@example(h=2000, w=1, side=120, extra=1)
def test_resize_rule_property(h: int, w: int, side: int, extra: int) -> None:
    """'short side = s unless the long side would exceed max, then long side = max' (sides floored), and no
    side below 1 px, at every aspect ratio (up to 2000:1)."""
    max_size = side + extra
    out = resize_short_side([side], max_size)(torch.zeros(1, h, w))
    nh, nw = out.shape[-2:]
    short, long = min(nh, nw), max(nh, nw)
    assert short >= 1 and long <= max_size
    uncapped_long = int(side * max(h, w) / min(h, w))
    if uncapped_long <= max_size:
        assert (short, long) == (side, uncapped_long)
    else:  # the cap wins; the short side follows, floored, but never 0
        assert long == max_size and short == max(1, int(max_size * side / uncapped_long))
    assert abs(short / long - min(h, w) / max(h, w)) <= 1.5 / long  # aspect ratio kept
    assert (nh >= nw) == (h >= w) or h == w or nh == nw


# --------------------------------------------------------------------------- boxes follow pixels
def test_hflip_hand_computed() -> None:
    img, t = v2.RandomHorizontalFlip(p=1.0)(*_sample())
    assert t["boxes"].tolist() == [[35.0, 5.0, 50.0, 20.0]]
    assert _bright_box(img) == [35, 5, 50, 20]


def test_eval_resize_hand_computed() -> None:
    img, t = build_transforms(_cfg(), train=False)(*_sample())  # short side 40 -> 80: scale 2
    assert img.shape == (3, 80, 120) and img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    assert t["boxes"].tolist() == [[20.0, 10.0, 50.0, 40.0]]
    assert _bright_box(img) == [20, 10, 50, 40]
    assert t["labels"].tolist() == [3] and t["image_id"] == 7 and t["orig_size"].tolist() == [H, W]


def test_crop_hand_computed(monkeypatch) -> None:
    crop = RandomSizeCrop(20, 30)
    monkeypatch.setattr(crop, "make_params", lambda _: {"top": 10, "left": 15, "height": 20, "width": 30})
    img, t = crop(*_sample())
    assert img.shape == (3, 20, 30)
    assert t["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]  # [10, 5, 25, 20] shifted by (15, 10), clipped
    assert _bright_box(img) == [0, 0, 10, 10]


def test_crop_sizes_in_range_and_capped_by_image() -> None:
    torch.manual_seed(0)
    crop = RandomSizeCrop(20, 36)
    for _ in range(30):
        img, _ = crop(*_sample())
        assert 20 <= img.shape[-2] <= H and 20 <= img.shape[-1] <= 36
    for _ in range(10):  # min_size 50 > H: the height is capped by the image (DETR caps max, not min)
        small, _ = RandomSizeCrop(50, 80)(*_sample())
        assert small.shape[-2] == H and 50 <= small.shape[-1] <= W


@pytest.mark.parametrize("crop_prob", [0.0, 1.0])
def test_train_transforms_keep_boxes_on_the_rectangle(crop_prob: float) -> None:
    tf = build_transforms(_cfg(crop_prob=crop_prob), train=True)
    sizes, kept = set(), 0
    for seed in range(25):
        torch.manual_seed(seed)
        img, t = tf(*_sample())
        assert img.dtype == torch.float32
        h, w = img.shape[-2:]
        sizes.add(min(h, w))
        assert t["boxes"].canvas_size == (h, w) and len(t["boxes"]) == len(t["labels"])
        bright = _bright_box(img)
        if len(t["boxes"]):
            kept += 1
            assert bright is not None
            np.testing.assert_allclose(t["boxes"][0].tolist(), bright, atol=1.5)
        else:
            assert bright is None or min(bright[2] - bright[0], bright[3] - bright[1]) <= 2
    assert kept >= 10
    if crop_prob == 0.0:
        # short side 80 would make the long side 120 > 100: capped to 100 x int(100 * 40 / 60) = 66
        assert sizes <= {48, 64, 66} and len(sizes) >= 2


def test_seeded_transforms_are_reproducible() -> None:
    tf = build_transforms(_cfg(crop_prob=0.5), train=True)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append([tf(*_sample()) for _ in range(5)])
    for (ia, ta), (ib, tb) in zip(*outs, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])


# --------------------------------------------------------------------------- properties
boxes_strategy = st.lists(
    st.tuples(st.floats(0, 59), st.floats(0, 39), st.floats(0.5, 60), st.floats(0.5, 40)).map(
        lambda b: [b[0], b[1], min(b[0] + b[2], W), min(b[1] + b[3], H)]).filter(
        lambda b: b[2] - b[0] >= 0.5 and b[3] - b[1] >= 0.5),
    min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(boxes=boxes_strategy, seed=st.integers(0, 10_000))
def test_train_boxes_stay_inside_the_image(boxes, seed: int) -> None:
    img = tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8))
    t = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W), dtype=torch.float32),
         "labels": torch.arange(len(boxes)), "image_id": 1, "orig_size": torch.tensor([H, W])}
    torch.manual_seed(seed)
    out, t2 = build_transforms(_cfg(crop_prob=0.5), train=True)(img, t)
    h, w = out.shape[-2:]
    b = t2["boxes"]
    assert len(b) == len(t2["labels"]) <= len(boxes)
    assert set(t2["labels"].tolist()) <= set(range(len(boxes)))
    if len(b):
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] - b[:, 0] >= 1).all() and (b[:, 3] - b[:, 1] >= 1).all()


@settings(max_examples=40, deadline=None)
@given(boxes=boxes_strategy)
def test_flip_twice_is_identity(boxes) -> None:
    flip = v2.RandomHorizontalFlip(p=1.0)
    img = tv_tensors.Image(torch.randint(0, 255, (3, H, W), dtype=torch.uint8))
    b = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(H, W), dtype=torch.float32)
    img2, b2 = flip(*flip(img, b))
    assert torch.equal(img2, img)
    torch.testing.assert_close(b2, b)


# --------------------------------------------------------------------------- config
def test_presets_build() -> None:
    for name in ("paper_r50", "cpu_small", "cpu_tiny"):
        d = get_preset(name).data
        build_transforms(d, train=True)
        build_transforms(d, train=False)


def test_bad_config_is_a_config_error() -> None:
    """A data section built in Python gets the config's checks (each case: tests/config/test_config_validate.py)."""
    with pytest.raises(ConfigError, match=r"data\.crop_prob must be a probability"):
        build_transforms(_cfg(crop_prob=1.5), train=True)
    with pytest.raises(ConfigError, match=r"data\.eval_max_size \(200\) must exceed"):
        build_transforms(_cfg(eval_short_side=200, eval_max_size=200), train=False)
