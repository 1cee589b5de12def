"""Load a trained model from a run folder, a training checkpoint or a safetensors file: whole, for inference
(`load_model`), or tensor by tensor into a new model to fine-tune it (`transfer_weights`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import check_compatible, load_checkpoint, load_weights
from ..config import Config
from ..errors import CheckpointError, ConfigError
from .backbone import resolve_norm


def resolve_weights_path(path: Path) -> Path:
    """A run folder means its best checkpoint (else last); files are taken as they are."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt", "weights/best.safetensors", "weights/last.safetensors",
                     "model.safetensors"):
            if (path / name).exists():
                return path / name
        raise CheckpointError(f"{path}: no best.pt, last.pt or *.safetensors in this folder")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    return path


@dataclass
class TrainedState:
    """A trained model's weights as read from a file, with the config it was trained with."""

    path: Path
    """The file read (a folder resolves to its best.pt, last.pt or *.safetensors)."""
    state: dict[str, torch.Tensor]
    config: Config
    ema: bool
    """The weights are a training checkpoint's EMA weights."""


def read_trained(path: str | Path, prefer_ema: bool = True) -> TrainedState:
    """The weights and config at `path` (run folder, `save_pretrained` folder, .pt checkpoint or weights
    .safetensors); a training checkpoint's EMA weights when present and `prefer_ema`. Raises CheckpointError
    (one line naming the file) for a missing, malformed or foreign file."""
    path = resolve_weights_path(Path(path))
    ema = False
    if path.suffix == ".safetensors":
        state, meta = load_weights(path)
        config_json = path.parent / "config.json"  # a save_pretrained directory: its config.json rules
        if path.name == "model.safetensors" and config_json.is_file():
            meta["config"] = config_json.read_text()
        if "config" not in meta:
            raise CheckpointError(f"{path}: safetensors file has no 'config' metadata; not a dynamic-detr model")
        try:
            cfg_dict = json.loads(meta["config"])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: config is not valid JSON") from None
    else:
        ckpt = load_checkpoint(path)  # also checks that `model` and `ema` (when present) map names to tensors
        cfg_dict = ckpt.get("config")
        if not isinstance(cfg_dict, dict):
            raise CheckpointError(f"{path}: checkpoint holds no config")
        state = ckpt["model"]
        if prefer_ema and ckpt.get("ema"):
            prefix = "module."
            state = {k[len(prefix):]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}
            if not state:
                raise CheckpointError(f"{path}: malformed checkpoint: 'ema' holds no '{prefix}*' weights "
                                      "(not an EMA state dict)")
            ema = True
    try:
        cfg = Config.from_dict(cfg_dict, source=f"{path} (config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None  # names the file: "<path> (config): ..."
    return TrainedState(path, dict(state), cfg, ema)


def load_model(path: str | Path, device: torch.device | str = "cpu", prefer_ema: bool = True,
               decoder_stages: int | None = None):
    """(model in eval mode, config) from `path`; a training checkpoint's EMA weights are used when present;
    `decoder_stages`: run the first N decoder stages at inference (`DecoderConfig.eval_stages`; None: as
    saved)."""
    from . import DynamicDETR

    trained = read_trained(path, prefer_ema)
    path, state, cfg = trained.path, trained.state, trained.config
    b = cfg.model.backbone
    b.norm = resolve_norm(b, pretrained=bool(b.weights))  # keep the norm layers the model was trained with ...
    b.weights = None  # ... but don't fetch pretrained weights: the trained ones below replace them
    model = DynamicDETR(cfg.model)
    check_compatible(state, model, source=str(path))
    model.load_state_dict(state)
    model.run_config = cfg
    if decoder_stages is not None:
        try:
            model.set_eval_stages(decoder_stages)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    return model.to(device).eval(), cfg


# --------------------------------------------------------------------------- fine-tuning
@dataclass
class WeightsTransfer:
    """What `transfer_weights` loaded into a model, and what it left at the model's fresh init and why."""

    source: Path
    ema: bool
    total: int
    """Tensors in the model's state dict."""
    loaded: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, list[int], list[int]]] = field(default_factory=list)
    """(name, shape in the file, shape in the model): not loaded."""
    missing: list[str] = field(default_factory=list)
    """In the model, not in the file: not loaded."""
    unexpected: list[str] = field(default_factory=list)
    """In the file, not in the model: not used."""
    classes: tuple[int, int] = (0, 0)
    """Number of classes of the file's model and of this one."""
    same_names: bool = True
    """The two models' class names agree (or one of them has none)."""

    def summary(self) -> str:
        """A few lines for the run's log: loaded N of M tensors, then each kind of tensor not loaded."""
        ema = " (its EMA weights)" if self.ema else ""
        lines = [f"weights: loaded {len(self.loaded)} of {self.total} tensors from {self.source}{ema}"]
        if self.mismatched:
            name, a, b = self.mismatched[0]
            lines.append(f"  not loaded, shape mismatch ({len(self.mismatched)}, kept at their fresh init): "
                         f"{_modules([k for k, _, _ in self.mismatched])} (e.g. {name}: {a} in the file, {b} here)")
        if self.missing:
            lines.append(f"  not loaded, not in the file ({len(self.missing)}, kept at their fresh init): "
                         f"{_modules(self.missing)}")
        if self.unexpected:
            lines.append(f"  not used, not in this model ({len(self.unexpected)}): {_modules(self.unexpected)}")
        theirs, ours = self.classes
        if theirs != ours:
            lines.append(f"  classes: {theirs} in the file's model, {ours} here: the class heads start fresh")
        elif not self.same_names:
            lines.append(f"  classes: {ours} in both but named differently: the class heads are loaded as they "
                         "are (the file's label i starts as this dataset's label i)")
        if 2 * len(self.loaded) < self.total:
            lines.append("  most tensors did not fit: was the file trained with another model config? "
                         "(--preset / --config must describe the same architecture)")
        return "\n".join(lines)


def transfer_weights(model: torch.nn.Module, source: TrainedState | str | Path) -> WeightsTransfer:
    """Load every tensor of `source` whose name and shape fit `model`; the others keep the model's fresh init.
    Class heads built for another number of classes (decoder class FCs, dense head class conv, denoising label
    embedding) differ in shape, so they keep theirs, focal prior bias included. Raises CheckpointError naming
    the file when nothing fits."""
    trained = source if isinstance(source, TrainedState) else read_trained(source)
    expected = model.state_dict()
    state = trained.state
    report = WeightsTransfer(trained.path, trained.ema, len(expected))
    fit: dict[str, torch.Tensor] = {}
    for k, v in expected.items():
        if k not in state:
            report.missing.append(k)
        elif state[k].shape != v.shape:
            report.mismatched.append((k, list(state[k].shape), list(v.shape)))
        else:
            fit[k] = state[k]
    report.unexpected = [k for k in state if k not in expected]
    if not fit:
        raise CheckpointError(f"{trained.path}: none of its {len(state)} tensors fit this model "
                              "(another architecture?)")
    model.load_state_dict(fit, strict=False)
    report.loaded = list(fit)
    theirs, ours = trained.config.model, getattr(model, "cfg", None)
    n_ours = ours.num_classes if ours is not None else theirs.num_classes
    report.classes = (theirs.num_classes, n_ours)
    names_ours = list(ours.class_names) if ours is not None else []
    report.same_names = not (theirs.class_names and names_ours) or list(theirs.class_names) == names_ours
    return report


def _modules(names: Sequence[str], limit: int = 4) -> str:
    """The modules of parameter `names`, stage / block indices folded into `*`: "decoder.stages.*.cls_head.*"."""
    mods: dict[str, None] = {}
    for name in names:
        mod = name.rsplit(".", 1)[0] if "." in name else name
        mods[re.sub(r"\.\d+(?=\.|$)", ".*", mod)] = None
    shown = list(mods)
    text = ", ".join(shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")
