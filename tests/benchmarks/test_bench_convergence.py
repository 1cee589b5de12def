"""The convergence benchmark runs (--quick: tiny data, ours on each of its code paths and every peer) and writes
its results, table and plots, so the script cannot rot; the peers' adapters keep to the shared contract."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from bench_helpers import BENCH, needs, run_bench

from dynamic_detr.data.synthetic import CLASSES
from dynamic_detr.evaluate.metrics import AP_NAMES
from dynamic_detr.model.loading import load_model


@pytest.fixture(scope="module")
def peers():
    """benchmarks/peers.py, imported the way the scripts import it (their folder first on sys.path), with
    sys.path restored afterwards: not a path insertion at import time that lasts the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        return importlib.import_module("peers")


QUICK_OURS = ("faithful", "dense_o2o", "dynamic_detr", "no_encoder")
"""Ours in the --quick run: a rung that is a config only (every other rung and ablation is one too, each checked
to be a valid config below), a rung trained through the trainer's sampler and schedule (Dense O2O), the preset
and the encoder-off model (their saved weights are loaded back). Every contender would take a minute more of CI."""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the two runs' own subprocess timeouts (600 s + 300 s) come first
@needs("transformers", extra="bench")  # --quick trains every peer, the HF ones too
def test_convergence_quick(tmp_path, peers):
    out = tmp_path / "res"
    run_bench("convergence.py", "--quick", "--only", *QUICK_OURS, *peers.PEERS, "--out", str(out), "--work",
              str(tmp_path / "work"))
    report = json.loads((out / "convergence.json").read_text())
    setup = report["setup"]
    assert (setup["epochs"], setup["minutes"], setup["batch_size"]) == (1, 0.05, 4), setup
    assert setup["data"].startswith("synthetic 16 train") and setup["data"].endswith("data seed 0"), setup
    assert setup["peer_settings"] == peers.QUICK_PEER_SETTINGS  # RT-DETR and D-FINE cut to cpu_tiny's sizes
    per_epoch = math.ceil(16 / setup["batch_size"])  # batches per epoch (the last one kept)
    assert list(report["results"]) == [*QUICK_OURS, *peers.PEERS]
    md = (out / "convergence.md").read_text()
    for name, r in report["results"].items():
        assert r["params"] > 1e6 and r["skipped"] == 0, name
        history, at_minutes = r["history"], r["at_minutes"]
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1)) and history, name
        assert r["at_epochs"] == history[0], name  # the equal-epochs point is epoch 1's evaluation
        # whole epochs, plus at most one partial epoch to reach the minutes budget
        assert per_epoch * len(history) <= r["steps"] <= per_epoch * (len(history) + 1), (name, r["steps"])
        # training time: both budgets are met, the curve's minutes only grow and stay within it, and the
        # evaluations are on top of it (wall time)
        train_minutes = r["sec_per_step"] * r["steps"] / 60
        assert train_minutes >= setup["minutes"] - 1e-9, name
        minutes = [h["minutes"] for h in history]
        assert minutes == sorted(minutes) and minutes[-1] <= train_minutes + 1e-9, name
        assert at_minutes is not None, name
        assert setup["minutes"] - 1e-9 <= at_minutes["minutes"] <= train_minutes + 1e-9, name
        assert 0 <= at_minutes["epoch"] <= len(history) + 1, name
        assert r["wall_minutes"] >= train_minutes, name
        for point in [*history, at_minutes]:
            for key in AP_NAMES:  # null: undefined (no object of that size)
                assert point[key] is None or 0 <= point[key] <= 100, (name, key, point[key])
        ap = r["at_epochs"]["AP"]
        assert f"| {r['label']} | {'n/a' if ap is None else f'{ap:.1f}'} | " in md, name  # the table's figure
        if name not in peers.OURS:
            assert r["weights"] is None, name
            continue
        # our trained models load as the CLI loads a --checkpoint, with the train set's classes and the
        # contender's own architecture (the encoder-off one has no encoder blocks)
        model, cfg = load_model(r["weights"])
        assert cfg.model.class_names == list(CLASSES) and cfg.model.num_classes == len(CLASSES), name
        assert cfg.model.encoder.enabled == ("no_encoder" not in name), name
        with torch.no_grad():
            assert model(torch.rand(1, 3, 64, 80))["boxes"].shape[-1] == 4, name
    assert "### Equal epochs (1)" in md and "### Equal minutes" in md
    assert all(peers.LABELS[n] in md for n in report["results"])
    assert (out / "convergence_ap_epochs.png").stat().st_size > 1000
    assert (out / "convergence_ap_minutes.png").stat().st_size > 1000
    # a second run with the same setup reuses the finished contenders instead of training them again
    again = run_bench("convergence.py", "--quick", "--only", "tv_fcos", "--out", str(out), "--work",
                      str(tmp_path / "work"), timeout=300)
    assert "already in" in again.stdout


def test_detr_postprocess_scales_to_original_pixels(peers):
    logits = torch.full((1, 3, 2), -9.0)
    logits[0, 1, 1] = 9.0  # query 1, class 1: the only confident pair
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0], [0.9, 0.9, 0.5, 0.5]]])
    out = peers.detr_postprocess(logits, boxes, torch.tensor([[100, 200]]), focal=True, top_k=2)[0]
    assert out["labels"][0] == 1
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.0, 0.0, 100.0, 100.0]))
    soft = torch.zeros(1, 3, 3)
    soft[0, 2, 0] = 9.0  # softmax with no-object last: query 2 is class 0, clipped to the image
    out = peers.detr_postprocess(soft, boxes, torch.tensor([[100, 200]]), focal=False, top_k=1)[0]
    assert out["labels"].tolist() == [0]
    torch.testing.assert_close(out["boxes"][0], torch.tensor([130.0, 65.0, 200.0, 100.0]))


@needs("transformers", extra="bench")
def test_hf_peers_train_batchnorm(peers):
    """At random init a frozen BN is an identity: the HF peers get trainable BatchNorm like ours."""
    from dynamic_detr.config import get_preset

    for name in ("hf_detr", "hf_deformable_detr"):
        c = peers.build(name, get_preset("cpu_tiny"), num_classes=3, batch_size=2)
        kinds = {type(m).__name__ for m in c.model.modules()}
        assert "BatchNorm2d" in kinds and not any(k.endswith("FrozenBatchNorm2d") for k in kinds), name


def test_fp32_contender_is_the_preset_in_float32(peers):
    """The `fp32` contender (speed.py's bf16-against-float32 row) differs from the preset in train.amp only."""
    from dynamic_detr.config import get_preset

    preset = get_preset("cpu_small")
    fp32 = peers.ablation_config("fp32", preset)
    assert preset.train.amp == "bf16" and fp32.train.amp == "none"
    fp32.train.amp = "bf16"
    assert fp32 == preset


def test_every_rung_of_the_ladder_adds_something(peers):
    """Each rung differs from the one before it, also where cpu_small leaves a step off (RUNG_FALLBACK turns it
    on for its row), and the last rung is the preset itself."""
    from dynamic_detr.config import get_preset

    preset = get_preset("cpu_small")
    rungs = [peers.ablation_config(name, preset) for name in peers.LADDER]
    for name, before, after in zip(peers.LADDER[1:], rungs[:-1], rungs[1:], strict=True):
        assert after != before, name
    assert rungs[peers.LADDER.index("distinct_queries")].model.decoder.query_nms == 0.7
    mal, stable = rungs[peers.LADDER.index("mal")].loss, rungs[peers.LADDER.index("stable_matching")].loss
    assert mal.mal and not (mal.position_supervised or mal.cost_position_modulated)
    assert stable.position_supervised and stable.cost_position_modulated and not stable.mal
    o2o = rungs[peers.LADDER.index("dense_o2o")].data  # DEIM's mosaics, tiles half the preset's training size
    assert o2o.mosaic_prob == 0.5 and o2o.mosaic_size == max(o2o.train_short_sides) // 2 == 128
    assert rungs[peers.LADDER.index("flat_cosine")].train.lr_schedule == "flat_cosine"
    assert rungs[-1] == preset


@pytest.mark.parametrize("preset", ["cpu_small", "cpu_tiny", "paper_r50"])
def test_every_contender_of_ours_is_a_valid_config(peers, preset):
    """convergence.py builds every rung and ablation from its --preset (cpu_tiny in --quick runs, which has no
    query selection, so the distinct-queries rung must turn it on)."""
    from dynamic_detr.config import get_preset

    for name in peers.OURS:
        peers.ablation_config(name, get_preset(preset)).validate(name)


def test_encoder_arms_differ_from_the_preset_in_the_encoder_only(peers):
    """The encoder study's arms (docs/benchmarks.md): on cpu_demo (encoder off) `encoder` is cpu_small's encoder
    turned on, `encoder_tuned` with ENCODER_TUNED applied, `encoder_static` the tuned one with nothing dynamic."""
    from dynamic_detr.config import apply_overrides, get_preset

    demo = get_preset("cpu_demo")
    arms = {name: peers.ablation_config(name, demo) for name in ("encoder", "encoder_static", "encoder_tuned")}
    assert arms["encoder"].model.encoder == get_preset("cpu_small").model.encoder
    assert arms["encoder_tuned"] == apply_overrides(arms["encoder"], peers.ENCODER_TUNED)
    assert not arms["encoder_static"].model.encoder.dynamic and arms["encoder_tuned"].model.encoder.dynamic
    arms["encoder_static"].model.encoder.dynamic = True
    assert arms["encoder_static"] == arms["encoder_tuned"]
    arms["encoder"].model.encoder.enabled = False
    assert arms["encoder"] == demo
