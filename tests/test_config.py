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
    # the dynamic encoder on every level, no residual gate (DyHead's block as the paper uses it)
    assert m.encoder.enabled and m.encoder.levels == 0 and not m.encoder.residual
    assert (m.decoder.num_stages, m.decoder.num_queries, m.decoder.num_heads, m.decoder.roi_size) == (6, 300, 4, 7)
    d = get_preset("paper_r50").data
    assert (d.eval_short_side, d.eval_max_size, min(d.train_short_sides), max(d.train_short_sides)) == (
        800, 1333, 480, 800)
    t = get_preset("paper_r50").train
    assert (t.epochs, t.lr, t.lr_backbone, t.weight_decay, t.lr_drop_epochs) == (12, 1e-4, 1e-5, 1e-4, [11])


def test_demo_preset_is_cpu_small_with_the_measured_cuts():
    """cpu_demo (what `make demo` trains) is cpu_small minus the encoder, with a lighter dense head and decoder,
    and training scales that never enlarge the demo's images (so a batch pads to their size, not above)."""
    from dynamic_detr.cli.demo import DEMO_IMAGE_SIZE, DEMO_PRESET

    demo, small = get_preset(DEMO_PRESET), get_preset("cpu_small")
    assert DEMO_PRESET == "cpu_demo"
    m = demo.model
    assert (m.encoder.enabled, m.dense.num_convs, m.decoder.num_stages, m.decoder.num_queries) == (False, 1, 3, 30)
    assert m.decoder.query_nms == 0.7 and m.decoder.query_selection == "boxes"  # distinct queries, as cpu_small
    d = demo.data
    assert max(d.train_short_sides) < DEMO_IMAGE_SIZE and d.train_max_size == DEMO_IMAGE_SIZE
    assert max(d.crop_resize_sides) < DEMO_IMAGE_SIZE
    # everything else is cpu_small's
    for cfg in (demo, small):
        cfg.name = ""
        cfg.model.encoder.enabled = False
        cfg.model.dense.num_convs = cfg.model.decoder.num_stages = cfg.model.decoder.num_queries = 0
        cfg.data.train_short_sides = cfg.data.crop_resize_sides = []
        cfg.data.train_max_size = 0
    assert demo == small


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
    with pytest.raises(ConfigError, match=r"query_nms needs model\.decoder\.query_selection"):
        apply_overrides(cfg, ["model.decoder.query_nms=0.7"])  # cpu_tiny has no query selection
    with pytest.raises(ConfigError, match=r"query_nms must be in \[0, 1\]"):
        apply_overrides(get_preset("cpu_small"), ["model.decoder.query_nms=1.5"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="did you mean 'cpu_small'"):
        get_preset("cpu_smal")


def test_default_config_validates():
    Config().validate()


def test_paper_preset_has_no_beyond_paper_switch():
    """paper_r50 is the paper: every field of the convergence recipe at its default (off)."""
    from dynamic_detr.config import RECIPE, recipe_rung

    paper = get_preset("paper_r50")
    assert recipe_rung(paper, 0) == paper
    m = paper.model
    assert not m.dense.enabled and m.decoder.query_selection == "none" and not m.encoder.residual
    assert m.decoder.num_hybrid_queries == 0 and m.decoder.dn_queries == 0 and not paper.loss.iou_aware
    assert paper.train.lr_offset_mult == 1.0 and m.decoder.roi_canonical_size == 224
    # the recipe preset differs from the paper's in recipe fields only, and in every step of the recipe
    recipe = get_preset("recipe_r50")
    assert recipe_rung(recipe, 0).to_dict() | {"name": "paper_r50"} == paper.to_dict()
    for steps in range(len(RECIPE)):
        assert recipe_rung(recipe, steps) != recipe_rung(recipe, steps + 1), RECIPE[steps][0]


def test_recipe_rung_keeps_earlier_steps_only():
    from dynamic_detr.config import recipe_rung

    cfg = get_preset("recipe_r50")
    two = recipe_rung(cfg, 2)  # fixes + dense head
    assert two.model.encoder.residual and two.model.dense.enabled
    assert two.model.decoder.query_selection == "none" and two.model.decoder.dn_queries == 0
    assert two.model.decoder.num_hybrid_queries == 0 and not two.loss.iou_aware
    assert two.model.backbone == cfg.model.backbone and two.data == cfg.data


@pytest.mark.parametrize("override, field", [("train.eval_every=0", "eval_every"),
                                             ("train.max_nonfinite_steps=0", "max_nonfinite_steps"),
                                             ("train.epochs=0", "epochs")])
def test_budget_fields_validated_up_front(override, field):
    with pytest.raises(ConfigError, match=rf"train\.{field} must be >= 1"):
        apply_overrides(get_preset("cpu_tiny"), [override])


def test_predict_batch_size_must_be_positive(capsys, tmp_path):
    from dynamic_detr.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
              "--batch-size", "0"])
    assert e.value.code == 2
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err


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
    from pathlib import Path

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
