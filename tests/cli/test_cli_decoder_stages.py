"""`--decoder-stages N` (predict, eval, export, serve): a loaded model runs its first N decoder stages; a depth the
model does not have, or an ONNX file (its depth fixed at export), is a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from builders import save_untrained_tiny
from dynamic_detr.cli.main import main
from dynamic_detr.errors import ConfigError
from dynamic_detr.model.loading import load_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_untrained_tiny(tmp_path_factory.mktemp("model") / "m")  # cpu_tiny: 2 decoder stages


def test_load_model_with_fewer_stages(model_dir):
    model, cfg = load_model(model_dir, decoder_stages=1)
    assert cfg.model.decoder.eval_stages == 1 and model.cfg.decoder.eval_stages == 1
    with torch.no_grad():
        assert len(model(torch.rand(1, 3, 96, 128))["stages"]) == 1
    with pytest.raises(ConfigError, match=r"m/model.safetensors: decoder stages: 3 is not in \[0, 2\]"):
        load_model(model_dir, decoder_stages=3)


def test_predict_with_fewer_stages(model_dir, tmp_path, capsys):
    Image.new("RGB", (128, 96), (90, 120, 60)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(model_dir), "--out", str(out),
                 "--decoder-stages", "1", "--device", "cpu"]) == 0
    assert "detections" in json.loads((out / "a.json").read_text())


@pytest.mark.parametrize("command", ["predict", "eval", "serve"])
def test_bad_depth_and_onnx_are_one_line_errors(model_dir, tmp_path, capsys, command):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    args = {"predict": ["predict", str(tmp_path), "--out", str(tmp_path / "o")],
            "eval": ["eval", "--data", str(tmp_path)], "serve": ["serve", "--port", "0"]}[command]
    assert main([*args, "--checkpoint", str(model_dir), "--decoder-stages", "3", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "3 is not in [0, 2]" in err, err
    onnx = tmp_path / "model.onnx"
    assert main([*args, "--checkpoint", str(onnx), "--decoder-stages", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ONNX file, its decoder depth was fixed" in err, err
