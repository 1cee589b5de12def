"""Tiled inference (predict/tiling.py): the grid, the merge on hand-made tile cases (a cut box against a whole
one, fragments of a large object, classes, weighted boxes, top-k after merging), bounded tile batches (a fake
predictor counting its calls, up to a 10,000 x 10,000 image), the PyTorch and .onnx paths end to end on a tiny
untrained model, and one-line errors for bad options."""

from __future__ import annotations

import pytest
import torch

from builders import SHAPES, tiny_config
from dynamic_detr.errors import UserError
from dynamic_detr.model import DynamicDETR
from dynamic_detr.predict import tiling
from dynamic_detr.predict.predictor import Predictor
from dynamic_detr.predict.tiling import TiledPredictor, TileOptions, cut_flags, merge_detections, tile_grid

A, B = (0, 0, 256, 256), (205, 0, 461, 256)  # two tiles of a 461 x 256 image, sharing x 205..256


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _merge(boxes, scores, labels, cut, windows, merge="nms", top_k=100) -> dict[str, torch.Tensor]:
    return merge_detections(_t(boxes), torch.tensor(scores), torch.tensor(labels), torch.tensor(cut),
                            _t(windows), merge, 0.5, top_k)


# ------------------------------------------------------------------------------------------------ the grid
def test_grid_covers_image_with_last_tile_flush():
    assert tiling.tile_starts(1000, 256, 0.2) == [0, 205, 410, 615, 744]  # step 205, the last at 1000 - 256
    assert tiling.tile_starts(256, 256, 0.2) == [0] and tiling.tile_starts(100, 256, 0.5) == [0]
    assert tiling.tile_starts(512, 256, 0.0) == [0, 256]
    grid = tile_grid(600, 1000, 256, 0.2)
    assert len(grid) == 5 * 3 and grid[0] == (0, 0, 256, 256) and grid[-1] == (744, 344, 1000, 600)
    covered = torch.zeros(600, 1000, dtype=torch.bool)
    for x0, y0, x1, y1 in grid:
        assert (x1 - x0, y1 - y0) == (256, 256)
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_grid(100, 300, 256, 0.2) == [(0, 0, 256, 100), (44, 0, 300, 100)]  # short side: one row, 100 high
    assert tiling.tile_count(100, 200, TileOptions(256, full_image=True)) == 1  # fits: the plain path
    assert tiling.tile_count(600, 1000, TileOptions(256, full_image=True)) == 16


def test_cut_flags_only_inner_edges():
    boxes = _t([[0, 10, 30, 40],      # on the image's left border: not cut
                [230, 10, 255, 40],   # touches the tile's right edge (inner)
                [100, 100, 150, 150],  # inside
                [100, 230, 150, 256]])  # bottom edge, the image border: not cut
    assert cut_flags(boxes, (0, 0, 256, 256), (256, 600), margin=2).tolist() == [False, True, False, False]
    assert cut_flags(boxes, (0, 0, 256, 256), (400, 600), margin=2).tolist() == [False, True, False, True]


# ------------------------------------------------------------------------------------------------ merging
def test_cut_box_loses_to_whole_view_of_neighbour():
    """An object at x 230..280: tile A cuts it at 256 (higher score), tile B sees it whole: B's box is kept."""
    out = _merge([[230, 10, 256, 40], [230, 10, 280, 40]], [0.9, 0.6], [1, 1], [True, False], [A, B])
    assert out["boxes"].tolist() == [[230, 10, 280, 40]] and out["scores"].tolist() == pytest.approx([0.6])


def test_cut_box_loses_to_full_image_view():
    full = (0, 0, 461, 256)
    out = _merge([[230, 10, 256, 40], [228, 8, 282, 41]], [0.9, 0.5], [1, 1], [True, False], [A, full])
    assert out["boxes"].tolist() == [[228, 8, 282, 41]]


def test_large_object_split_with_no_whole_view_is_kept_once():
    """x 100..400 spans both tiles; each sees a part, cut at its inner edge: joined into one box."""
    out = _merge([[100, 10, 256, 200], [205, 12, 400, 198]], [0.8, 0.7], [1, 1], [True, True], [A, B])
    assert out["boxes"].tolist() == [[100, 10, 400, 200]] and out["scores"].tolist() == pytest.approx([0.8])
    # plain NMS would keep both parts (IoU 51 / 300 < 0.5)
    kept = tiling.resolve_cuts(_t([[100, 10, 256, 200], [205, 12, 400, 198]]), torch.tensor([.8, .7]),
                               torch.tensor([1, 1]), torch.tensor([False, False]), _t([A, B]), 0.5)
    assert len(kept[0]) == 2


def test_fragments_across_three_tiles_join_into_one():
    c = (410, 0, 666, 256)
    out = _merge([[100, 10, 256, 60], [205, 10, 461, 60], [410, 10, 600, 60]], [0.5, 0.6, 0.7], [1, 1, 1],
                 [True, True, True], [A, B, c])
    assert out["boxes"].tolist() == [[100, 10, 600, 60]] and out["scores"].tolist() == pytest.approx([0.7])


def test_other_class_is_neither_suppressed_nor_joined():
    out = _merge([[230, 10, 256, 40], [230, 10, 280, 40]], [0.9, 0.6], [1, 2], [True, False], [A, B])
    assert sorted(out["labels"].tolist()) == [1, 2] and len(out["boxes"]) == 2
    out = _merge([[100, 10, 256, 200], [205, 12, 400, 198]], [0.8, 0.7], [1, 2], [True, True], [A, B])
    assert len(out["boxes"]) == 2


def test_overlapping_classes_both_kept_by_nms():
    out = _merge([[10, 10, 50, 50], [11, 11, 51, 51], [10, 10, 50, 50]], [0.9, 0.8, 0.7], [1, 1, 2],
                 [False] * 3, [A, B, A])
    assert out["labels"].tolist() == [1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.7])


def test_weighted_merge_averages_by_score():
    boxes, scores, _ = tiling.merge_weighted(_t([[10, 10, 50, 50], [14, 10, 54, 50], [200, 200, 220, 220]]),
                                             torch.tensor([0.75, 0.25, 0.5]), torch.tensor([1, 1, 1]), 0.5)
    assert boxes.tolist() == [[11, 10, 51, 50], [200, 200, 220, 220]]  # 0.75 * 10 + 0.25 * 14 = 11
    assert scores.tolist() == [0.75, 0.5]
    out = _merge([[10, 10, 50, 50], [14, 10, 54, 50], [10, 10, 50, 50]], [0.75, 0.25, 0.6], [1, 1, 2],
                 [False] * 3, [A, B, A], merge="weighted")
    assert out["boxes"].tolist() == [[11, 10, 51, 50], [10, 10, 50, 50]] and out["labels"].tolist() == [1, 2]


def test_top_k_is_taken_after_merging():
    """Two tiles, 3 boxes each (under top_k = 4), 6 in all; a duplicate pair merges first: 5 distinct -> the 4
    best, the duplicate's better score among them."""
    boxes = [[10, 10, 20, 20], [30, 30, 40, 40], [60, 60, 70, 70],
             [300, 10, 310, 20], [320, 30, 330, 40], [60, 60, 70, 70]]
    out = _merge(boxes, [0.9, 0.2, 0.5, 0.8, 0.3, 0.95], [1] * 6, [False] * 6, [A, A, A, B, B, B], top_k=4)
    assert out["scores"].tolist() == pytest.approx([0.95, 0.9, 0.8, 0.3])
    assert out["boxes"][0].tolist() == [60, 60, 70, 70]


# ------------------------------------------------------------------------------------------------ the predictor
class FakePredictor:
    """Predictor's contract: per image one box in its middle (label 1) and one at its right edge (label 2);
    records the size of every call and the crops' shapes."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.shapes: list[tuple[int, int]] = []
        self.names = {1: "a", 2: "b"}

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.calls.append(len(images))
        out = []
        for img in images:
            h, w = img.shape[-2:]
            self.shapes.append((h, w))
            out.append({"boxes": _t([[w / 2 - 4, h / 2 - 4, w / 2 + 4, h / 2 + 4], [w - 10, 0, w, 10]]),
                        "scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([1, 2])})
        return out


def test_tiles_go_in_bounded_batches_and_boxes_shift_back():
    fake = FakePredictor()
    image = torch.zeros(3, 600, 1000, dtype=torch.uint8)
    res = TiledPredictor(fake, TileOptions(256, overlap=0.2, full_image=True), batch_size=4, top_k=1000)([image])[0]
    assert fake.calls == [1, 4, 4, 4, 3]  # the whole image, then 15 tiles 4 at a time
    assert fake.shapes[0] == (600, 1000) and set(fake.shapes[1:]) == {(256, 256)}
    centres = {tuple(b) for b, c in zip(res["boxes"].tolist(), res["labels"].tolist(), strict=True) if c == 1}
    expected = {(x0 + 124, y0 + 124, x0 + 132, y0 + 132) for x0, y0, _, _ in tile_grid(600, 1000, 256, 0.2)}
    assert expected <= centres  # each tile's middle box, in image pixels
    # label 2 sits at each tile's top-right corner: cut (but on the image border) and seen by no other window,
    # so kept; the whole image's own (990, 0, 1000, 10) and the top-right tile's are one box after NMS
    right = [b for b, c in zip(res["boxes"].tolist(), res["labels"].tolist(), strict=True) if c == 2]
    assert len(right) == 15 and right.count([990, 0, 1000, 10]) == 1


def test_small_image_is_the_plain_path():
    fake = FakePredictor()
    image = torch.zeros(3, 200, 240, dtype=torch.uint8)
    res = TiledPredictor(fake, TileOptions(256, full_image=True))([image])[0]
    assert fake.calls == [1] and fake.shapes == [(200, 240)]
    assert res["boxes"].tolist() == [[116, 96, 124, 104], [230, 0, 240, 10]]


def test_ten_thousand_pixel_image_in_bounded_batches():
    """A 10,000 x 10,000 image (300 MB as uint8): tiles of 1,024 go 8 at a time as views; nothing else is copied."""
    fake = FakePredictor()
    image = torch.zeros(3, 10_000, 10_000, dtype=torch.uint8)
    res = TiledPredictor(fake, TileOptions(1024, overlap=0.1), batch_size=8, top_k=100)([image])[0]
    n = len(tile_grid(10_000, 10_000, 1024, 0.1))
    assert n == 11 * 11 and sum(fake.calls) == n and max(fake.calls) == 8
    assert len(res["boxes"]) == 100 and (res["boxes"] <= 10_000).all()


@pytest.fixture(scope="module")
def tiny_model() -> DynamicDETR:
    torch.manual_seed(0)
    cfg = tiny_config(classes=SHAPES, px=96)
    model = DynamicDETR(cfg.model).eval()
    model.run_config = cfg
    return model


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)


def _by_hand(predictor, image: torch.Tensor, options: TileOptions, top_k: int) -> dict[str, torch.Tensor]:
    """What tiling should give: the predictor on each crop alone, shifted, flagged and merged by hand."""
    h, w = image.shape[-2:]
    parts = []
    for x0, y0, x1, y1 in tile_grid(h, w, options.size, options.overlap):
        r = predictor([image[:, y0:y1, x0:x1].clone()])[0]
        boxes = r["boxes"] + torch.tensor([x0, y0, x0, y0])
        parts.append((boxes, r["scores"], r["labels"], cut_flags(boxes, (x0, y0, x1, y1), (h, w), 2.56),
                      _t([(x0, y0, x1, y1)]).expand(len(boxes), 4)))
    return merge_detections(*(torch.cat(p) for p in zip(*parts, strict=True)), merge=options.merge,
                            iou=options.iou, top_k=top_k, margin=2.56)


def _check_tiled(predictor, image: torch.Tensor, options: TileOptions) -> None:
    counted = CountingPredictor(predictor)
    res = TiledPredictor(counted, options, batch_size=4, top_k=30)([image])[0]
    assert counted.calls == [4, 2]  # 6 tiles of 128 over 200 x 300
    ref = _by_hand(predictor, image, options, 30)
    assert len(res["boxes"]) == len(ref["boxes"]) > 0
    torch.testing.assert_close(res["boxes"], ref["boxes"].clamp(min=0), atol=1e-3, rtol=0)
    torch.testing.assert_close(res["scores"], ref["scores"], atol=1e-5, rtol=0)
    assert torch.equal(res["labels"], ref["labels"])
    boxes = res["boxes"]
    assert (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 200).all() and (boxes >= 0).all()
    assert set(res["labels"].tolist()) <= set(SHAPES)


class CountingPredictor:
    def __init__(self, predictor) -> None:
        self.predictor, self.calls = predictor, []

    def __call__(self, images):
        self.calls.append(len(images))
        return self.predictor(images)


def test_pytorch_model_end_to_end(tiny_model):
    """The real predictor over views of a 200 x 300 image (tiles of 128, each resized to the model's 96 px): what
    it finds on each crop alone, merged. (Untrained: its boxes are large, so most are cut.)"""
    predictor = Predictor(tiny_model, tiny_model.run_config, torch.device("cpu"))
    image = _image(200, 300)
    _check_tiled(predictor, image, TileOptions(128, overlap=0.25, merge="weighted"))
    _check_tiled(predictor, image, TileOptions(128, overlap=0.25))
    small = TiledPredictor(predictor, TileOptions(128), top_k=5)([_image(90, 100, 1)])[0]
    plain = predictor([_image(90, 100, 1)])[0]
    assert torch.equal(small["boxes"], plain["boxes"][:5])  # fits in a tile: the plain path


def test_onnx_model_end_to_end(tiny_model, tmp_path):
    """An exported graph (free batch) through the same tiling."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from dynamic_detr.export.onnx_export import export_onnx
    from dynamic_detr.export.onnx_runner import load_onnx

    export_onnx(tiny_model, tmp_path / "m.onnx", (128, 128), dynamic_batch=True, portable=True)
    detector, cfg = load_onnx(tmp_path / "m.onnx")
    _check_tiled(Predictor(detector, cfg, torch.device("cpu")), _image(200, 300), TileOptions(128, overlap=0.25))


# ------------------------------------------------------------------------------------------------ bad options
@pytest.mark.parametrize("options, message", [
    (TileOptions(8), "tile size"), (TileOptions(256.0), "tile size"),  # type: ignore[arg-type]
    (TileOptions(256, overlap=0.95), "tile overlap"), (TileOptions(256, overlap=-0.1), "tile overlap"),
    (TileOptions(256, merge="wbf"), "tile merge"), (TileOptions(256, iou=0.0), "iou")])
def test_bad_options_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        options.check()
    with pytest.raises(UserError, match=message):
        TiledPredictor(FakePredictor(), options)


def test_tile_argument_forms():
    assert tiling.as_tile_options(None) is None
    assert tiling.as_tile_options(300) == TileOptions(300)
    assert tiling.as_tile_options(TileOptions(300, merge="weighted")).merge == "weighted"
    with pytest.raises(UserError, match="tile must be"):
        tiling.as_tile_options("300")
    with pytest.raises(UserError, match="tile batch size"):
        TiledPredictor(FakePredictor(), TileOptions(256), batch_size=0)


def test_weighted_merge_of_empty_boxes():
    """A box of zero area (untrained models give them, clamped to a tile's edge) stays its own cluster."""
    boxes, _, _ = tiling.merge_weighted(_t([[0, 0, 128, 0], [0, 0, 128, 0], [5, 5, 9, 9]]),
                                        torch.tensor([0.5, 0.4, 0.3]), torch.tensor([1, 1, 1]), 0.5)
    assert not boxes.isnan().any() and len(boxes) == 3


class OraclePredictor:
    """Sees exactly the ground truth: each crop's boxes clipped to it (a cut object is seen in part), in crop
    pixels. Crops are told apart by their data pointer's offset into the image."""

    def __init__(self, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> None:
        self.image, self.boxes, self.labels = image, boxes, labels
        self.scores = torch.linspace(0.9, 0.5, len(boxes))

    def __call__(self, crops: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for crop in crops:
            offset = (crop.data_ptr() - self.image.data_ptr()) // crop.element_size()
            y0, x0 = divmod(offset, self.image.shape[-1])
            h, w = crop.shape[-2:]
            clipped = torch.stack([self.boxes[:, 0].clamp(x0, x0 + w), self.boxes[:, 1].clamp(y0, y0 + h),
                                   self.boxes[:, 2].clamp(x0, x0 + w), self.boxes[:, 3].clamp(y0, y0 + h)], 1)
            seen = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            out.append({"boxes": clipped[seen] - torch.tensor([x0, y0, x0, y0]), "scores": self.scores[seen],
                        "labels": self.labels[seen]})
        return out


@pytest.mark.parametrize("overlap, sides", [(0.2, (8, 40)), (0.0, (8, 40)), (0.2, (60, 150))])
@pytest.mark.parametrize("merge", ["nms", "weighted"])
def test_oracle_gives_back_every_object_once(overlap, sides, merge):
    """Objects on a jittered grid of a 1,000 x 800 image, tiles of 256: with overlap every small object is whole in
    some tile (the cut views lose); without overlap, and for objects larger than the overlap, the cut parts join.
    Either way each object comes back once, with its own box."""
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(3, 800, 1000, dtype=torch.uint8)
    step = sides[1] + 30
    xs, ys = torch.meshgrid(torch.arange(5, 1000 - step, step), torch.arange(5, 800 - step, step), indexing="xy")
    n = xs.numel()
    wh = torch.randint(sides[0], sides[1] + 1, (n, 2), generator=g)
    x0 = xs.flatten() + torch.randint(0, 25, (n,), generator=g)
    y0 = ys.flatten() + torch.randint(0, 25, (n,), generator=g)
    boxes = torch.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], 1).float()
    labels = torch.randint(1, 4, (n,), generator=g)
    oracle = OraclePredictor(image, boxes, labels)
    res = TiledPredictor(oracle, TileOptions(256, overlap=overlap, merge=merge), top_k=1000)([image])[0]
    got = sorted(zip(res["boxes"].round(decimals=3).tolist(), res["labels"].tolist(), strict=True))
    assert got == sorted(zip(boxes.tolist(), labels.tolist(), strict=True))
