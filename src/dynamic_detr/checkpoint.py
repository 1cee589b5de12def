"""Checkpoints: atomic writes, safe loads (`weights_only`), clear one-line errors.

Two kinds of file:
* training checkpoints (`.pt`, `save_checkpoint` / `load_checkpoint`): a dict with a format marker, a
  version and at least `model` (the state dict); everything else (config as a plain dict, optimizer and
  scheduler state, per-rank RNG states, counters) is the trainer's; `check_training_state` checks what a
  resume needs. Only weights_only-loadable types are allowed, so loading never runs code from the file.
* model weights (`.safetensors`, `save_weights` / `load_weights`): tensors plus string metadata (the config
  as JSON text).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .fileio import atomic_write

FORMAT = "dynamic-detr-checkpoint"
VERSION = 1
WEIGHTS_FORMAT = "dynamic-detr-weights"
WEIGHTS_VERSION = 1
_RESERVED_METADATA = ("format", "format_version")
_LEAVES = (torch.Tensor, bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


# --------------------------------------------------------------------------- training checkpoints
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (+ format marker and version) to `path` atomically: a temp file in the same folder,
    flushed and fsynced, then `os.replace`d over `path`; on any error `path` keeps its old content and the
    temp file is removed. Raises TypeError for a value `torch.load(weights_only=True)` could not read."""
    if "model" not in state:
        raise ValueError("checkpoint state must hold the model state dict under 'model'")
    _check_types(state, "state")
    payload = {"format": FORMAT, "version": VERSION,
               **{k: v for k, v in state.items() if k not in ("format", "version")}}
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with `torch.load(weights_only=True)`.

    Raises CheckpointError (one line naming the file) for a missing, empty, truncated or corrupt file, a
    pickle that would import or call anything but weights, a file that is not a dynamic-detr checkpoint
    (no format marker, newer version, no `model`), and a malformed one: `model` / `ema` not a mapping of
    names to tensors, `config` / `optimizer` / `scaler` not a mapping.
    """
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load checkpoint: {_load_failure(e, path)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a dynamic-detr checkpoint (holds a {type(state).__name__}, "
                              f"expected a dict marked format='{FORMAT}')")
    if state.get("format") != FORMAT:
        bare = state and all(isinstance(v, torch.Tensor) for v in state.values())
        what = "a bare state dict" if bare else f"no format='{FORMAT}' marker"
        if path.suffix == ".safetensors":
            what += "; a weights file? load it with load_weights"
        raise CheckpointError(f"{path}: not a dynamic-detr checkpoint ({what})")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: checkpoint has no valid format version (got {version!r})")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this dynamic-detr "
                              f"reads ({VERSION}); upgrade dynamic-detr")
    if not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{path}: checkpoint holds no model state dict ('model')")
    _check_tensors(state["model"], "model", path)
    if state.get("ema") is not None:
        if not isinstance(state["ema"], Mapping):
            raise CheckpointError(f"{path}: malformed checkpoint: 'ema' is a {type(state['ema']).__name__}, "
                                  "not a state dict")
        _check_tensors(state["ema"], "ema", path)
    for key in ("config", "optimizer", "scaler"):
        if state.get(key) is not None and not isinstance(state[key], Mapping):
            raise CheckpointError(f"{path}: malformed checkpoint: '{key}' is a {type(state[key]).__name__}, "
                                  "not a mapping")
    return state


_COUNTERS: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "epoch_samples": (int,), "step": (int,), "nonfinite_total": (int,), "world_size": (int,),
    "batch_size": (int,), "elapsed": (int, float), "best_ap": (int, float), "minutes": (int, float, type(None)),
}


def check_training_state(state: Mapping[str, Any], path: str | Path) -> None:
    """CheckpointError (one line naming `path`) unless `state` (from `load_checkpoint`) can resume training:
    a valid config, an optimizer state, counters of the right types, well-formed epoch stats, AP history (early
    stopping's record) and RNG states."""
    from .config import Config
    from .distributed import rng_states_problem
    from .errors import ConfigError

    if "optimizer" not in state or state["optimizer"] is None:
        raise CheckpointError(f"{path}: holds weights only, not a training state; cannot resume from it")
    opt = state["optimizer"]
    if not (isinstance(opt, Mapping) and isinstance(opt.get("state"), Mapping)
            and isinstance(opt.get("param_groups"), list | tuple)):
        raise CheckpointError(f"{path}: malformed checkpoint: 'optimizer' has no 'state' / 'param_groups'")
    if not isinstance(state.get("config"), Mapping):
        raise CheckpointError(f"{path}: malformed checkpoint: no 'config' (the run's config is needed to resume)")
    try:
        Config.from_dict(dict(state["config"]), source=f"{path} (config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None  # names the file: "<path> (config): ..."
    for key, types in _COUNTERS.items():
        if key not in state:
            continue
        v = state[key]
        ok = isinstance(v, types) and not isinstance(v, bool)
        if ok and v is not None and key != "best_ap" and v < 0:
            ok = False
        if not ok:
            want = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise CheckpointError(f"{path}: malformed checkpoint: '{key}' is {_short(v)}, expected {want}"
                                  f"{'' if key == 'best_ap' else ' (>= 0)'}")
    stats = state.get("epoch_stats")
    if "epoch_stats" in state and not (
            isinstance(stats, Mapping) and isinstance(stats.get("sums"), Mapping)
            and all(_is_number(stats.get(k), int) for k in ("count", "skipped"))
            and _is_number(stats.get("seconds"), int | float)):
        raise CheckpointError(f"{path}: malformed checkpoint: 'epoch_stats' is not "
                              "{sums: {...}, count: int, skipped: int, seconds: float}")
    history = state.get("val_history")
    if "val_history" in state and not (
            isinstance(history, list | tuple)
            and all(isinstance(e, list | tuple) and len(e) == 2 and _is_number(e[0], int)
                    and _is_number(e[1], int | float) for e in history)):
        raise CheckpointError(f"{path}: malformed checkpoint: 'val_history' is not a list of [epoch, AP]")
    problem = rng_states_problem(state.get("rng")) if "rng" in state else None
    if problem is None and "rng_torch" in state and not _is_byte_tensor(state["rng_torch"]):
        problem = "'rng_torch' is not a uint8 tensor"
    if problem is not None:
        raise CheckpointError(f"{path}: malformed checkpoint: {problem}")


# --------------------------------------------------------------------------- safetensors weights
def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write model weights to a safetensors file atomically; `metadata` (str -> str, e.g. the config as
    JSON under "config") is stored in the header next to a format marker."""
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata must map str to str, got {k!r}: {type(v).__name__}")
        if k in _RESERVED_METADATA:
            raise ValueError(f"metadata key {k!r} is reserved")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():  # safetensors refuses tensors sharing storage (tied weights)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    meta = {**metadata, "format": WEIGHTS_FORMAT, "format_version": str(WEIGHTS_VERSION)}

    from safetensors.torch import save_file

    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict on CPU, metadata without the format keys) from a file written by `save_weights`.
    Raises CheckpointError naming the file for a missing, truncated, foreign or non-safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    _check_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            if metadata.get("format") != WEIGHTS_FORMAT:
                raise CheckpointError(f"{path}: not a dynamic-detr weights file "
                                      f"(no format='{WEIGHTS_FORMAT}' metadata)")
            version = metadata.get("format_version", "")
            if not version.isdigit() or int(version) > WEIGHTS_VERSION:
                raise CheckpointError(f"{path}: unsupported weights format version {version!r} (this "
                                      f"dynamic-detr reads up to {WEIGHTS_VERSION})")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except CheckpointError:
        raise
    except Exception as e:
        hint = "; a training checkpoint (.pt)? use load_checkpoint" if path.suffix != ".safetensors" else ""
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{_first_line(e)}{hint}") from None
    return state, {k: v for k, v in metadata.items() if k not in _RESERVED_METADATA}


# --------------------------------------------------------------------------- compatibility
def check_compatible(state_dict: Mapping[str, Any], model: torch.nn.Module, source: str | Path | None = None,
                     examples: int = 3) -> None:
    """Raise CheckpointError if `state_dict` does not fit `model` key for key and shape, e.g.
    "checkpoint X was made for a different config: 12 missing keys e.g. a, b, c; shape mismatch for
    decoder.x: [256] (checkpoint) vs [128] (model)". An entry that is not a tensor is a CheckpointError too
    ("... malformed checkpoint: 'model' entry 'x' is a int, not a tensor")."""
    _check_tensors(state_dict, "model", source)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, list(state_dict[k].shape), list(expected[k].shape)) for k in expected
                  if k in state_dict and isinstance(state_dict[k], torch.Tensor)
                  and state_dict[k].shape != expected[k].shape]
    parts = []
    for keys, what in ((missing, "missing"), (unexpected, "unexpected")):
        if keys:
            s = "" if len(keys) == 1 else "s"
            parts.append(f"{len(keys)} {what} key{s} e.g. {', '.join(keys[:examples])}")
    if mismatched:
        k, a, b = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        parts.append(f"shape mismatch for {k}: {a} (checkpoint) vs {b} (model){more}")
    if parts:
        name = f"checkpoint {source}" if source is not None else "checkpoint"
        raise CheckpointError(f"{name} was made for a different config: {'; '.join(parts)}")


# --------------------------------------------------------------------------- helpers
def _check_tensors(state_dict: Mapping[Any, Any], what: str, path: Path | str | None) -> None:
    """CheckpointError naming the first entry of `state_dict` that is not a tensor under a string name."""
    for k, v in state_dict.items():
        if not isinstance(k, str):
            problem = f"'{what}' has a {type(k).__name__} key {_short(k)}, not a parameter name"
        elif not isinstance(v, torch.Tensor):
            problem = f"'{what}' entry '{k}' is a {type(v).__name__}, not a tensor"
        else:
            continue
        where = f"{path}: malformed checkpoint" if path is not None else "malformed state dict"
        raise CheckpointError(f"{where}: {problem}")


def _is_byte_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1


def _is_number(v: Any, types: Any) -> bool:
    return isinstance(v, types) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted copy?)")


def _check_types(value: Any, where: str) -> None:
    """TypeError naming the entry (e.g. `state['optimizer']['state'][0]`) that weights_only cannot load."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_types(k, f"{where} key {k!r}")
            _check_types(v, f"{where}[{k!r}]")
    elif isinstance(value, list | tuple | set):
        for i, v in enumerate(value):
            _check_types(v, f"{where}[{i}]")
    elif not isinstance(value, _LEAVES):
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: checkpoints hold "
                        "only tensors, dicts, lists, tuples, numbers, strings and None")


def _load_failure(e: Exception, path: Path) -> str:
    """One line saying why `torch.load(weights_only=True)` failed."""
    text = str(e)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"refused to load: the file would import or call '{unsafe.group(1)}' (code or a foreign "
                "object, not weights); nothing was executed")
    if isinstance(e, EOFError):
        return "the file ends early (truncated)"
    if "central directory" in text or "zip archive" in text:
        return "truncated or corrupt zip archive (an interrupted write or copy?)"
    if isinstance(e, OSError):
        return f"cannot read the file ({e.strerror or _first_line(e)})"
    operand = re.search(r"Unsupported operand \d+", text)
    detail = operand.group(0) if operand else f"{type(e).__name__}: {_first_line(e)}"
    return f"not a torch checkpoint, or corrupt (unreadable data: {detail})"


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."
