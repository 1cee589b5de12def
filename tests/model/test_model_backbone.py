"""ResNet-FPN backbone: levels, norm choice, weights from the torchvision enum (hub cache) and local files."""

from __future__ import annotations

import copy
import math
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from dynamic_detr.config import BackboneConfig
from dynamic_detr.errors import CheckpointError, ConfigError
from dynamic_detr.model.backbone import Backbone

R18_URL = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url


def reference_state() -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict with non-default BN statistics, standing in for ImageNet weights."""
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
    return net.state_dict()


def assert_loaded(backbone: Backbone, state: dict[str, torch.Tensor]) -> None:
    body = backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(body.layer4[0].bn1.running_mean, state["layer4.0.bn1.running_mean"])


def trainable(module: nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def test_levels_strides_and_names():
    bb = Backbone(BackboneConfig(depth=18, weights=None), hidden_dim=32)
    feats = bb(torch.rand(1, 3, 97, 131))
    assert len(feats) == 5
    for f, s in zip(feats, (8, 16, 32, 64, 128), strict=True):
        assert f.shape == (1, 32, math.ceil(97 / s), math.ceil(131 / s))
    names = {n.split(".")[0] for n, _ in bb.named_parameters()}
    assert names == {"body", "fpn"}  # the trainer's lr groups rely on backbone.body.*
    assert not hasattr(bb.body, "fc")


def test_random_init_trains_bn_and_freezes_nothing():
    bb = Backbone(BackboneConfig(depth=18, weights=None, frozen_stages=1), hidden_dim=32)
    assert bb.norm == "bn" and not bb.pretrained
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert trainable(bb)


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"])
def test_enum_weights_load_from_hub_cache(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = reference_state()
    torch.save(state, cache / Path(R18_URL).name)  # the file name torchvision's download would write
    bb = Backbone(BackboneConfig(depth=18, weights=name, frozen_stages=1), hidden_dim=32)
    assert_loaded(bb, state)
    assert bb.norm == "frozen_bn"
    assert isinstance(bb.body.bn1, FrozenBatchNorm2d) and isinstance(bb.body.layer4[1].bn2, FrozenBatchNorm2d)
    # stem + stage 1 frozen, the rest trains
    assert frozen(bb.body.conv1) and frozen(bb.body.layer1)
    assert trainable(bb.body.layer2) and trainable(bb.body.layer4) and trainable(bb.fpn)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_weights(suffix, tmp_path):
    state = reference_state()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": state}, path)  # a wrapped checkpoint is unwrapped
    bb = Backbone(BackboneConfig(depth=18, weights=str(path), norm="bn", frozen_stages=2), hidden_dim=32)
    assert_loaded(bb, state)
    assert isinstance(bb.body.bn1, nn.BatchNorm2d)  # explicit norm wins over "auto"
    assert frozen(bb.body.conv1) and frozen(bb.body.layer1) and frozen(bb.body.layer2)
    assert trainable(bb.body.layer3)


def test_negative_frozen_stages_freezes_nothing(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(reference_state(), path)
    bb = Backbone(BackboneConfig(depth=18, weights=str(path), frozen_stages=-1), hidden_dim=32)
    assert bb.norm == "frozen_bn" and trainable(bb)


def test_load_weights_false_builds_pretrained_architecture_without_reading():
    bb = Backbone(BackboneConfig(depth=18, weights="/does/not/exist.pth"), hidden_dim=32, load_weights=False)
    assert bb.norm == "frozen_bn" and frozen(bb.body.layer1)


@pytest.mark.parametrize("weights, error, match", [
    ("IMAGENET9K_V1", ConfigError, "IMAGENET1K_V1"),
    ("ResNet50_Weights.IMAGENET1K_V2", ConfigError, "not resnet18 weights"),
    ("ResNet18_Weights.NOPE", ConfigError, "unknown torchvision weights"),
    ("missing.pth", CheckpointError, "not found"),
])
def test_bad_weights_names(weights, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        Backbone(BackboneConfig(depth=18, weights=weights), hidden_dim=32)


def test_bad_weights_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read backbone weights"):
        Backbone(BackboneConfig(depth=18, weights=str(garbage)), hidden_dim=32)
    foreign = tmp_path / "foreign.pth"
    torch.save({"head.weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not resnet18 weights"):
        Backbone(BackboneConfig(depth=18, weights=str(foreign)), hidden_dim=32)
    wrong = tmp_path / "r18_for_r34.pth"
    torch.save(reference_state(), wrong)
    with pytest.raises(CheckpointError, match="resnet34"):
        Backbone(BackboneConfig(depth=34, weights=str(wrong)), hidden_dim=32)


def test_uncached_enum_without_network_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match=Path(R18_URL).name) as info:
        Backbone(BackboneConfig(depth=18, weights="DEFAULT"), hidden_dim=32)
    assert "\n" not in str(info.value)


def test_group_norm_trunk_takes_imagenet_affines_and_drops_bn_statistics(tmp_path):
    state = reference_state()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    bb = Backbone(BackboneConfig(depth=18, weights=str(path), norm="gn", frozen_stages=-1), hidden_dim=32)
    assert bb.norm == "gn"
    norms = [m for m in bb.body.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in bb.body.modules())
    assert torch.equal(bb.body.layer4[0].bn1.weight, state["layer4.0.bn1.weight"])
    # batch-size independent: an image's features are the same alone and in a batch
    x = torch.rand(3, 3, 64, 64)
    torch.testing.assert_close(bb.train()(x[:1])[0], bb(x)[0][:1], rtol=1e-4, atol=1e-5)


def _alone_and_batched(aware: bool, size: tuple[int, int]) -> tuple[dict, dict]:
    """The outputs for image `a` alone (padded to /32 as collate pads) and beside a larger image."""
    from dynamic_detr.config import get_preset
    from dynamic_detr.model import DynamicDETR

    cfg = get_preset("cpu_tiny")
    cfg.model.num_classes = 3
    cfg.model.backbone.padding_aware = aware
    torch.manual_seed(0)
    model = copy.deepcopy(DynamicDETR(cfg.model)).eval()  # a copy (as the EMA model is) must mask too
    a, b = torch.rand(3, *size), torch.rand(3, 160, 190)

    def run(images: list[torch.Tensor]) -> dict:
        h, w = (-(-max(i.shape[d] for i in images) // 32) * 32 for d in (1, 2))
        x, masks = torch.zeros(len(images), 3, h, w), torch.ones(len(images), h, w, dtype=torch.bool)
        for k, image in enumerate(images):
            x[k, :, :image.shape[1], :image.shape[2]] = image
            masks[k, :image.shape[1], :image.shape[2]] = False
        with torch.no_grad():
            return model(x, masks)

    return run([a]), run([a, b])


def test_padding_aware_backbone_makes_detections_independent_of_the_batch():
    """`backbone.padding_aware`: an image (padded to /32 alone too) has the same logits alone and beside a larger
    image, to float32 rounding; without it the trunk's and FPN's convs read the padding the other image brings
    (0.39 in logits). Not covered: an image whose sides are multiples of 32 has no padding alone, and the RoI
    pooling clamps its samples onto the map's last row there but reads the padding in a batch (0.15 in logits
    measured; docs/recipe.md)."""
    size = (100, 70)
    alone, batched = _alone_and_batched(True, size)
    torch.testing.assert_close(batched["logits"][0], alone["logits"][0], atol=1e-4, rtol=0)
    torch.testing.assert_close(batched["boxes"][0], alone["boxes"][0], atol=1e-5, rtol=0)
    alone, batched = _alone_and_batched(False, size)
    assert (batched["logits"][0] - alone["logits"][0]).abs().max() > 1e-2  # what the switch removes
