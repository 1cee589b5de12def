"""Fine-tuning (`train --weights`): every tensor whose name and shape fit is loaded, class heads built for another
number of classes keep their fresh init (focal prior bias included) and are reported, and the run is a new one
(epoch 0, fresh optimizer), never a resume."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch

from builders import shapes_dataset, tiny_config
from dynamic_detr.api import save_pretrained
from dynamic_detr.checkpoint import load_checkpoint, save_checkpoint
from dynamic_detr.cli.main import main
from dynamic_detr.config import Config
from dynamic_detr.data.synthetic import generate
from dynamic_detr.errors import CheckpointError
from dynamic_detr.model import DynamicDETR
from dynamic_detr.model.decoder import PRIOR_PROB
from dynamic_detr.model.loading import transfer_weights

TINY = ["data.num_workers=0", "data.train_short_sides=[96]", "data.train_max_size=128",
        "data.eval_short_side=96", "data.eval_max_size=128", "data.crop_prob=0.0"]


def _config(num_classes: int, prefix: str = "c") -> Config:
    """cpu_tiny with every kind of class head: the decoder stages' class FCs, the dense head's class conv and
    the denoising queries' label embedding."""
    return tiny_config({"model.dense.enabled": True, "model.decoder.dn_queries": 4},
                       classes={i + 1: f"{prefix}{i}" for i in range(num_classes)})


def _is_class_head(name: str) -> bool:
    return ".cls_head." in name or name.startswith(("dense_head.cls_logits.", "label_embed."))


def _source(num_classes: int, seed: int = 0) -> tuple[DynamicDETR, Config]:
    torch.manual_seed(seed)
    cfg = _config(num_classes)
    model = DynamicDETR(cfg.model)
    with torch.no_grad():  # trained class heads: far from any fresh init
        for name, p in model.named_parameters():
            if _is_class_head(name):
                p.add_(1.0)
    model.run_config = cfg
    return model, cfg


@pytest.mark.parametrize("saved_as", ["checkpoint", "model_dir"])
def test_weights_of_5_classes_into_3_keep_fresh_class_heads(tmp_path, saved_as):
    source, source_cfg = _source(5)
    if saved_as == "checkpoint":
        path = tmp_path / "best.pt"
        save_checkpoint(path, {"model": source.state_dict(), "config": source_cfg.to_dict()})
    else:
        path = tmp_path / "model"
        save_pretrained(source, path)
    torch.manual_seed(1)
    target = DynamicDETR(_config(3).model)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}

    report = transfer_weights(target, path)

    theirs, ours = source.state_dict(), target.state_dict()
    heads = {k for k in ours if _is_class_head(k)}
    assert len(heads) == 2 * 2 + 2 + 1  # 2 stages' class FC (weight, bias), dense class conv (same), label embedding
    assert {name for name, _, _ in report.mismatched} == heads
    assert report.missing == [] and report.unexpected == []
    assert report.total == len(ours) and sorted(report.loaded) == sorted(set(ours) - heads)
    changed = 0
    for k, v in ours.items():
        if k in heads:
            assert torch.equal(v, fresh[k]), k
        else:
            assert torch.equal(v, theirs[k]), k
            changed += not torch.equal(fresh[k], theirs[k])
    assert changed > 20  # the load did replace the fresh weights
    prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
    biases = [k for k in heads if k.endswith(".bias")]  # the decoder's and the dense head's class biases
    assert len(biases) == 3
    for k in biases:
        assert torch.allclose(ours[k], torch.full_like(ours[k], prior)), k
    text = report.summary()
    assert f"loaded {len(ours) - len(heads)} of {len(ours)} tensors" in text
    assert "shape mismatch (7" in text
    assert "decoder.stages.*.cls_head.*" in text and "dense_head.cls_logits" in text and "label_embed" in text
    assert "5 in the file's model, 3 here" in text


def test_weights_of_the_same_model_load_whole(tmp_path):
    source, source_cfg = _source(3)
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": source.state_dict(), "config": source_cfg.to_dict()})
    torch.manual_seed(1)
    cfg = _config(3, prefix="other")  # same number of classes, other names: loaded, and said so
    target = DynamicDETR(cfg.model)
    report = transfer_weights(target, path)
    assert len(report.loaded) == report.total and not (report.mismatched or report.missing or report.unexpected)
    for k, v in target.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k
    assert "named differently" in report.summary() and "not loaded" not in report.summary()


def test_weights_that_fit_nothing_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    save_checkpoint(path, {"model": {"foo.weight": torch.zeros(2)}, "config": _config(3).to_dict()})
    with pytest.raises(CheckpointError) as info:
        transfer_weights(DynamicDETR(_config(3).model), path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------- the train command
@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory):
    """A 6-class run (synthetic shapes, 6 train images: 2 steps of 4) and a 2-class dataset to fine-tune on."""
    root = tmp_path_factory.mktemp("finetune")
    shapes = root / "shapes"
    generate(shapes, train=6, val=2, image_size=128, seed=1)
    run = root / "run"
    assert main(["train", "--data", str(shapes), "--preset", "cpu_tiny", "--out", str(run), "--epochs", "1",
                 *TINY]) == 0
    easy = shapes_dataset(root / "easy", {"train": 4, "val": 2})
    return run, easy


def test_train_with_weights_loads_them_and_starts_a_new_run(finetune_data, tmp_path, capsys):
    run, easy = finetune_data
    assert load_checkpoint(run / "last.pt")["step"] == 2
    capsys.readouterr()
    out = tmp_path / "ft"
    assert main(["train", "--data", str(easy), "--preset", "cpu_tiny", "--out", str(out), "--epochs", "1",
                 "--weights", str(run), *TINY]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"weights: loaded (\d+) of (\d+) tensors from (\S+)", printed)
    assert found, printed
    assert int(found[1]) == int(found[2]) - 4  # all but the 2 stages' class FC (weight, bias)
    assert found[3] == str(run / "best.pt")
    assert "decoder.stages.*.cls_head.*" in printed and "6 in the file's model, 2 here" in printed
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 1)  # from epoch 0: one step of 4 images, not the source's 2 + 1
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {1.0}  # a fresh optimizer
    assert state["config"]["model"]["num_classes"] == 2
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"] and rows[0]["loss"] not in ("", "nan")


@pytest.mark.parametrize("content", [None, b"", b"garbage" * 10])
def test_bad_weights_file_is_a_one_line_error(finetune_data, tmp_path, capsys, content):
    _, easy = finetune_data
    path = tmp_path / "w.pt"
    if content is not None:
        path.write_bytes(content)
    assert main(["train", "--data", str(easy), "--preset", "cpu_tiny", "--out", str(tmp_path / "r"),
                 "--weights", str(path), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "w.pt" in err and "\n" not in err, err
    assert not (tmp_path / "r").exists()


def test_weights_with_resume_is_a_one_line_error(finetune_data, tmp_path, capsys):
    run, easy = finetune_data
    assert main(["train", "--data", str(easy), "--preset", "cpu_tiny", "--out", str(tmp_path / "r"),
                 "--weights", str(run), *TINY, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--weights" in err and "--resume" in err and "\n" not in err
