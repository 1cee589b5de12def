"""Configs in and out: strict YAML (safe, no duplicate or unknown keys, typed), `key=value` overrides, atomic
dumps."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamic_detr.config import apply_overrides, get_preset, load_config
from dynamic_detr.errors import ConfigError


def test_unknown_key_suggests(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' \(did you mean 'lr'\?\)"):
        load_config(tmp_path / "c.yaml")


def test_wrong_type_is_an_error(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: twelve\n")
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(tmp_path / "c.yaml")


def test_yaml_is_parsed_safely(tmp_path):
    (tmp_path / "c.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")


def test_unreadable_and_binary_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "b.yaml").write_bytes(b"name: a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"not UTF-8 text: byte 8 is b'\\xff'"):
        load_config(tmp_path / "b.yaml")


def test_overrides_typed_and_validated():
    cfg = apply_overrides(get_preset("cpu_tiny"), ["train.lr=3e-4", "model.decoder.num_stages=2",
                                                     "data.crop_size=[64,96]", "model.class_loss=softmax"])
    assert cfg.train.lr == 3e-4 and cfg.model.decoder.num_stages == 2 and cfg.data.crop_size == [64, 96]
    with pytest.raises(ConfigError, match=r"did you mean 'model\.decoder\.num_stages'"):
        apply_overrides(cfg, ["model.decoder.num_stage=2"])
    with pytest.raises(ConfigError, match="class_loss"):
        apply_overrides(cfg, ["model.class_loss=hinge"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])
    with pytest.raises(ConfigError, match=r"query_nms needs model\.decoder\.query_selection"):
        apply_overrides(cfg, ["model.decoder.query_nms=0.7"])  # cpu_tiny has no query selection
    with pytest.raises(ConfigError, match=r"query_nms must be in \[0, 1\]"):
        apply_overrides(get_preset("cpu_small"), ["model.decoder.query_nms=1.5"])


@pytest.mark.parametrize("text, key, line", [
    ("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", "lr", 4),  # in a section
    ("train:\n  lr: 0.1\nname: a\ntrain:\n  epochs: 3\n", "train", 4),  # a whole section twice
])
def test_duplicate_keys_are_an_error(tmp_path, text, key, line):
    """PyYAML keeps the last of two equal keys without a word: a config saying lr twice is refused."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: duplicate key '{key}' at line {line}"), message
    assert "\n" not in message


def test_same_key_in_different_sections_is_fine(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  decoder:\n    num_heads: 4\n  encoder:\n    num_blocks: 1\n"
                                     "train:\n  lr: 0.001\ndata:\n  num_workers: 0\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.decoder.num_heads == 4 and cfg.train.lr == 0.001 and cfg.data.num_workers == 0


def test_dump_is_atomic(tmp_path, monkeypatch):
    """A write that fails halfway leaves the previous config.yaml whole, and no temp file."""
    path = tmp_path / "config.yaml"
    get_preset("cpu_tiny").dump(path)
    before = path.read_text()
    real_write_text = Path.write_text

    def half_then_fail(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        get_preset("cpu_small").dump(path)
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
