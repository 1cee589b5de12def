"""`predict --tile` and `eval --tile` (docs/tiling.md) on an untrained cpu_tiny model: what they write is what
`TiledPredictor` finds on the original images; bad tile options are one-line errors before anything runs."""

from __future__ import annotations

import json

import pytest
import torch

from builders import save_untrained_tiny, shapes_dataset
from dynamic_detr.cli.main import main
from dynamic_detr.data.image_io import read_image
from dynamic_detr.evaluate.metrics import to_coco_detections
from dynamic_detr.model.loading import load_model
from dynamic_detr.predict.predictor import Predictor
from dynamic_detr.predict.tiling import TiledPredictor, TileOptions

SIZES = [(200, 300), (150, 150)]  # (h, w): 2 x 3 tiles of 128, and 2 x 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiling")
    data = shapes_dataset(root / "data", {"val": SIZES})
    return data, save_untrained_tiny(root / "model")


def _tiled(model_dir, options: TileOptions, **kw) -> TiledPredictor:
    model, cfg = load_model(model_dir, torch.device("cpu"))
    return TiledPredictor(Predictor(model, cfg, torch.device("cpu")), options, **kw)


def test_predict_tile_writes_tiled_detections(setup, tmp_path, capsys):
    data, model_dir = setup
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(model_dir), "--out", str(out), "--threshold", "0.05",
                 "--batch-size", "4", "--tile", "128", "--tile-overlap", "0.3", "--tile-merge", "weighted",
                 str(data / "val")]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    tiled = _tiled(model_dir, TileOptions(128, overlap=0.3, merge="weighted"), batch_size=4, min_score=0.05)
    for name in ("0000", "0001"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["detections"]
        ref = tiled([read_image(data / "val" / f"{name}.png")])[0]
        keep = ref["scores"] >= 0.05
        assert [d["box"] for d in record["detections"]] == [[round(float(v), 2) for v in b]
                                                             for b in ref["boxes"][keep]]
        assert (out / f"{name}.png").is_file()


def test_predict_tile_max_detections_caps_the_image_after_merging(setup, tmp_path, capsys):
    data, model_dir = setup
    tiled = _tiled(model_dir, TileOptions(128), batch_size=4, min_score=0.01)
    ref = tiled([read_image(data / "val" / "0000.png")])[0]
    assert len(ref["scores"]) > 1  # the cap below bites
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(model_dir), "--out", str(out), "--threshold", "0.01", "--tile",
                 "128", "--tile-max-detections", "1", str(data / "val" / "0000.png")]) == 0
    record = json.loads((out / "0000.json").read_text())
    assert [d["score"] for d in record["detections"]] == [round(float(v), 4) for v in ref["scores"][:1]]
    assert main(["predict", "--checkpoint", str(model_dir), "--out", str(tmp_path / "o"), "--tile-max-detections",
                 "3", str(data / "val" / "0000.png")]) == 2  # without --tile: refused, nothing written
    assert not (tmp_path / "o").exists()


def test_eval_tile_scores_original_images(setup, tmp_path, capsys):
    data, model_dir = setup
    dets_path, metrics_path = tmp_path / "dets.json", tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(model_dir), "--data", str(data), "--split", "val", "--workers", "0",
                 "--tile", "128", "--tile-full-image", "--save-detections", str(dets_path),
                 "--out", str(metrics_path)]) == 0
    assert "AP50" in capsys.readouterr().out
    assert set(json.loads(metrics_path.read_text())) >= {"AP", "APs", "per_class"}
    tiled = _tiled(model_dir, TileOptions(128, full_image=True), batch_size=4)
    ref = to_coco_detections([tiled([read_image(data / "val" / f"{i:04d}.png")])[0] for i in range(2)], [1, 2])
    assert json.loads(dets_path.read_text()) == ref  # not the eval loader's resized images


@pytest.mark.parametrize("argv, message", [
    (["--tile-overlap", "0.3"], "--tile-overlap needs --tile"),
    (["--tile-full-image"], "--tile-full-image needs --tile"),
    (["--tile", "8"], "--tile must be at least 16"),
    (["--tile", "128", "--tile-overlap", "0.95"], "--tile-overlap must be a fraction"),
])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_bad_tile_options_are_one_line_errors(setup, tmp_path, capsys, command, argv, message):
    data, model_dir = setup
    where = ["--out", str(tmp_path / "o"), str(data / "val")] if command == "predict" else ["--data", str(data)]
    assert main([command, "--checkpoint", str(model_dir), *where, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_eval_tile_refuses_amp(setup, capsys):
    data, model_dir = setup
    assert main(["eval", "--checkpoint", str(model_dir), "--data", str(data), "--tile", "128", "--amp", "bf16"]) == 2
    assert "--amp" in capsys.readouterr().err
