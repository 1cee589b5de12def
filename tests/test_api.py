"""Python API (api.py): predict on every input type, save_pretrained / from_pretrained round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dynamic_detr.api import detect, from_pretrained, save_pretrained
from dynamic_detr.errors import CheckpointError, UserError
from export_helpers import CLASS_NAMES, live_model


@pytest.fixture(scope="module")
def model():
    return live_model()


@pytest.fixture(scope="module")
def array():
    """At the eval size (96 x 128), so that a float copy is not resized differently from the uint8 one."""
    return np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def _same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-2, rtol=0)  # pixels; batch size changes rounding
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
    assert torch.equal(a["labels"], b["labels"]) and a["names"] == b["names"]


def test_predict_accepts_every_input_type(model, array, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    inputs = [array, Image.fromarray(array), tensor, tensor.float() / 255, path, str(path)]
    results = detect(model, inputs, threshold=0.0, batch_size=4)
    assert len(results) == len(inputs)
    ref = results[0]
    assert len(ref["scores"]) == 30  # 10 queries x 3 classes, top-k of (query, class) pairs
    for res in results[1:]:
        _same(res, ref)
    _same(detect(model, array, threshold=0.0)[0], ref)  # a single image: a list of one result
    gray = detect(model, array[..., 0], threshold=0.0)[0]  # HW: grey
    assert len(gray["scores"]) == 30


def test_predict_boxes_names_and_threshold(model, array):
    res = detect(model, array, threshold=0.0)[0]
    assert (res["boxes"][:, 2] <= 128).all() and (res["boxes"][:, 3] <= 96).all() and (res["boxes"] >= 0).all()
    assert res["names"] == [CLASS_NAMES[[3, 7, 9].index(int(c))] for c in res["labels"]]
    cut = float(res["scores"].median())
    kept = detect(model, array, threshold=cut)[0]
    assert 0 < len(kept["scores"]) < 30 and (kept["scores"] >= cut).all()
    assert len(kept["names"]) == len(kept["scores"]) == len(kept["boxes"])


def test_predict_batching_does_not_change_results(model):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    for a, b in zip(detect(model, images, 0.0, batch_size=2), detect(model, images, 0.0, batch_size=1),
                    strict=True):
        _same(a, b)
        assert (a["boxes"][:, 2] <= 120).all() and (a["boxes"][:, 3] <= 90).all()  # original pixels
        assert (a["boxes"][:, 2] > 100).any()


def test_predict_rejects_unknown_input(model):
    with pytest.raises(UserError, match="int"):
        detect(model, 123)
    with pytest.raises(UserError, match=r"\[3, H, W\]"):
        detect(model, torch.zeros(1, 3, 8, 8))


def test_save_pretrained_round_trip(model, array, tmp_path):
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"]["class_names"] == CLASS_NAMES and cfg["data"]["eval_short_side"] == 96
    loaded = from_pretrained(tmp_path / "m")
    assert not loaded.training and loaded.run_config.data.eval_short_side == 96
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a, b = detect(model, array, threshold=0.0)[0], detect(loaded, array, threshold=0.0)[0]
    assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels")) and a["names"] == b["names"]


def test_from_pretrained_errors(model, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        from_pretrained(tmp_path / "missing")
    save_pretrained(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable"):
        from_pretrained(tmp_path / "m")


def test_the_package_exposes_the_api_lazily():
    import dynamic_detr
    from dynamic_detr import api

    assert (dynamic_detr.from_pretrained, dynamic_detr.save_pretrained, dynamic_detr.detect) == (
        api.from_pretrained, api.save_pretrained, api.detect)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dynamic_detr.nothing  # noqa: B018


def test_detect_tiled(model, tmp_path):
    """`tile=` runs `TiledPredictor` on each image: an int is a tile side, TileOptions the full set; an image that
    fits in one tile gives the plain path's detections; a bad value is a one-line UserError."""
    import dynamic_detr
    from dynamic_detr.predict.predictor import Predictor
    from dynamic_detr.predict.tiling import TiledPredictor, TileOptions

    big = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    small = np.random.default_rng(2).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    assert dynamic_detr.TileOptions is TileOptions
    got = detect(model, [big, small], threshold=0.0, batch_size=3, tile=TileOptions(128, merge="weighted"))
    predictor = Predictor(model, model.run_config, torch.device("cpu"))
    ref = TiledPredictor(predictor, TileOptions(128, merge="weighted"), batch_size=3)
    for res, image in zip(got, [big, small], strict=True):
        expected = ref([torch.from_numpy(image).permute(2, 0, 1)])[0]
        torch.testing.assert_close(res["boxes"], expected["boxes"], atol=1e-3, rtol=0)
        assert res["names"] == [model.run_config.model.names()[int(c)] for c in expected["labels"]]
    _same(detect(model, small, threshold=0.0, tile=128)[0], detect(model, small, threshold=0.0)[0])
    assert (detect(model, big, threshold=0.3, tile=128)[0]["scores"] >= 0.3).all()
    with pytest.raises(UserError, match="tile overlap"):
        detect(model, big, tile=TileOptions(128, overlap=1.5))
    with pytest.raises(UserError, match="tile must be"):
        detect(model, big, tile="128")
