"""Parameter / FLOP counting (incl. deformable conv and RoIAlign formulas) and the `info` command."""

from __future__ import annotations

import torch
from torchvision.ops import deform_conv2d, roi_align

from builders import tiny_config
from dynamic_detr.cli.main import main
from dynamic_detr.model.info import BILINEAR_FLOPS, flop_counter, model_info


def test_deform_conv2d_and_roi_align_are_counted():
    x, w = torch.randn(2, 4, 6, 7), torch.randn(5, 4, 3, 3)
    offset, mask = torch.zeros(2, 18, 6, 7), torch.ones(2, 9, 6, 7)
    with flop_counter() as counter:
        deform_conv2d(x, offset, w, mask=mask, padding=1)
    conv = 2 * 2 * 5 * 4 * 9 * 6 * 7  # 2 * B * C_out * C_in * k^2 * H' * W'
    assert counter.get_total_flops() == conv + BILINEAR_FLOPS * 2 * 4 * 9 * 6 * 7

    rois = torch.tensor([[0, 0.0, 0.0, 3.0, 3.0], [1, 1.0, 1.0, 5.0, 4.0], [0, 2.0, 0.0, 6.0, 6.0]])
    with flop_counter() as counter:
        roi_align(x, rois, 7, sampling_ratio=2, aligned=True)
    assert counter.get_total_flops() == 3 * 4 * 7 * 7 * 2 * 2 * BILINEAR_FLOPS


def test_model_info_components_add_up():
    """Each component counted on its own adds up to the whole model counted at once."""
    from dynamic_detr.model.detector import DynamicDETR

    cfg = tiny_config({"model.decoder.query_selection": "boxes",
                       "model.decoder.num_hybrid_queries": 4,
                       "model.decoder.dn_queries": 4}, classes=5).model
    cfg.dense.enabled = True
    cfg.encoder.deform_impl = "torchvision"  # counted by formula on both paths (the sampled kernel's bmm differs)
    info = model_info(cfg, (64, 96))
    model = DynamicDETR(cfg, load_weights=False)
    assert info["params"]["total"] == sum(p.numel() for p in model.parameters())
    parts = [info["params"][c] for c in ("backbone", "encoder", "dense_head", "decoder", "training_only")]
    assert all(p > 0 for p in parts) and sum(parts) == info["params"]["total"]
    with torch.enable_grad(), flop_counter() as counter:  # the whole forward in one count (eval mode)
        model.eval()(torch.rand(1, 3, 64, 96))
    assert abs(info["gflops"]["total"] * 1e9 - counter.get_total_flops()) <= 1e-6 * counter.get_total_flops()
    cfg.encoder.enabled = False
    plain = model_info(cfg, (64, 96))
    assert plain["params"]["encoder"] == 0 and plain["gflops"]["encoder"] == 0
    assert plain["gflops"]["backbone"] == info["gflops"]["backbone"]
    assert plain["gflops"]["decoder"] == info["gflops"]["decoder"]


def test_model_info_respects_frozen_stages_without_reading_weights():
    cfg = tiny_config(classes=5).model
    cfg.backbone.weights = "/not/read.pth"
    info = model_info(cfg, (64, 64))
    assert info["trainable"]["backbone"] < info["params"]["backbone"]  # stem + stage 1 frozen
    assert info["trainable"]["decoder"] == info["params"]["decoder"]


def test_info_cli_prints_table(capsys):
    assert main(["info", "--preset", "cpu_tiny", "--image-size", "64", "96", "model.decoder.num_stages=1"]) == 0
    out = capsys.readouterr().out
    assert "1 image of 64x96" in out and "1 decoder stages" in out
    for word in ("params", "trainable", "GFLOPs", "backbone+FPN", "encoder", "decoder", "total"):
        assert word in out


def test_info_cli_default_size_and_errors(capsys):
    assert main(["info", "--preset", "cpu_tiny"]) == 0
    assert "1 image of 160x192" in capsys.readouterr().out  # cpu_tiny's eval size
    assert main(["info", "--preset", "cpu_tiny", "--image-size", "8", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
