"""RT-DETR and D-FINE as peers (benchmarks/peers_rtdetr.py, peers_dfine_loss.py): they train and detect through
the contenders' interface, start from the official init, and D-FINE's loss gives every decoder layer its own
terms (HF 5.25's loss shifts them by one layer and drops one)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from bench_helpers import BENCH, needs

from dynamic_detr.config import get_preset
from dynamic_detr.data.collate import Batch

pytestmark = needs("transformers", extra="bench")
NEW = ("hf_rtdetr_r18", "hf_dfine_n", "hf_dfine_s")
CLASSES = 3


@pytest.fixture(scope="module")
def bench():
    """benchmarks/peers.py and its RT-DETR / D-FINE modules, imported as the scripts import them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        return {name: importlib.import_module(name) for name in ("peers", "peers_rtdetr", "peers_dfine_loss")}


def tiny(bench, name: str, seed: int = 0):
    """The peer cut to cpu_tiny's sizes (64-d, 4 heads, 2 decoder layers, 10 queries)."""
    torch.manual_seed(seed)
    return bench["peers"].build(name, get_preset("cpu_tiny"), CLASSES, 2, {"size": "preset"})


def batch() -> Batch:
    """Two images padded to 64 x 96: the second one is 48 x 64 inside it, from a 96 x 128 file."""
    images = torch.rand(2, 3, 64, 96)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[1, 48:], masks[1, :, 64:] = True, True
    images[masks[:, None].expand_as(images)] = 0
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.5], [0.2, 0.3, 0.2, 0.2]]), "labels": torch.tensor([1, 2]),
                "image_id": 1, "orig_size": torch.tensor([128, 192]), "size": torch.tensor([64, 96])},
               {"boxes": torch.tensor([[0.4, 0.5, 0.3, 0.4]]), "labels": torch.tensor([0]), "image_id": 2,
                "orig_size": torch.tensor([96, 128]), "size": torch.tensor([48, 64])}]
    return Batch(images, masks, targets)


@pytest.mark.parametrize("name", NEW)
def test_peer_trains_and_detects_in_pixels(bench, name):
    """Two training steps: finite losses, and after the first update (which moves the zero-initialised output
    layers) a gradient on every trainable parameter but those that cannot get one: attention key biases (a
    softmax ignores a shift shared by all keys) and HGNetv2's learnable affine blocks (`lab`: scale and bias) where
    a BatchNorm follows: it removes their shift and, while the bias is 0, their scale, so those gradients are 0 up
    to rounding (exactly 0 with one thread, as in CI's workers).
    Eval: per image min(100, queries x classes) detections, boxes in original pixels, contiguous labels."""
    c = tiny(bench, name)
    assert c.settings["size"] == "preset" and c.clip == 0.1
    c.model.train()
    for step in range(2):
        c.optimizer.zero_grad(set_to_none=True)
        loss = c.loss(batch())
        assert loss.ndim == 0 and math.isfinite(float(loss.detach())), (name, step)
        loss.backward()
        if step == 0:
            c.optimizer.step()
    for n, p in c.model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, (name, n)
        if not n.endswith(("k_proj.bias", "lab.bias", "lab.scale")):
            assert p.grad.abs().max() > 0, (name, n)
    c.model.eval()
    with torch.no_grad():
        out = c.detect(batch())
    k = min(100, 10 * CLASSES)
    for det, (h, w) in zip(out, [(128, 192), (96, 128)], strict=True):
        assert det["boxes"].shape == (k, 4) and det["scores"].shape == det["labels"].shape == (k,)
        assert det["boxes"].min() >= 0 and (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
        assert ((det["scores"] >= 0) & (det["scores"] <= 1)).all()
        assert det["labels"].min() >= 0 and det["labels"].max() < CLASSES


def test_adamw_without_decay_on_norms_and_biases(bench):
    """The official optimiser adapted: AdamW at one lr for every parameter (the backbone too: random init),
    weight decay on the weights only, none on norm weights, biases and HGNetv2's affine scales."""
    c = tiny(bench, "hf_dfine_n")
    decay, free = c.optimizer.param_groups
    assert (decay["weight_decay"], free["weight_decay"]) == (1e-4, 0.0)
    assert decay["lr"] == free["lr"] == c.settings["lr"] == 8e-4
    names = {id(p): n for n, p in c.model.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in free["params"])
    free_names = {names[id(p)] for p in free["params"]}
    assert {"model.backbone.model.embedder.stem1.normalization.weight", "model.decoder.layers.0.mlp.layers.0.bias",
            "model.enc_output.1.weight", "model.backbone.model.embedder.stem1.lab.scale"} <= free_names
    trainable = {id(p) for p in c.model.parameters() if p.requires_grad}
    assert sorted(map(id, decay["params"] + free["params"])) == sorted(trainable)


def test_padded_frame_round_trip(bench):
    """Neither model reads the padding mask: targets go in normalised by the padded input, predicted boxes come
    back from it, so a box given at its target lands on the target's original pixels."""
    r = bench["peers_rtdetr"]
    b = batch()
    labels = r.padded_labels(b)
    torch.testing.assert_close(labels[1]["boxes"], torch.tensor([[0.4 * 64 / 96, 0.5 * 48 / 64, 0.3 * 64 / 96,
                                                                  0.4 * 48 / 64]]))
    logits = torch.full((2, 1, CLASSES), -9.0)
    logits[:, 0, 0] = 9.0
    boxes = torch.stack([labels[0]["boxes"][:1], labels[1]["boxes"]])
    out = r.detections(logits, boxes, b, top_k=1)
    torch.testing.assert_close(out[0]["boxes"][0], torch.tensor([0.3 * 192, 0.25 * 128, 0.7 * 192, 0.75 * 128]))
    torch.testing.assert_close(out[1]["boxes"][0], torch.tensor([0.25 * 128, 0.3 * 96, 0.55 * 128, 0.7 * 96]))


def test_official_sizes(bench):
    """The official configs (RT-DETRv2-R18: rtdetrv2_r18vd_120e_coco; D-FINE: dfine_hgnetv2_{n,s}_coco) and
    D-FINE-N's parameter count (3.7 M with 6 classes)."""
    r, cfg = bench["peers_rtdetr"], get_preset("cpu_small")
    rt = r.rtdetr_config(cfg, 6, "official")
    assert (rt.d_model, rt.encoder_hidden_dim, rt.decoder_layers, rt.num_queries, rt.num_denoising) == (256, 256, 3,
                                                                                                       300, 100)
    assert (rt.encoder_in_channels, rt.hidden_expansion, rt.decoder_n_points) == ([128, 256, 512], 0.5, 4)
    assert (rt.backbone_config.layer_type, rt.backbone_config.depths) == ("basic", [2, 2, 2, 2])
    n, s = (r.dfine_config(name, cfg, 6, "official") for name in ("hf_dfine_n", "hf_dfine_s"))
    assert (n.d_model, n.decoder_ffn_dim, n.num_feature_levels, n.decoder_n_points, n.depth_mult) == (128, 512, 2,
                                                                                                     [6, 6], 0.5)
    assert (s.d_model, s.num_feature_levels, s.decoder_n_points, s.depth_mult, s.decoder_layers) == (256, 3, [3, 6, 3],
                                                                                                    0.34, 3)
    assert n.backbone_config.use_learnable_affine_block and n.backbone_config.stem_channels == [3, 16, 16]
    c = bench["peers"].build("hf_dfine_n", cfg, 6, 2)
    assert c.settings["size"] == "official" and 3.7e6 < c.params() < 3.8e6


def test_queries_fit_the_smallest_input(bench):
    """Query selection keeps the top-`num_queries` encoder tokens. At the benchmark's 192 px (short sides down to
    160) D-FINE-N's strides 16 / 32 give 10 x 10 + 5 x 5 = 125 tokens: its official 300 queries are cut to 125
    (with 300, HF's topk failed on the first step); RT-DETR and D-FINE-S (strides from 8) keep 300, the preset
    size keeps the preset's count. Then one training step of the official D-FINE-N on a 160 px square."""
    r = bench["peers_rtdetr"]
    cfg = get_preset("cpu_demo")
    d = cfg.data
    d.train_short_sides, d.crop_resize_sides, d.eval_short_side = [160, 176, 192], [160, 176, 192], 192
    assert r.dfine_config("hf_dfine_n", cfg, 6, "official").num_queries == 125
    assert r.dfine_config("hf_dfine_s", cfg, 6, "official").num_queries == 300
    assert r.rtdetr_config(cfg, 6, "official").num_queries == 300
    assert r.dfine_config("hf_dfine_n", cfg, 6, "preset").num_queries == cfg.model.decoder.num_queries
    torch.manual_seed(0)
    c = bench["peers"].build("hf_dfine_n", cfg, CLASSES, 1)
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.5]]), "labels": torch.tensor([1]), "image_id": 1,
              "orig_size": torch.tensor([160, 160]), "size": torch.tensor([160, 160])}
    b = Batch(torch.rand(1, 3, 160, 160), torch.zeros(1, 160, 160, dtype=torch.bool), [target])
    c.model.train()
    assert math.isfinite(float(c.loss(b).detach()))


@pytest.mark.parametrize("name", ["hf_rtdetr_r18", "hf_dfine_n"])
def test_official_init_restored(bench, name):
    """Where HF's random init differs from the official code, the official one: BatchNorm weights 1 (HF's
    RT-DETR: N(0, 0.01) outside the backbone), class-bias prior 0.01 (HF: 1 / (C + 1)), the proposal box head's
    (and D-FINE's pre-box head's) output layer zero (HF: random), PyTorch's default and the official Xavier
    inits instead of N(0, 0.01), N(0, 1) denoising embeddings, every decoder layer starting equal; HF's
    deformable-attention init, equal to the official one, kept."""
    model = tiny(bench, name).model
    core, decoder = model.model, model.model.decoder
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert (m.weight == 1).all() and (m.bias == 0).all()
    prior = math.log(0.01 / 0.99)
    for head in [core.enc_score_head, *decoder.class_embed]:
        torch.testing.assert_close(head.bias, torch.full_like(head.bias, prior))
    zeroed = [core.enc_bbox_head.layers[-1], *(b.layers[-1] for b in decoder.bbox_embed)]
    if name == "hf_dfine_n":
        zeroed.append(decoder.pre_bbox_head.layers[-1])
    assert all((lin.weight == 0).all() and (lin.bias == 0).all() for lin in zeroed)
    fc1 = decoder.layers[0].mlp.modules()
    fc1 = next(m for m in fc1 if isinstance(m, torch.nn.Linear))  # Xavier: bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / sum(fc1.weight.shape))
    assert 0.9 * bound < fc1.weight.abs().max() <= bound
    q = decoder.layers[0].self_attn.q_proj  # nn.MultiheadAttention's: Xavier over [3d, d], zero bias
    assert 0.9 * math.sqrt(6 / (4 * q.in_features)) < q.weight.abs().max() <= math.sqrt(6 / (4 * q.in_features))
    assert (q.bias == 0).all()
    conv = next(m for n, m in model.named_modules() if "encoder.lateral" in n and isinstance(m, torch.nn.Conv2d))
    assert conv.weight.abs().max() > 0.03  # PyTorch's default (bound 1 / sqrt(fan_in) = 0.125), not N(0, 0.01)
    emb = core.denoising_class_embed.weight
    assert (emb[-1] == 0).all() and 0.7 < emb[:-1].std() < 1.3
    for layer in decoder.layers[1:]:
        for a, b in zip(layer.parameters(), decoder.layers[0].parameters(), strict=True):
            assert torch.equal(a, b)
    attn = decoder.layers[0].encoder_attn  # offsets: zero weight, bias = (point index + 1) x the head's direction
    assert (attn.sampling_offsets.weight == 0).all() and (attn.attention_weights.weight == 0).all()
    grid = attn.sampling_offsets.bias.view(attn.n_heads, -1, 2)
    points = grid.shape[1] // attn.n_levels  # per level: points 1..n along the head's direction
    theta = 2 * math.pi / attn.n_heads
    direction = torch.tensor([math.cos(theta), math.sin(theta)])
    direction = direction / direction.abs().max()
    expected = (torch.arange(1, points + 1)[:, None] * direction).repeat(attn.n_levels, 1)
    torch.testing.assert_close(grid[1], expected)


def test_dfine_every_decoder_layer_gets_its_loss_terms(bench):
    """Each decoder layer l has its VFL, L1, GIoU and FGL terms (DDF for all but the last, which teaches), the
    pre head, the encoder and the denoising layers theirs; and layer l's terms reach layer l's heads and none
    of a later layer's (HF 5.25 scores layer l's boxes with layer l + 1's corners and drops one layer)."""
    c = tiny(bench, "hf_dfine_n")
    model = c.model
    model.train()
    crit = bench["peers_dfine_loss"].DFineCriterion(model.config)
    b = batch()
    labels = bench["peers_rtdetr"].padded_labels(b)
    torch.manual_seed(1)  # the denoising queries are drawn at random
    losses = crit(model.model(pixel_values=bench["peers_rtdetr"].hf_pixels(b), labels=labels), labels)
    torch.manual_seed(1)
    torch.testing.assert_close(c.loss(b), sum(losses.values()))  # the contender's loss is this criterion's
    num_layers = model.config.decoder_layers
    expected = set()
    for prefix in ("layer", "dn_layer"):
        for i in range(num_layers):
            terms = ("vfl", "bbox", "giou", "fgl", *(("ddf",) if i < num_layers - 1 else ()))
            expected |= {f"loss_{t}_{prefix}{i}" for t in terms}
    expected |= {f"loss_{t}_{o}" for t in ("vfl", "bbox", "giou") for o in ("pre", "enc", "dn_pre")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    heads = model.model.decoder
    for i in range(num_layers):
        mine = sum(v for k, v in losses.items() if k.endswith(f"_layer{i}") and not k.startswith("loss_ddf"))
        params = [heads.class_embed[j].weight for j in range(num_layers)]
        params += [heads.bbox_embed[j].layers[-1].weight for j in range(num_layers)]
        grads = torch.autograd.grad(mine, params, retain_graph=True, allow_unused=True)
        norms = [0.0 if g is None else float(g.abs().sum()) for g in grads]
        cls, box = norms[:num_layers], norms[num_layers:]
        assert cls[i] > 0 and box[i] > 0, (i, norms)  # its own class head (VFL) and box head (L1 / GIoU / FGL)
        assert all(v == 0 for v in cls[i + 1:] + box[i + 1:]), (i, norms)  # no later layer's


def test_union_matching(bench):
    """GO-LSD's union of matchings: every query matched anywhere, to its most frequent target."""
    union = bench["peers_dfine_loss"].union_matching
    t = torch.tensor
    a = [(t([0, 3]), t([2, 0])), (t([], dtype=torch.long), t([], dtype=torch.long))]
    b = [(t([0, 5]), t([2, 0])), (t([2]), t([0]))]
    c = [(t([0, 3]), t([1, 1])), (t([2]), t([0]))]
    out = union([a, b, c])
    assert out[0][0].tolist() == [0, 3, 5] and out[0][1].tolist() == [2, 0, 0]  # query 3: targets 0, 1 once each
    assert out[1][0].tolist() == [2] and out[1][1].tolist() == [0]


def test_peer_settings(bench):
    """--peer-set NAME.KEY=VALUE: a peer's setting for one run, checked against its SETTINGS."""
    peers = bench["peers"]
    assert peers.peer_settings(["hf_dfine_n.lr=4e-4", "hf_rtdetr_r18.size=preset", "tv_fcos.lr=1"]) == {
        "hf_dfine_n": {"lr": 4e-4}, "hf_rtdetr_r18": {"size": "preset"}, "tv_fcos": {"lr": 1.0}}
    for bad in ("hf_dfine_n.lr", "dynamic_detr.lr=1e-4", "hf_dfine_n.lrr=1e-4", "hf_dfine_n.lr=fast"):
        with pytest.raises(ValueError, match="--peer-set"):
            peers.peer_settings([bad])
    with pytest.raises(ValueError, match="size"):
        peers.build("hf_dfine_n", get_preset("cpu_tiny"), CLASSES, 2, {"size": "huge"})
