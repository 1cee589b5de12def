"""An exported graph where a checkpoint runs: the config read back from the graph's metadata, the same
pre-processing and detections as PyTorch eval, `predict` / `eval --checkpoint model.onnx`, one-line errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import overfit_run, shapes_dataset
from dynamic_detr.api import save_pretrained
from dynamic_detr.cli.main import main
from dynamic_detr.export.onnx_runner import load_onnx
from dynamic_detr.predict.predictor import Predictor
from export_helpers import CATEGORY_IDS, CLASS_NAMES, live_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# (h, w) of the test images: portrait, landscape, square, very wide; after the eval resize (96 / 128) they are
# 128x96, 96x128, 96x96 and 32x128 on the graph's 128x128 canvas
SHAPES = [(120, 90), (60, 80), (70, 70), (40, 160)]


@pytest.fixture(scope="module")
def model():
    return live_model()


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    """The model saved, and exported by the CLI at its default canvas (128x128): native with a fixed batch of 3,
    portable with a free batch. (Batch 1, the default, runs as batch 3 does, one image per chunk: the slow test
    below exports it.)"""
    root = tmp_path_factory.mktemp("graphs")
    save_pretrained(model, root / "model")
    for name, extra in (("batch3", ["--batch", "3"]), ("dynamic", ["--dynamic", "--portable"])):
        assert main(["export", "--checkpoint", str(root / "model"), "--out", str(root / f"{name}.onnx"),
                     *extra]) == 0
    return root


def _images(seed: int = 0) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 255, (3, h, w), dtype=np.uint8)) for h, w in SHAPES]


def test_metadata_carries_config_and_input(graphs):
    detector, cfg = load_onnx(graphs / "batch3.onnx")
    assert cfg.model.category_ids == CATEGORY_IDS and cfg.model.class_names == CLASS_NAMES
    assert (cfg.data.eval_short_side, cfg.data.eval_max_size) == (96, 128)
    assert detector.canvas == (128, 128) and detector.top_k == 100 and detector.fixed_batch == 3
    assert load_onnx(graphs / "dynamic.onnx")[0].fixed_batch is None


@pytest.mark.parametrize("name", ["batch3", "dynamic"])
def test_runner_gives_pytorch_eval_detections(model, graphs, name):
    """The same images through `Predictor` (eval resize, padded batch of 4) give the same detections from the
    graph as from the PyTorch model: the letterbox keeps each image as eval sees it, and the padding-aware
    model makes the canvas' extra padding irrelevant. A batch of 4 on the graph of batch 3 runs in 2 chunks."""
    detector, cfg = load_onnx(graphs / f"{name}.onnx")
    images = _images()
    ref = Predictor(model, model.run_config, torch.device("cpu"))(images)
    got = Predictor(detector, cfg, torch.device("cpu"))(images)
    assert len(got) == len(images)
    for r, g, (h, w) in zip(ref, got, SHAPES, strict=True):
        torch.testing.assert_close(g["boxes"][:10], r["boxes"][:10], atol=0.5, rtol=0)  # original pixels
        torch.testing.assert_close(g["scores"][:10], r["scores"][:10], atol=1e-3, rtol=0)
        assert torch.equal(g["labels"][:10], r["labels"][:10])
        assert (g["boxes"][:, 2] <= w).all() and (g["boxes"][:, 3] <= h).all()


def test_cli_predict_with_onnx(model, graphs, tmp_path):
    """`predict --checkpoint model.onnx` writes what `predict --checkpoint MODEL` does. One batch of 4: PyTorch
    pads it to 128x128 as the graph's canvas is, so that the backbone's border effect (padded activations next
    to the image, model/padding.py) is the same; it is large for the 32x128 image alone (one row at stride 32)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(_images()):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    outs = {}
    for name, ckpt in (("torch", graphs / "model"), ("onnx", graphs / "batch3.onnx")):
        outs[name] = tmp_path / name
        assert main(["predict", "--checkpoint", str(ckpt), "--out", str(outs[name]), "--threshold", "0.0",
                     "--batch-size", "4", str(folder)]) == 0
    for i in range(len(SHAPES)):
        ref = json.loads((outs["torch"] / f"{i}.json").read_text())["detections"][:10]
        got = json.loads((outs["onnx"] / f"{i}.json").read_text())["detections"][:10]
        assert [d["category"] for d in got] == [d["category"] for d in ref]
        assert {d["category"] for d in got} <= set(CLASS_NAMES)
        np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in ref], atol=0.5)
        assert (outs["onnx"] / f"{i}.png").is_file()


def _eval(ckpt, data, tmp_path, name: str, batch: int = 4) -> tuple[dict, list[dict]]:
    out, dets = tmp_path / f"{name}_metrics.json", tmp_path / f"{name}_dets.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--workers", "0", "--batch-size", str(batch),
                 "--out", str(out), "--save-detections", str(dets)]) == 0
    return json.loads(out.read_text()), json.loads(dets.read_text())


def test_cli_eval_with_onnx_matches_checkpoint(graphs, tmp_path):
    """`eval --checkpoint model.onnx` scores the same detections as the checkpoint (random weights: AP near 0,
    so the detections themselves are compared; the slow test below compares the AP of a trained model). One
    PyTorch batch of 5, padded to 128x128 as the graph's canvas is (a portrait and a landscape image reach 128):
    the backbone's border effect is then the same; the graph (fixed batch 3) runs 3, then 2 and a blank."""
    data = shapes_dataset(tmp_path / "data", {"val": [(96, 96), (120, 80), (70, 140), (100, 100), (64, 96)]},
                          corner=False)
    ref_metrics, ref = _eval(graphs / "model", data, tmp_path, "torch", batch=5)
    got_metrics, got = _eval(graphs / "batch3.onnx", data, tmp_path, "onnx", batch=5)
    assert len(got) == len(ref) == 5 * 30  # cpu_tiny: top 30 of 10 queries x 3 classes
    for image_id in range(1, 6):
        r = [d for d in ref if d["image_id"] == image_id][:10]
        g = [d for d in got if d["image_id"] == image_id][:10]
        assert [d["category_id"] for d in g] == [d["category_id"] for d in r]
        np.testing.assert_allclose([d["bbox"] for d in g], [d["bbox"] for d in r], atol=0.5)
        np.testing.assert_allclose([d["score"] for d in g], [d["score"] for d in r], atol=1e-3)
    assert abs(got_metrics["AP"] - ref_metrics["AP"]) <= 0.5


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_of_trained_model_onnx_matches_checkpoint_ap(tmp_path):
    """A model trained to fit 4 images of several aspect ratios (`overfit_run` for 8 epochs: 128 steps; AP 77,
    AP50 100 on them, measured): its exported graph's AP on them is the checkpoint's within 0.5."""
    sizes = [(96, 96), (120, 80), (72, 128), (100, 100)]
    overfit_run(tmp_path, epochs=8, images=sizes, corner=False, threads=None)
    data = tmp_path / "data"
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")]) == 0
    ref, _ = _eval(tmp_path / "run", data, tmp_path, "torch")
    got, _ = _eval(tmp_path / "m.onnx", data, tmp_path, "onnx")
    assert ref["AP50"] > 50, ref  # trained: the comparison means something
    assert abs(got["AP"] - ref["AP"]) <= 0.5 and abs(got["AP50"] - ref["AP50"]) <= 0.5, (got, ref)


# ------------------------------------------------------------------------------------------ one-line errors
def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


def _predict(path, tmp_path) -> list[str]:
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(img)
    return ["predict", "--checkpoint", str(path), "--out", str(tmp_path / "out"), str(img)]


def test_missing_onnxruntime_is_one_line_error(graphs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    err = _error(capsys, _predict(graphs / "batch3.onnx", tmp_path))
    assert "onnxruntime" in err and "pip install 'dynamic-detr[export]'" in err and "batch3.onnx" in err


def test_graph_without_metadata_is_one_line_error(graphs, tmp_path, capsys):
    graph = onnx.load(str(graphs / "batch3.onnx"))
    del graph.metadata_props[:]  # as an earlier version exported it
    old = tmp_path / "old.onnx"
    onnx.save(graph, str(old))
    err = _error(capsys, ["eval", "--checkpoint", str(old), "--data", str(tmp_path)])
    assert "old.onnx" in err and "no dynamic-detr metadata" in err and "export it again" in err


def _with_metadata(graphs, tmp_path, edit) -> Path:
    """batch3.onnx with its dynamic-detr metadata JSON text replaced by `edit(meta)`."""
    from dynamic_detr.export.onnx_export import METADATA_KEY, add_metadata

    graph = onnx.load(str(graphs / "batch3.onnx"))
    meta = json.loads(next(p.value for p in graph.metadata_props if p.key == METADATA_KEY))
    out = tmp_path / "edited.onnx"
    onnx.save(graph, str(out))
    add_metadata(out, {METADATA_KEY: edit(meta)})
    return out


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: json.dumps({**m, "input": {**m["input"], "height": 10**9, "width": 10**9}}), "malformed"),
    (lambda m: json.dumps({**m, "input": {**m["input"], "height": 0}}), "malformed"),
    (lambda m: json.dumps({**m, "top_k": 10**12}), "malformed"),
    (lambda m: json.dumps({**m, "input": {**m["input"], "height": 64}}), "is not the graph's 128x128"),
    (lambda m: '{"format": 1, "config": ' + "[" * 100_000 + "]" * 100_000 + "}", "malformed"),
])
def test_untrusted_metadata_is_one_line_error(graphs, tmp_path, capsys, edit, message):
    """The metadata is read from a file a user was given: a huge or zero canvas, a canvas that is not the
    graph's input size, a huge top-k and deeply nested JSON are each a one-line error, never an allocation or
    a RecursionError traceback."""
    err = _error(capsys, _predict(_with_metadata(graphs, tmp_path, edit), tmp_path))
    assert "edited.onnx" in err and message in err, err


@pytest.mark.parametrize("content", [b"", b"not a graph" * 20])
def test_invalid_graph_is_one_line_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    err = _error(capsys, _predict(bad, tmp_path))
    assert "bad.onnx" in err and "not a valid ONNX graph" in err
    err = _error(capsys, _predict(tmp_path / "missing.onnx", tmp_path))
    assert "missing.onnx: no such file" in err


def test_blank_fill_does_not_change_results(graphs):
    """A fixed batch of 3 with 4 images runs 3 + (1 and 2 blanks); the blanks' detections are dropped and the
    real image's do not depend on them (the free-batch graph runs all 4 at once)."""
    detector, cfg = load_onnx(graphs / "batch3.onnx")
    single, _ = load_onnx(graphs / "dynamic.onnx")
    images = _images()
    a = Predictor(detector, cfg, torch.device("cpu"))(images)
    b = Predictor(single, cfg, torch.device("cpu"))(images)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["scores"], y["scores"], atol=1e-5, rtol=0)
        assert math.isclose(float((x["boxes"] - y["boxes"]).abs().max()), 0.0, abs_tol=1e-2)
