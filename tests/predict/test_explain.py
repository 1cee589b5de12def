"""`dynamic-detr explain`: every number drawn is the model's own, read independently here with hooks of the test's:
per-stage boxes = `out["stages"]`, scale weights = `ScaleAttention` on each neighbour's branch, sampling points =
the base grid plus the offsets the deformable conv received (and where torchvision's kernel samples), DyReLU
coefficients = the ones that produce DyReLU's output. The hooks leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import deform_conv2d

from builders import SHAPES, tiny_config
from dynamic_detr.api import save_pretrained
from dynamic_detr.cli.main import main
from dynamic_detr.model import DynamicDETR
from dynamic_detr.model.loading import load_model
from dynamic_detr.predict.explain import DYRELU_FIGSIZE, explain_image, scale_table_figsize
from dynamic_detr.predict.predictor import Predictor

H, W = 90, 120  # not square, and resized by the eval transform (to 144 x 192): catches x / y and scale slips
BLOCKS = 2


def _config(encoder: bool = True):
    return tiny_config({"model.encoder.num_blocks": BLOCKS, "model.encoder.enabled": encoder}, classes=SHAPES)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A cpu_tiny model whose encoder is away from its init (zero offsets, DyReLU = ReLU, scale weights 0.5)."""
    cfg = _config()
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model)
    with torch.no_grad():
        for block in model.encoder.blocks:
            for ops in block.levels:
                ops.offset.weight.normal_(std=0.05)
                ops.offset.bias.normal_(std=0.7)
                ops.dyrelu.fc[2].weight.normal_(std=0.5)
                ops.scale_attn.fc.weight.normal_(std=0.5)
    model.run_config = cfg
    out = tmp_path_factory.mktemp("explain") / "m"
    save_pretrained(model, out)
    return out


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    rng = np.random.default_rng(0)
    a = rng.integers(60, 120, size=(H, W, 3), dtype=np.uint8)
    a[20:70, 30:90] = (220, 30, 30)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def _run(model, cfg, picture):
    """The model's forward on the picture through predict's eval transform, with the test's own hooks on each
    block's modules: per block, lists over calls (one per level, finest first, or one per level that has the
    neighbour: `fine` from level 1 on, `coarse` up to the last but one)."""
    seen: list[dict[str, list]] = []
    handles = []
    for block in model.encoder.blocks:
        rec: dict[str, list] = {k: [] for k in ("mid_in", "mid", "fine", "coarse", "dyrelu")}
        seen.append(rec)
        for ops in block.levels:
            handles += [
                ops.mid.register_forward_hook(lambda m, a, o, r=rec: r["mid_in"].append(a) or r["mid"].append(o)),
                ops.fine.register_forward_hook(lambda m, a, o, r=rec: r["fine"].append(o)),
                ops.coarse.register_forward_hook(lambda m, a, o, r=rec: r["coarse"].append(o)),
                ops.dyrelu.register_forward_hook(lambda m, a, o, r=rec: r["dyrelu"].append((m, a, o))),
            ]
    batch = Predictor(model, cfg, torch.device("cpu")).batch([picture])
    with torch.no_grad():
        out = model(batch.images, batch.masks)
    for h in handles:
        h.remove()
    return out, batch, seen


def _no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_stage_boxes_are_the_models_and_detections_are_predicts(model_dir, picture) -> None:
    model, cfg = load_model(model_dir)
    ex = explain_image(model, cfg, picture, top=5, points=2)
    assert _no_hooks(model)
    out, _, _ = _run(model, cfg, picture)
    stages = out["stages"]
    assert ex.stage_boxes.shape == (5, len(stages) + 1, 4)
    for d, q in enumerate(ex.queries.tolist()):
        assert torch.equal(ex.stage_boxes[d, 0], model.decoder.init_boxes.weight[q].detach())  # no query selection
        for s, st in enumerate(stages):
            assert torch.allclose(ex.stage_boxes[d, s + 1], st["boxes"][0, q], atol=1e-6), (d, s)
    # the top detections are the ones `predict` reports, in the same order
    res = model.postprocess(out, torch.tensor([[H, W]]), top_k=5)[0]
    assert torch.allclose(ex.scores, res["scores"], atol=1e-6) and torch.equal(ex.labels, res["labels"])
    final = ex.image_boxes()[:, -1]
    clamped = torch.minimum(final.clamp(min=0), torch.tensor([W, H, W, H], dtype=torch.float32))
    assert torch.allclose(clamped, res["boxes"], atol=1e-3)
    assert ex.input_hw == (144, 192)


def test_explain_leaves_each_modules_training_mode_as_it_was(model_dir, picture) -> None:
    model, cfg = load_model(model_dir)
    model.train()
    model.backbone.eval()  # a mixed state is restored as it was, not flattened by `train(True)`
    before = [m.training for m in model.modules()]
    explain_image(model, cfg, picture, top=2, points=1)
    assert [m.training for m in model.modules()] == before


def test_scale_weights_are_scale_attention_on_each_neighbour(model_dir, picture) -> None:
    model, cfg = load_model(model_dir)
    ex = explain_image(model, cfg, picture)
    _, _, seen = _run(model, cfg, picture)
    levels = len(model.backbone.strides)
    assert ex.scale_weights.shape == (BLOCKS, levels, 3)
    for b, (block, rec) in enumerate(zip(model.encoder.blocks, seen, strict=True)):
        attn = block.levels[0].scale_attn
        for lv in range(levels):
            size = rec["mid"][lv].shape[-2:]
            valid = rec["mid_in"][lv][3] if len(rec["mid_in"][lv]) > 3 else None  # the level's unpadded region

            def weight(branch: torch.Tensor, size=size, attn=attn, valid=valid) -> float:
                if branch.shape[-2:] != size:  # the block resizes a neighbour to level lv's grid
                    branch = F.interpolate(branch, size=size, mode="bilinear", align_corners=False)
                with torch.no_grad():
                    return float(attn(branch[None], valid).flatten()[0])

            finer, same, coarser = ex.scale_weights[b, lv].tolist()
            assert same == pytest.approx(weight(rec["mid"][lv]), abs=1e-5)
            if lv > 0:
                assert finer == pytest.approx(weight(rec["fine"][lv - 1]), abs=1e-5)
            else:
                assert np.isnan(finer)
            if lv + 1 < levels:
                assert coarser == pytest.approx(weight(rec["coarse"][lv]), abs=1e-5)
            else:
                assert np.isnan(coarser)
    assert not np.allclose(ex.scale_weights[~ex.scale_weights.isnan()].numpy(), 0.5, atol=1e-3)  # not the init


def test_sampling_points_are_the_base_grid_plus_the_applied_offsets(model_dir, picture) -> None:
    model, cfg = load_model(model_dir)
    ex = explain_image(model, cfg, picture, top=4, points=3)
    out, _, seen = _run(model, cfg, picture)
    strides = model.backbone.strides
    valid_h, valid_w = out["valid_hw"][0].tolist()
    ky, kx = torch.arange(9) // 3, torch.arange(9) % 3
    inside = 0
    for b, rec in enumerate(seen):
        for lv, s in enumerate(strides):
            _, offset, mask = rec["mid_in"][lv][:3]  # what the deformable conv on level lv was given
            hl, wl = offset.shape[-2:]
            # where torchvision's kernel samples each tap: a (y, x) ramp read by one-hot weights
            ys, xs = torch.meshgrid(torch.arange(hl, dtype=torch.float32), torch.arange(wl, dtype=torch.float32),
                                    indexing="ij")
            ramp = torch.stack([ys, xs])[None]
            weight = torch.zeros(18, 2, 3, 3)
            for k in range(9):
                weight[2 * k, 0, ky[k], kx[k]] = weight[2 * k + 1, 1, ky[k], kx[k]] = 1.0
            sampled = deform_conv2d(ramp, offset, weight, padding=1)[0]  # [18, hl, wl]
            for d in range(3):
                i, j = ex.sample_cells[d, lv].tolist()
                cx, cy = (ex.stage_boxes[d, -1, :2] * torch.tensor([valid_w, valid_h])).tolist()
                assert j == min(max(round(cx / s - 0.5), 0), wl - 1) and i == min(max(round(cy / s - 0.5), 0), hl - 1)
                want = torch.stack([i - 1 + ky + offset[0, 0::2, i, j], j - 1 + kx + offset[0, 1::2, i, j]], -1)
                assert torch.allclose(ex.sample_level_px[b, d, lv], want, atol=1e-5)
                assert torch.allclose(ex.sample_masks[b, d, lv], mask[0, :, i, j], atol=1e-6)
                image_xy = (want.flip(-1) + 0.5) * s * torch.tensor([W / valid_w, H / valid_h])
                assert torch.allclose(ex.sample_points[b, d, lv], image_xy, atol=1e-4)
                for k in range(9):
                    y, x_ = want[k].tolist()
                    if 0 <= y <= hl - 1 and 0 <= x_ <= wl - 1:  # bilinear on the ramp is exact inside the map
                        inside += 1
                        assert sampled[2 * k, i, j] == pytest.approx(y, abs=1e-4)
                        assert sampled[2 * k + 1, i, j] == pytest.approx(x_, abs=1e-4)
        assert rec["mid_in"][0][1].abs().max() > 0.1  # zero offsets would hide a (dy, dx) swap
    assert inside >= 50


def test_dyrelu_coefficients_are_the_ones_applied(model_dir, picture) -> None:
    model, cfg = load_model(model_dir)
    ex = explain_image(model, cfg, picture)
    _, _, seen = _run(model, cfg, picture)
    for b, rec in enumerate(seen):
        for lv, (module, args, y) in enumerate(rec["dyrelu"]):
            x = args[0]
            with torch.no_grad():
                a1, a2, b1, b2 = module.coefficients(*args)  # (x, the unpadded region when the batch is padded)
            assert torch.allclose((x * a1 + b1).maximum(x * a2 + b2), y, atol=1e-6)  # they make DyReLU's output
            means = torch.stack([c[0].flatten().mean() for c in (a1, a2, b1, b2)])
            assert torch.allclose(ex.dyrelu[b, lv], means, atol=1e-6)
    assert not torch.allclose(ex.dyrelu[..., 0], torch.ones(())), "a1 still at its init: the test sees nothing"


def test_explain_cli_writes_every_picture(model_dir, picture, tmp_path, capsys) -> None:
    image_path = tmp_path / "in" / "pic.png"
    image_path.parent.mkdir()
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(image_path)
    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(model_dir), str(image_path), "--out", str(out), "--device", "cpu",
                 "--top", "4", "--points", "2"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("query ") == 4
    names = ["stages.png", "scale_attention.png", "dyrelu.png", *[f"sampling_block{b + 1}.png" for b in
                                                                  range(BLOCKS)], "explain.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    levels = 5
    table_w, table_h = scale_table_figsize(BLOCKS * levels)
    want_sizes = {"stages.png": (W, H), "scale_attention.png": (round(100 * table_w), round(100 * table_h)),
                  "dyrelu.png": (round(100 * DYRELU_FIGSIZE[0]), round(100 * DYRELU_FIGSIZE[1])),
                  **{f"sampling_block{b + 1}.png": (W, H) for b in range(BLOCKS)}}
    for name, size in want_sizes.items():
        with Image.open(out / name) as png:
            png.load()
            assert abs(png.size[0] - size[0]) <= 1 and abs(png.size[1] - size[1]) <= 1, name
    original = picture.permute(1, 2, 0).numpy()
    for name in ("stages.png", "sampling_block1.png"):  # something was drawn on the picture
        assert (np.asarray(Image.open(out / name).convert("RGB")) != original).any(), name

    record = json.loads((out / "explain.json").read_text())
    model, cfg = load_model(model_dir)
    ex = explain_image(model, cfg, picture, top=4, points=2)
    assert [d["query"] for d in record["detections"]] == ex.queries.tolist()
    assert len(record["detections"][0]["stage_boxes"]) == 1 + cfg.model.decoder.num_stages
    assert np.allclose(record["detections"][0]["stage_boxes"], ex.image_boxes()[0].numpy(), atol=1e-2)
    assert len(record["scale_attention"]) == BLOCKS * levels and record["scale_attention"][0]["finer"] is None
    assert len(record["sampling"]) == BLOCKS * 2 * levels
    assert record["image_size"] == [H, W] and record["input_size"] == [144, 192]


def test_explain_without_encoder_draws_the_decoder_only(picture, tmp_path) -> None:
    from dynamic_detr.predict.explain import save_explanation

    cfg = _config(encoder=False)
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model).eval()
    ex = explain_image(model, cfg, picture, top=3)
    assert ex.scale_weights.shape[0] == 0 and ex.sample_points.shape[0] == 0
    written = save_explanation(ex, tmp_path / "x")
    assert [p.name for p in written] == ["stages.png", "explain.json"]
    assert _no_hooks(model)


def test_explain_bad_inputs(model_dir, tmp_path, capsys) -> None:
    assert main(["explain", "--checkpoint", str(model_dir), str(tmp_path / "none.png"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG nope")
    assert main(["explain", "--checkpoint", str(model_dir), str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "cannot decode" in capsys.readouterr().err
    assert main(["explain", "--checkpoint", str(model_dir), str(broken), "--out", str(tmp_path)]) == 2
    assert "holds the input" in capsys.readouterr().err


def test_levels_not_run_are_blank_and_gates_are_shown(picture, tmp_path, capsys) -> None:
    """An encoder on P3-P4 only (`EncoderConfig.levels`) with channel gates: the gates table holds each level's
    channel-mean gate, P5..P7 are NaN in every per-level table and get no sampling points, P4 keeps its coarser
    neighbour (P5 passes through but is still read), and the CLI prints the gates."""
    cfg = _config()
    e = cfg.model.encoder
    e.residual, e.gate, e.gate_init, e.levels = True, "channel", 0.25, 2
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model)
    with torch.no_grad():
        model.encoder.blocks[1].gate[1].fill_(-0.5)
    model.run_config = cfg
    ex = explain_image(model, cfg, picture, top=3, points=2)
    assert ex.gates.shape == (BLOCKS, 5)
    assert ex.gates[:, :2].tolist() == [[0.25, 0.25], [0.25, -0.5]] and ex.gates[:, 2:].isnan().all()
    assert not ex.scale_weights[:, 1, 2].isnan().any()  # P4's coarser neighbour
    assert ex.scale_weights[:, 2:].isnan().all() and ex.dyrelu[:, 2:].isnan().all()
    assert not ex.sample_points[:, :, :2].isnan().any() and ex.sample_points[:, :, 2:].isnan().all()
    save_pretrained(model, tmp_path / "m")
    img = tmp_path / "a.png"
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(img)
    assert main(["explain", "--checkpoint", str(tmp_path / "m"), str(img), "--out", str(tmp_path / "ex")]) == 0
    assert "encoder block 2 gate: P3 +0.250, P4 -0.500" in capsys.readouterr().out
    record = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert {"block": 2, "level": "P4", "gate": -0.5} in record["gates"]
