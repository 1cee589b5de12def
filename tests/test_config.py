"""Typed config: presets, YAML round trip, strict keys, overrides."""

from __future__ import annotations

import pytest

from dynamic_detr.config import PRESETS, Config, apply_overrides, get_preset, load_config
from dynamic_detr.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_yaml_round_trip(name, tmp_path):
    cfg = get_preset(name)
    cfg.dump(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_paper_preset_matches_paper():
    m = get_preset("paper_r50").model
    assert (m.backbone.depth, m.hidden_dim, m.encoder.num_blocks) == (50, 256, 6)
    assert (m.decoder.num_stages, m.decoder.num_queries, m.decoder.num_heads, m.decoder.roi_size) == (6, 300, 4, 7)
    d = get_preset("paper_r50").data
    assert (d.eval_short_side, d.eval_max_size, min(d.train_short_sides), max(d.train_short_sides)) == (
        800, 1333, 480, 800)
    t = get_preset("paper_r50").train
    assert (t.epochs, t.lr, t.lr_backbone, t.weight_decay, t.lr_drop_epochs) == (12, 1e-4, 1e-5, 1e-4, [11])


def test_presets_are_fresh_copies():
    a = get_preset("cpu_small")
    a.train.lr = 1.0
    assert get_preset("cpu_small").train.lr != 1.0


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


def test_unknown_preset():
    with pytest.raises(ConfigError, match="did you mean 'cpu_small'"):
        get_preset("cpu_smal")


def test_default_config_validates():
    Config().validate()
