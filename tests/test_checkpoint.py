"""Checkpoints: atomic save, safe load with clear errors, safetensors weights, compatibility messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from dynamic_detr import checkpoint as ckpt
from dynamic_detr.checkpoint import (
    check_compatible,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from dynamic_detr.errors import CheckpointError


def _model(hidden: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.Linear(hidden, 2))


def _train_state() -> dict:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return {"config": {"name": "t", "train": {"lr": 1e-3, "lr_drop_epochs": [11]}, "weights": None},
            "model": model.state_dict(), "optimizer": opt.state_dict(), "ema": None, "epoch": 3,
            "best_ap": 12.5, "rng_torch": torch.get_rng_state()}


def _only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class _Payload:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- training checkpoints
def test_round_trip(tmp_path: Path) -> None:
    state = _train_state()
    path = tmp_path / "last.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["format"] == ckpt.FORMAT and loaded["version"] == ckpt.VERSION
    assert loaded["config"] == state["config"] and loaded["epoch"] == 3 and loaded["ema"] is None
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert torch.equal(loaded["rng_torch"], state["rng_torch"])
    opt = torch.optim.AdamW(_model().parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizer"])
    assert _only_file(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("fail_at", ["write", "fsync"])
def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            fail_at: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 1})
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:
            fh.truncate(size // 2)
        raise OSError("disk full")

    def bad_fsync(fd):
        raise OSError("I/O error")

    if fail_at == "write":
        monkeypatch.setattr(torch, "save", half_save)
    else:
        monkeypatch.setattr(os, "fsync", bad_fsync)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "epoch": 2})
    monkeypatch.undo()
    assert _only_file(tmp_path) == ["last.pt"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_save_rejects_unloadable_types_and_missing_model(tmp_path: Path) -> None:
    import numpy as np

    with pytest.raises(TypeError, match=r"state\['extra'\]\['arr'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "a.pt", {"model": {}, "extra": {"arr": np.zeros(2)}})
    with pytest.raises(ValueError, match="'model'"):
        save_checkpoint(tmp_path / "a.pt", {"epoch": 1})
    assert _only_file(tmp_path) == []


def _bad_files(folder: Path) -> dict[str, Path]:
    good = folder / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.randn(64, 64)}})
    data = good.read_bytes()
    files = {
        "missing": folder / "nope.pt",
        "empty": folder / "empty.pt",
        "truncated": folder / "truncated.pt",
        "random": folder / "random.pt",
        "text": folder / "notes.pt",
        "bare_state_dict": folder / "bare.pt",
        "foreign_dict": folder / "foreign.pt",
        "newer_version": folder / "newer.pt",
        "no_model": folder / "nomodel.pt",
        "list": folder / "list.pt",
        "safetensors": folder / "w.safetensors",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["random"].write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                              dtype=torch.uint8).numpy().tobytes())
    files["text"].write_text("epoch: 3\nmodel: resnet\n")
    torch.save({"w": torch.zeros(2)}, files["bare_state_dict"])
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, files["foreign_dict"])
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION + 1, "model": {}}, files["newer_version"])
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION}, files["no_model"])
    torch.save([torch.zeros(2)], files["list"])
    save_weights(files["safetensors"], {"w": torch.zeros(2)}, {})
    return files


@pytest.mark.parametrize(("case", "words"), [
    ("missing", "no such file"), ("empty", "empty"), ("truncated", "truncated"), ("random", "not a torch"),
    ("text", "not a torch"), ("bare_state_dict", "bare state dict"), ("foreign_dict", "format"),
    ("newer_version", "newer"), ("no_model", "no model"), ("list", "holds a list"),
    ("safetensors", "load_weights"),
])
def test_bad_checkpoints_give_one_line_errors(tmp_path: Path, case: str, words: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and words in message
    assert "\n" not in message


def test_code_payload_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": 1, "model": {}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "refused" in str(info.value) and "system" in str(info.value)
    assert not marker.exists()


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------- safetensors
def test_weights_round_trip_with_metadata_and_tied_tensors(tmp_path: Path) -> None:
    model = _model()
    state = dict(model.state_dict())
    state["tied"] = state["0.weight"]  # shares storage: must still save
    meta = {"config": '{"model": {"hidden_dim": 8}}', "note": "ünïcode ok"}
    path = tmp_path / "weights" / "best.safetensors"
    save_weights(path, state, meta)
    loaded, loaded_meta = load_weights(path)
    assert loaded_meta == meta
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v) and loaded[k].device.type == "cpu"
    assert _only_file(path.parent) == ["best.safetensors"]


def test_weights_failed_save_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    save_weights(path, {"w": torch.ones(2)}, {"v": "1"})

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("boom")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(RuntimeError, match="boom"):
        save_weights(path, {"w": torch.zeros(2)}, {"v": "2"})
    monkeypatch.undo()
    assert _only_file(tmp_path) == ["w.safetensors"]
    assert load_weights(path)[1] == {"v": "1"}


def test_weights_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="str"):
        save_weights(tmp_path / "w.safetensors", {"w": torch.ones(1)}, {"epoch": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        save_weights(tmp_path / "w.safetensors", {"w": torch.ones(1)}, {"format": "x"})


@pytest.mark.parametrize(("case", "words"), [
    ("missing", "no such file"), ("truncated", "not a readable safetensors"), ("random", "not a readable"),
    ("torch_pt", "use load_checkpoint"), ("foreign", "not a dynamic-detr weights file"),
])
def test_bad_weights_files(tmp_path: Path, case: str, words: str) -> None:
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_weights(good, {"w": torch.randn(32, 32)}, {"config": "{}"})
    paths = {"missing": tmp_path / "nope.safetensors", "truncated": tmp_path / "cut.safetensors",
             "random": tmp_path / "rand.safetensors", "torch_pt": tmp_path / "last.pt",
             "foreign": tmp_path / "other.safetensors"}
    paths["truncated"].write_bytes(good.read_bytes()[:-100])
    paths["random"].write_bytes(bytes(range(256)) * 8)
    save_checkpoint(paths["torch_pt"], {"model": {"w": torch.zeros(2)}})
    save_file({"w": torch.zeros(2)}, paths["foreign"])
    with pytest.raises(CheckpointError) as info:
        load_weights(paths[case])
    assert str(paths[case]) in str(info.value) and words in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- compatibility
def test_check_compatible_accepts_matching_state() -> None:
    check_compatible(_model().state_dict(), _model())


def test_check_compatible_reports_shape_mismatch() -> None:
    with pytest.raises(CheckpointError) as info:
        check_compatible(_model(16).state_dict(), _model(8), source="runs/a/best.pt")
    msg = str(info.value)
    assert msg.startswith("checkpoint runs/a/best.pt was made for a different config: ")
    assert "shape mismatch for 0.weight: [16, 4] (checkpoint) vs [8, 4] (model) (and 6 more)" in msg


def test_check_compatible_reports_missing_and_unexpected_keys() -> None:
    state = _model().state_dict()
    del state["2.weight"], state["2.bias"]
    state["head.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_compatible(state, _model())
    msg = str(info.value)
    assert "2 missing keys e.g. 2.weight, 2.bias" in msg
    assert "1 unexpected key e.g. head.extra" in msg
    assert "shape mismatch" not in msg


# --------------------------------------------------------------------------- malformed but loadable files
def _resumable() -> dict:
    """A well-formed training state as the trainer writes it (a valid config, optimizer, counters, RNG)."""
    from dynamic_detr.config import get_preset
    from dynamic_detr.distributed import rng_state

    state = _train_state()
    state.update(config=get_preset("cpu_tiny").to_dict(), epoch_samples=0, step=7, elapsed=1.5,
                 nonfinite_total=0, minutes=None, world_size=1, batch_size=4, rng=[rng_state()],
                 epoch_stats={"sums": {"loss": 1.0}, "count": 1, "skipped": 0, "seconds": 0.5})
    del state["rng_torch"]
    return state


# case -> (what to change in a resumable state (None: drop the key), loader that must refuse it, words)
MALFORMED = {
    "top_level_tuple": (None, "load", "holds a tuple"),
    "truncated": (None, "load", "truncated"),
    "model_int_value": ({"model": {"w": torch.zeros(2), "n": 3}}, "load", "'model' entry 'n' is a int, not a tensor"),
    "model_list_value": ({"model": {"w": [1.0, 2.0]}}, "load", "'model' entry 'w' is a list"),
    "model_int_key": ({"model": {0: torch.zeros(2)}}, "load", "'model' has a int key 0"),
    "ema_list": ({"ema": [torch.zeros(2)]}, "load", "'ema' is a list, not a state dict"),
    "ema_str_value": ({"ema": {"module.w": "x"}}, "load", "'ema' entry 'module.w' is a str"),
    "config_list": ({"config": [1, 2]}, "load", "'config' is a list, not a mapping"),
    "optimizer_str": ({"optimizer": "adamw"}, "load", "'optimizer' is a str, not a mapping"),
    "ema_without_module_weights": ({"ema": {"n_averaged": torch.tensor(3)}}, "model", "holds no 'module.*'"),
    "model_missing_config": ({"config": None}, "model", "holds no config"),
    "missing_config": ({"config": None}, "resume", "no 'config'"),
    "missing_optimizer": ({"optimizer": None}, "resume", "weights only"),
    "optimizer_without_state": ({"optimizer": {"param_groups": []}}, "resume", "'optimizer' has no 'state'"),
    "config_unknown_key": ({"config": {"train": {"lrr": 1.0}}}, "resume", "unknown key 'lrr'"),
    "step_is_text": ({"step": "7"}, "resume", "'step' is '7', expected int"),
    "negative_epoch": ({"epoch": -1}, "resume", "'epoch' is -1"),
    "epoch_stats_list": ({"epoch_stats": [1, 2]}, "resume", "'epoch_stats' is not"),
    "val_history_pairs_of_three": ({"val_history": [[1, 5.0, 2]]}, "resume", "'val_history' is not a list of"),
    "val_history_text_ap": ({"val_history": [[1, "5.0"]]}, "resume", "'val_history' is not a list of [epoch, AP]"),
    "rng_not_a_list": ({"rng": {"torch": torch.get_rng_state()}}, "resume", "'rng' is not a non-empty list"),
    "rng_float_tensor": ({"rng": [{"torch": torch.zeros(4)}]}, "resume", "'rng'[0]['torch'] is not a uint8"),
    "rng_short_state": ({"rng": [{"torch": torch.zeros(4, dtype=torch.uint8)}]}, "resume", "bytes, not"),
    "rng_numpy_garbage": ({"rng": [{"numpy": {"name": "MT19937"}}]}, "resume", "'rng'[0]['numpy'] is malformed"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_checkpoints_give_one_line_errors(tmp_path: Path, case: str) -> None:
    """Files torch.load reads without complaint but whose content is wrong: the loader that uses the entry
    (load_checkpoint, load_model or a resume's check_training_state) names the file and the problem."""
    from dynamic_detr.checkpoint import check_training_state
    from dynamic_detr.model.loading import load_model

    change, loader, words = MALFORMED[case]
    path = tmp_path / f"{case}.pt"
    if case == "top_level_tuple":
        torch.save((torch.zeros(2), {"epoch": 1}), path)
    elif case == "truncated":
        save_checkpoint(path, _resumable())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        state = {"format": ckpt.FORMAT, "version": ckpt.VERSION, **_resumable()}
        for k, v in change.items():
            if v is None:
                del state[k]
            else:
                state[k] = v
        torch.save(state, path)  # torch.save, not save_checkpoint: nothing checks it on the way in
    with pytest.raises(CheckpointError) as info:
        if loader == "load":
            load_checkpoint(path)
        elif loader == "model":
            load_model(path)
        else:
            check_training_state(load_checkpoint(path), path)
    message = str(info.value)
    assert str(path) in message and words in message, message
    assert "\n" not in message


def test_well_formed_training_state_passes_the_resume_checks(tmp_path: Path) -> None:
    from dynamic_detr.checkpoint import check_training_state

    path = tmp_path / "last.pt"
    save_checkpoint(path, _resumable())
    check_training_state(load_checkpoint(path), path)
    old = {**_resumable(), "rng_torch": torch.get_rng_state()}  # before per-rank RNG states
    del old["rng"]
    check_training_state(old, path)


def test_check_compatible_rejects_non_tensor_values() -> None:
    state = dict(_model().state_dict())
    state["0.weight"] = 3  # right key, not a tensor: the shape check used to skip it
    with pytest.raises(CheckpointError) as info:
        check_compatible(state, _model(), source="runs/a/best.pt")
    assert str(info.value) == ("runs/a/best.pt: malformed checkpoint: 'model' entry '0.weight' is a int, "
                               "not a tensor")
