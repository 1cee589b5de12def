"""Backbone: torchvision ResNet trunk (`body`) + FPN on C3-C5 with P6/P7 (`fpn`), giving P3-P7.

The paper (docs/paper.md): R50-FPN with 5 scales (P3-P7, `hidden_dim` channels, P6/P7 from P5 as in
RetinaNet/ATSS). Frozen BN and a frozen stem + stage 1 are right for pretrained weights; at random init frozen
BN is an identity, so `norm="auto"` trains BN instead and nothing is frozen.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..config import BackboneConfig
from ..errors import CheckpointError, ConfigError
from .padding import level_masks

# C3, C4, C5 of torchvision's ResNet, renamed to the FPN level they feed
RETURN_LAYERS = {"layer2": "c3", "layer3": "c4", "layer4": "c5"}
STRIDES = (8, 16, 32, 64, 128)
"""Strides of P3..P7 w.r.t. the input image."""
LOCAL_SUFFIXES = (".pth", ".pt", ".safetensors")


def resolve_norm(cfg: BackboneConfig, pretrained: bool) -> str:
    """"frozen_bn" or "bn": `auto` follows whether weights are loaded (docs/paper.md, Backbone)."""
    if cfg.norm == "auto":
        return "frozen_bn" if pretrained else "bn"
    return cfg.norm


def resolve_enum_weights(name: str, depth: int) -> torchvision.models.WeightsEnum:
    """A torchvision weights enum member for `resnet{depth}` from "DEFAULT", "IMAGENET1K_V1" or a full name
    such as "ResNet50_Weights.IMAGENET1K_V2". Raises ConfigError naming the valid choices."""
    enum = torchvision.models.get_model_weights(f"resnet{depth}")
    valid = ["DEFAULT", *(m.name for m in enum)]
    if "." in name:
        try:
            weights = torchvision.models.get_weight(name)
        except (ValueError, KeyError, AttributeError):
            raise ConfigError(
                f"model.backbone.weights: unknown torchvision weights '{name}' "
                f"(for resnet{depth}: {', '.join(f'{enum.__name__}.{v}' for v in valid)}, "
                "or a .pth/.safetensors file)") from None
        if not isinstance(weights, enum):
            raise ConfigError(f"model.backbone.weights: '{name}' are not resnet{depth} weights "
                              f"(model.backbone.depth={depth}); use {enum.__name__}.*")
        return weights
    if name not in valid:
        raise ConfigError(f"model.backbone.weights: '{name}' is neither a file nor a resnet{depth} weights "
                          f"name ({', '.join(valid)}); local files must end in {'/'.join(LOCAL_SUFFIXES)}")
    return enum[name]


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Wu & He 2018; He et al., "Rethinking ImageNet Pre-training": from scratch,
    GN makes the statistics independent of the batch size)."""
    return nn.GroupNorm(32, channels)


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """A ResNet state dict from a local .pth/.pt (`torch.load(weights_only=True)`) or .safetensors file.
    A {"state_dict": ...} or {"model": ...} wrapper is unwrapped. Raises CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or unsafe files all end up here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read backbone weights ({first[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def load_pretrained(resnet: nn.Module, weights: str, depth: int) -> None:
    """Load `weights` (enum name or local file) into a torchvision ResNet (the classifier `fc` is ignored)."""
    path = Path(weights).expanduser()
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        source = str(path)
        state = load_state_dict_file(path)
    else:
        enum_weights = resolve_enum_weights(weights, depth)
        source = f"{enum_weights} ({enum_weights.url})"
        try:
            state = enum_weights.get_state_dict(progress=False)
        except Exception as e:  # offline: URLError / OSError; a corrupt cache file: RuntimeError
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum_weights.url).name
            raise CheckpointError(f"cannot load {source}: {type(e).__name__}: {str(e)[:120]}; "
                                  f"without network, put the file at {cache}") from None
    # the classifier is not part of the trunk: a checkpoint with any number of classes fits
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # a GroupNorm trunk (norm="gn") takes the BN affines, not the BN statistics
    own = resnet.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    state = {k: v for k, v in state.items() if k in own or not k.endswith(stats)}
    try:
        missing, unexpected = resnet.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: e.g. R18 weights for an R50
        raise CheckpointError(f"{source}: does not fit resnet{depth} "
                              f"({str(e).splitlines()[-1].strip()[:160]})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{source}: not resnet{depth} weights ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected keys, e.g. {what})")


def freeze_stages(resnet: nn.Module, frozen_stages: int) -> None:
    """No gradient for the stem (conv1, bn1) and `layer1..layer{frozen_stages}`; negative: nothing frozen."""
    if frozen_stages < 0:
        return
    names = ["conv1", "bn1"] + [f"layer{i}" for i in range(1, frozen_stages + 1)]
    for name in names:
        for p in getattr(resnet, name).parameters():
            p.requires_grad_(False)


class Backbone(BackboneWithFPN):
    """ResNet-FPN: `body` (IntermediateLayerGetter over C3-C5) and `fpn` (FeaturePyramidNetwork + P6/P7).

    Args:
        cfg: backbone section of the config.
        hidden_dim: FPN channels.
        load_weights: read `cfg.weights` (False: same architecture, norm and freezing, but no file is read,
            e.g. when a full checkpoint is loaded next or only the structure matters).
    Attributes:
        pretrained: weights are configured (decides norm "auto" and whether stages are frozen).
        norm: the resolved norm, "frozen_bn" | "bn" | "gn".
        strides: strides of the returned levels P3..P7.
    """

    def __init__(self, cfg: BackboneConfig, hidden_dim: int, load_weights: bool = True) -> None:
        pretrained = cfg.weights is not None
        norm = resolve_norm(cfg, pretrained)
        norm_layer = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": _group_norm}[norm]
        resnet = torchvision.models.get_model(f"resnet{cfg.depth}", weights=None, norm_layer=norm_layer)
        if pretrained and load_weights:
            load_pretrained(resnet, str(cfg.weights), cfg.depth)
        if pretrained:  # freezing random weights would freeze noise (`BackboneConfig.frozen_stages`)
            freeze_stages(resnet, cfg.frozen_stages)
        c5 = resnet.fc.in_features  # 512 (R18/34) or 2048 (R50/101)
        in_channels = [c5 // 4, c5 // 2, c5]
        # P6 from the P5 output (use_P5, as FCOS/ATSS): in_channels == out_channels
        super().__init__(resnet, RETURN_LAYERS, in_channels, hidden_dim,
                         extra_blocks=LastLevelP6P7(hidden_dim, hidden_dim))
        self.pretrained = pretrained
        self.norm = norm
        self.strides = STRIDES
        self.padding = _PaddingMasks(self) if cfg.padding_aware else None

    def forward(self, x: Tensor, valid_hw: Tensor | None = None) -> list[Tensor]:  # type: ignore[override]
        """x: [B, 3, H, W] normalised -> [P3, ..., P7], each [B, hidden_dim, ceil(H / s), ceil(W / s)].
        valid_hw: [B, 2] each image's unpadded (h, w), for `padding_aware` (None: no padding to mind)."""
        if self.padding is None or valid_hw is None:
            return list(self.fpn(self.body(x)).values())
        with self.padding.active(valid_hw, (int(x.shape[-2]), int(x.shape[-1]))):
            return list(self.fpn(self.body(x)).values())


class _PaddingMasks:
    """`BackboneConfig.padding_aware`: forward hooks that zero the padded positions of the maps that feed a conv
    (every norm layer's output, the stem's max-pool, the FPN's lateral sums, P5 and P6), while `active`. A conv
    then sees zeros beyond each image's region, as it sees its zero padding when the image is alone."""

    def __init__(self, backbone: Backbone) -> None:
        self.valid_hw: Tensor | None = None
        self.input_hw = (0, 0)
        self.cache: dict[tuple[int, int], Tensor] = {}
        masked = [m for m in backbone.body.modules()
                  if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d | nn.GroupNorm | nn.MaxPool2d)]
        masked += [*backbone.fpn.layer_blocks, backbone.fpn.extra_blocks.p6, backbone.fpn.extra_blocks.p7]
        # the state hangs on each hooked module (not in a closure), so that a deep copy (the EMA model) hooks
        # its own copy of it
        for module in masked:
            module._padding_masks = self
            module.register_forward_hook(_mask_output)
        for module in backbone.fpn.layer_blocks:  # the lateral + top-down sum, before its 3x3 conv
            module.register_forward_pre_hook(_mask_input)

    @contextlib.contextmanager
    def active(self, valid_hw: Tensor, input_hw: tuple[int, int]) -> Iterator[None]:
        self.valid_hw, self.input_hw, self.cache = valid_hw, input_hw, {}
        try:
            yield
        finally:
            self.valid_hw, self.cache = None, {}

    def mask(self, x: Tensor) -> Tensor:
        if self.valid_hw is None:
            return x
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if (h, w) not in self.cache:
            stride = 2 ** round(math.log2(self.input_hw[0] / h))  # P6 / P7 sizes are ceil-halved: not exact
            self.cache[(h, w)] = level_masks(self.valid_hw, [(h, w)], (stride,))[0]
        return x * self.cache[(h, w)].to(x.dtype)


def _mask_output(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    return module._padding_masks.mask(out)


def _mask_input(module: nn.Module, args: tuple) -> tuple:
    return (module._padding_masks.mask(args[0]), *args[1:])

