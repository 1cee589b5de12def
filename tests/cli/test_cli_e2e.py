"""CLI end to end on a tiny synthetic dataset: train 1 epoch, eval, predict; clear errors on bad input."""

from __future__ import annotations

import json

import pytest

from builders import tiny_config
from dynamic_detr.api import save_pretrained
from dynamic_detr.cli.main import main
from dynamic_detr.data.synthetic import CLASSES, generate

TINY = ["data.num_workers=0", "data.train_short_sides=[128]", "data.train_max_size=160",
        "data.eval_short_side=128", "data.eval_max_size=160", "data.crop_prob=0.0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny synthetic dataset: 6 train / 3 val images of 128 px."""
    data = tmp_path_factory.mktemp("e2e") / "data"
    generate(data, train=6, val=3, image_size=128, seed=1)
    return data


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """`data` and the run folder of 1 epoch of `train` on it (CLI, in process)."""
    run = tmp_path_factory.mktemp("e2e_run") / "run"
    assert main(["train", "--data", str(data), "--preset", "cpu_tiny", "--out", str(run), "--epochs", "1",
                 *TINY]) == 0
    return data, run


@pytest.mark.slow
def test_train_writes_run_folder(trained):
    _, run = trained
    assert (run / "best.pt").is_file() and (run / "metrics.json").is_file()
    cfg = (run / "config.yaml").read_text()
    assert "num_classes: 6" in cfg and "eval_short_side: 128" in cfg


def _same_metric(a, b) -> bool:
    """Equal AP values (JSON null for an undefined one), up to float noise far below what a bug changes."""
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-3)


@pytest.mark.slow
def test_eval_writes_metrics_and_detections(trained, tmp_path, capsys):
    """`eval` of the run folder (best.pt = the weights of the only epoch) on the val split reproduces the
    trainer's own final evaluation (metrics.json), and its saved detections give back its metrics."""
    from dynamic_detr.data.coco import CocoDetection
    from dynamic_detr.evaluate.metrics import CocoEvaluator

    data, run = trained
    code = main(["eval", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "m.json"),
                 "--save-detections", str(tmp_path / "dets.json"), "--workers", "0"])
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    trainer_metrics = json.loads((run / "metrics.json").read_text())
    assert trainer_metrics["epoch"] == 1 and trainer_metrics["weights"] == "raw"
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert _same_metric(metrics[key], trainer_metrics[key]), (key, metrics[key], trainer_metrics[key])
    assert metrics["per_class"].keys() == trainer_metrics["per_class"].keys() and len(metrics["per_class"]) == 6
    for name, ap in metrics["per_class"].items():
        assert _same_metric(ap, trainer_metrics["per_class"][name]), (name, ap, trainer_metrics["per_class"][name])
    dets = json.loads((tmp_path / "dets.json").read_text())
    gt = json.loads((data / "annotations" / "instances_val.json").read_text())
    assert dets and {d["image_id"] for d in dets} <= {im["id"] for im in gt["images"]}
    assert {d["category_id"] for d in dets} <= {c["id"] for c in gt["categories"]}
    assert all(len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0 and 0 <= d["score"] <= 1
               for d in dets)
    evaluator = CocoEvaluator(CocoDetection(data, "val").coco_gt())
    evaluator.update(dets)
    again = evaluator.summarize()  # the saved detections are the ones the metrics were computed from
    assert again["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    assert again["AP50"] == pytest.approx(metrics["AP50"], abs=1e-9)
    printed = capsys.readouterr().out
    assert f"{metrics['AP']:.1f}" in printed and "AP50" in printed


@pytest.mark.slow
def test_eval_plots_writes_the_error_analysis(trained, tmp_path, capsys):
    """`eval --plots DIR`: the analysis files, a confusion matrix over the val objects, the breakdown printed."""
    from PIL import Image

    from dynamic_detr.data.coco import CocoDetection

    data, run = trained
    plots = tmp_path / "plots"
    code = main(["eval", "--checkpoint", str(run), "--data", str(data), "--plots", str(plots), "--workers", "0",
                 "--plot-threshold", "0.2"])
    assert code == 0
    for name in ("pr_curves.png", "confusion_matrix.png", "errors.png", "val_gt_vs_pred.png"):
        with Image.open(plots / name) as im:
            im.verify()
    cm = json.loads((plots / "confusion_matrix.json").read_text())
    gt = CocoDetection(data, "val").coco_gt().dataset
    assert cm["score_threshold"] == 0.2 and len(cm["names"]) == len(gt["categories"]) + 1
    objects = sum(1 for a in gt["annotations"] if not a.get("iscrowd"))
    assert sum(sum(row) for row in cm["counts"][:-1]) == objects  # every object found, confused or missed
    printed = capsys.readouterr().out
    assert "error breakdown (TIDE-style" in printed and str(plots) in printed
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--plots", str(plots),
                 "--plot-threshold", "2"]) == 2


@pytest.mark.slow
def test_predict_draws_and_writes_json(trained, tmp_path, capsys):
    data, run = trained
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "pred"
    code = main(["predict", "--checkpoint", str(run / "weights" / "last.safetensors"), "--threshold", "0.0",
                 "--out", str(out), str(data / "val"), str(bad)])
    assert code == 1  # one input skipped
    text = capsys.readouterr().out
    assert "3 image(s)" in text and "broken.png" in text
    files = sorted(p.name for p in out.iterdir())
    assert len([f for f in files if f.endswith(".png")]) == 3 and len([f for f in files if f.endswith(".json")]) == 3
    record = json.loads((out / files[0]).read_text())
    assert {"file", "width", "height", "detections"} <= set(record)
    det = record["detections"][0]
    assert len(det["box"]) == 4 and det["category"] in CLASSES


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04truncated"])
def test_bad_checkpoint_is_one_line_error(data, tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert main(["eval", "--checkpoint", str(bad), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.pt" in err and "\n" not in err


def test_missing_dataset_is_one_line_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--preset", "cpu_tiny", "--out",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err


def test_help_for_every_command(capsys):
    for cmd in ("demo", "data", "info", "train", "eval", "predict"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_end_to_end_on_given_data(data, tmp_path, capsys):
    """The demo (`make demo`), on a tiny dataset and budget: trains, evaluates once at the end, draws."""
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(data), "--out", str(out), "--preset", "cpu_tiny", "--minutes", "0.3",
                 *TINY]) == 0
    printed = capsys.readouterr().out
    assert "using the dataset in" in printed and "AP" in printed
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert 0 <= metrics["AP"] <= 100
    assert "eval_every: 1000" in (out / "run" / "config.yaml").read_text()
    assert len(list((out / "predictions").glob("*.png"))) == 3  # every val image drawn (12 at most)


def test_eval_data_on_the_command_line_wins_over_absolute_config_paths(tmp_path, capsys):
    """A model whose config names another machine's absolute val annotation / image paths is evaluated on the
    dataset given with --data (the old code silently evaluated the config's one), and eval says where it found
    the split; a relative path in the config still applies under --data."""
    from dynamic_detr.cli.evaluate import data_section_for
    from dynamic_detr.model import DynamicDETR

    there, here = tmp_path / "there", tmp_path / "here"
    generate(there, train=1, val=2, image_size=96, seed=1)
    generate(here, train=1, val=3, image_size=96, seed=2)
    cfg = tiny_config({"data.val_ann": str(there / "annotations" / "instances_val.json"),
                       "data.val_images": str(there / "val")}, classes=dict(enumerate(CLASSES, 1)))
    model = DynamicDETR(cfg.model)
    model.run_config = cfg
    save_pretrained(model, tmp_path / "m")
    out = tmp_path / "dets.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "m"), "--data", str(here), "--workers", "0",
                 "--save-detections", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"evaluating split 'val' of {here}" in printed and str(here / "annotations") in printed
    assert {d["image_id"] for d in json.loads(out.read_text())} == {1, 2, 3}  # here's 3 images, not there's 2
    kept = data_section_for(cfg.data.__class__(val_ann="annotations/mine.json", val_images=str(here / "val")), here)
    assert (kept.val_ann, kept.val_images) == ("annotations/mine.json", str(here / "val"))
