"""A short `train` on a YOLO folder through the CLI: the layout is found and reported, the run trains and
evaluates on it (slow: a real, if tiny, training run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from formats_helpers import write_yolo

from dynamic_detr.cli.main import main
from dynamic_detr.data.synthetic import generate

TINY = ["data.num_workers=0", "data.train_short_sides=[128]", "data.train_max_size=160",
        "data.eval_short_side=128", "data.eval_max_size=160", "data.crop_prob=0.0"]


@pytest.mark.slow
def test_train_on_a_yolo_folder(tmp_path: Path, capsys) -> None:
    coco = tmp_path / "coco"
    generate(coco, train=4, val=2, image_size=128, seed=2)
    yolo = write_yolo(coco, tmp_path / "yolo")
    run = tmp_path / "run"
    assert main(["train", "--data", str(yolo), "--preset", "cpu_tiny", "--out", str(run), "--epochs", "1",
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert f"data: train: YOLO: {yolo / 'data.yaml'}" in out and f"data: val: YOLO: {yolo / 'data.yaml'}" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"circle", "square", "triangle", "star", "ring", "cross"}
