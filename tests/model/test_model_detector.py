"""DynamicDETR end to end: shapes for every preset, gradients, postprocess, query diversity, bf16 autocast."""

from __future__ import annotations

import pytest
import torch
from model_helpers import padded_batch

from builders import tiny_config
from dynamic_detr.api import detect
from dynamic_detr.config import apply_overrides, get_preset
from dynamic_detr.errors import ConfigError
from dynamic_detr.model import DynamicDETR


def check_outputs(out: dict, batch: int, queries: int, width: int, stages: int) -> None:
    assert out["logits"].shape == (batch, queries, width)
    assert out["boxes"].shape == (batch, queries, 4)
    assert len(out["stages"]) == stages
    for s in out["stages"]:
        assert s["logits"].shape == (batch, queries, width) and s["boxes"].shape == (batch, queries, 4)
        assert torch.isfinite(s["logits"]).all() and torch.isfinite(s["boxes"]).all()
    assert out["logits"] is out["stages"][-1]["logits"] and out["boxes"] is out["stages"][-1]["boxes"]


@pytest.mark.parametrize("preset, sizes", [
    ("cpu_tiny", [(128, 128)]),
    ("cpu_tiny", [(97, 131), (64, 100)]),  # odd sizes, padded batch with different valid sizes
    ("cpu_tiny", [(100, 150), (100, 150)]),  # not multiples of 32
    ("cpu_small", [(97, 131), (120, 90)]),
    ("cpu_demo", [(97, 131), (120, 90)]),
    ("paper_r50", [(128, 160)]),
    ("paper_r50", [(97, 131), (70, 131)]),
])
def test_output_shapes(preset, sizes):
    torch.manual_seed(0)
    cfg = get_preset(preset).model
    cfg.backbone.weights = None
    model = DynamicDETR(cfg).eval()
    images, masks = padded_batch(sizes)
    with torch.no_grad():
        out = model(images, masks)
    check_outputs(out, len(sizes), cfg.decoder.num_queries, cfg.num_classes, cfg.decoder.num_stages)


def test_softmax_head_has_no_object_class():
    cfg = tiny_config(classes=5).model
    cfg.class_loss = "softmax"
    model = DynamicDETR(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 96, 96))
    check_outputs(out, 1, cfg.decoder.num_queries, cfg.num_classes + 1, cfg.decoder.num_stages)
    (det,) = model.postprocess(out, torch.tensor([[96, 96]]), top_k=5)
    assert (det["labels"] < cfg.num_classes).all()  # never the no-object class


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    # zero-initialised box deltas would (correctly) block the gradient of the layers before them at step 0
    model = DynamicDETR(tiny_config({"model.decoder.zero_init_deltas": False}, classes=5).model).train()
    # whole-image boxes of a small image are all pooled from P3; start some queries with boxes 2-32x the image
    # so that stage 1 pools from every level P3-P7 and every level's encoder output is used
    with torch.no_grad():
        model.decoder.init_boxes.weight[:, 2:] = torch.tensor([1, 2, 4, 8, 16, 32, 1, 4, 16, 32.0])[:, None]
    images, masks = padded_batch([(96, 128), (80, 100)])
    out = model(images, masks)
    g = torch.Generator().manual_seed(0)
    loss = sum((s[k] * torch.randn(s[k].shape, generator=g)).sum() for s in out["stages"] for k in s)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # DyReLU's first FC feeds a zero-initialised FC (DyReLU == ReLU at init), so its gradient is 0 at step 0;
    # everything else must get a non-zero gradient
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()
            and ".dyrelu.fc.0." not in n]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


def test_zero_init_deltas_make_every_stage_start_as_identity_refinement():
    torch.manual_seed(0)
    model = DynamicDETR(tiny_config({"model.decoder.zero_init_deltas": True}, classes=5).model).eval()
    with torch.no_grad():
        out = model(*padded_batch([(96, 128)]))
    init = model.decoder.init_boxes.weight[None]
    for stage in out["stages"]:
        torch.testing.assert_close(stage["boxes"], init.expand_as(stage["boxes"]))
    torch.manual_seed(0)
    model = DynamicDETR(tiny_config({"model.decoder.zero_init_deltas": False}, classes=5).model).eval()
    with torch.no_grad():
        out = model(*padded_batch([(96, 128)]))
    assert not torch.allclose(out["stages"][-1]["boxes"], init.expand_as(out["stages"][-1]["boxes"]))


def test_postprocess_maps_boxes_to_original_images():
    cfg = tiny_config({"model.decoder.num_queries": 3}, classes=5).model
    cfg.num_classes = 3
    cfg.category_ids = [10, 20, 30]
    model = DynamicDETR(cfg)
    logits = torch.full((2, 3, 3), -10.0)
    logits[0, 1, 2] = 3.0  # image 0: query 1 is class index 2 -> category 30
    logits[0, 0, 0] = 1.0
    logits[1, 2, 1] = 2.0
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.5, 0.5, 1.0], [0.9, 0.9, 0.4, 0.4]]] * 2)
    orig = torch.tensor([[200, 400], [100, 50]])  # (h, w)
    dets = model.postprocess({"logits": logits, "boxes": boxes}, orig, top_k=4)
    assert [len(d["scores"]) for d in dets] == [4, 4]
    d0, d1 = dets
    assert d0["labels"][:2].tolist() == [30, 10]
    torch.testing.assert_close(d0["scores"][0], torch.sigmoid(torch.tensor(3.0)))
    torch.testing.assert_close(d0["boxes"][0], torch.tensor([0.0, 0.0, 200.0, 200.0]))  # (0.25,0.5,0.5,1)*400x200
    torch.testing.assert_close(d0["boxes"][1], torch.tensor([100.0, 50.0, 300.0, 150.0]))
    assert (d0["scores"][:-1] >= d0["scores"][1:]).all()
    assert d1["labels"][0] == 20
    torch.testing.assert_close(d1["boxes"][0], torch.tensor([35.0, 70.0, 50.0, 100.0]))  # clamped to 50x100


def test_postprocess_softmax_picks_best_foreground_class_per_query():
    cfg = tiny_config({"model.decoder.num_queries": 3}, classes=5).model
    cfg.num_classes = 2
    cfg.class_loss = "softmax"
    model = DynamicDETR(cfg)
    logits = torch.tensor([[[0.0, 1.0, 5.0], [3.0, 0.0, 0.0], [0.0, 0.5, 0.0]]])  # last = no-object
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0]] * 3])
    (det,) = model.postprocess({"logits": logits, "boxes": boxes}, torch.tensor([[10, 20]]), top_k=10)
    probs = logits.softmax(-1)[0, :, :2]
    assert det["labels"].tolist() == [0, 1, 1]  # contiguous labels: category_ids is empty
    torch.testing.assert_close(det["scores"], probs.max(-1).values.sort(descending=True).values)
    torch.testing.assert_close(det["boxes"][0], torch.tensor([0.0, 0.0, 20.0, 10.0]))


@pytest.mark.parametrize("zero_init_deltas", [False, True])
def test_fresh_queries_do_not_collapse(zero_init_deltas):
    torch.manual_seed(0)
    cfg = tiny_config({"model.decoder.num_queries": 20,
                       "model.decoder.zero_init_deltas": zero_init_deltas}, classes=5).model
    model = DynamicDETR(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 128))
    first = out["stages"][0]
    logits = torch.unique(first["logits"][0].round(decimals=4), dim=0)
    assert len(logits) == 20
    if not zero_init_deltas:  # zero deltas keep the (identical, whole-image) initial boxes until the first step
        boxes = torch.unique(first["boxes"][0].round(decimals=4), dim=0)
        assert len(boxes) == 20


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    model = DynamicDETR(tiny_config(classes=5).model).eval()
    images, masks = padded_batch([(96, 128), (80, 100)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, masks)
    check_outputs(out, 2, 10, 5, 2)
    assert out["logits"].dtype == torch.float32 and out["boxes"].dtype == torch.float32


def test_masks_default_to_no_padding():
    """No mask = the whole canvas is image: every pixel is seen and boxes are relative to the full size. A
    hand-built mask (image 1: 48 x 64 valid of 64 x 96) shows what a mask changes."""
    torch.manual_seed(0)
    model = DynamicDETR(tiny_config(classes=5).model).eval()
    images = torch.rand(2, 3, 64, 96)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[1, 48:, :] = True
    masks[1, :, 64:] = True
    altered = images.clone()
    altered[1, :, 48:, :] = 1.0 - altered[1, :, 48:, :]  # change only pixels the mask calls padding
    with torch.no_grad():
        default, default_altered = model(images), model(altered)
        padded, padded_altered = model(images, masks), model(altered, masks)
    assert default["valid_hw"].tolist() == [[64.0, 96.0], [64.0, 96.0]]
    assert padded["valid_hw"].tolist() == [[64.0, 96.0], [48.0, 64.0]]
    # without a mask the bottom rows are image: changing them changes image 1's predictions
    assert not torch.allclose(default["logits"][1], default_altered["logits"][1])
    # with the mask they are padding: zeroed before the backbone, so nothing changes
    torch.testing.assert_close(padded_altered["logits"], padded["logits"])
    torch.testing.assert_close(padded_altered["boxes"], padded["boxes"])


def test_predict_leaves_each_modules_training_mode_as_it_was():
    """`model.predict` inside a training loop left the model in eval mode (dropout off, BN statistics frozen)."""
    import numpy as np

    from dynamic_detr.errors import UserError

    model = DynamicDETR(tiny_config(classes=5).model, load_weights=False).train()
    model.backbone.eval()  # a mixed state (e.g. a frozen part) is kept too, not flattened by `train(True)`
    before = [m.training for m in model.modules()]
    detect(model, np.zeros((40, 60, 3), dtype=np.uint8), threshold=0.0)
    assert [m.training for m in model.modules()] == before
    with pytest.raises(UserError):
        detect(model, 123)  # an error half-way restores it too
    assert [m.training for m in model.modules()] == before


def test_eval_stages_runs_the_first_stages_at_inference_only():
    """`decoder.eval_stages = n`: in eval mode the first n stages, the same as those of the full decoder (the
    final detections are stage n's); in training every stage, each supervised."""
    torch.manual_seed(0)
    cfg = tiny_config({"model.decoder.num_stages": 3, "model.decoder.zero_init_deltas": False}, classes=5)
    model = DynamicDETR(cfg.model).eval()
    images, masks = padded_batch([(96, 128), (80, 128)])
    with torch.no_grad():
        full = model(images, masks)
        model.set_eval_stages(2)
        cut = model(images, masks)
    assert len(full["stages"]) == 3 and len(cut["stages"]) == 2 and model.cfg.decoder.eval_stages == 2
    for a, b in zip(cut["stages"], full["stages"][:2], strict=False):
        torch.testing.assert_close(a["logits"], b["logits"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(cut["boxes"], full["stages"][1]["boxes"])
    assert not torch.equal(cut["boxes"], full["boxes"])  # stage 3 refines stage 2's boxes: not the same answer
    assert len(model.train()(images, masks)["stages"]) == 3
    model.eval().set_eval_stages(0)
    with torch.no_grad():
        assert len(model(images, masks)["stages"]) == 3


def test_eval_stages_out_of_range():
    model = DynamicDETR(tiny_config(classes=5).model)
    with pytest.raises(ConfigError, match=r"decoder stages: 3 is not in \[0, 2\]"):
        model.set_eval_stages(3)
    with pytest.raises(ConfigError, match=r"eval_stages must be in \[0, num_stages=2\]"):
        apply_overrides(get_preset("cpu_tiny"), ["model.decoder.eval_stages=3"])
