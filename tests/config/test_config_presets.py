"""The presets: declared as data (a base and the fields that differ), each resolving to a valid config; the
paper's preset is the paper; the recipe's steps."""

from __future__ import annotations

import pytest

from dynamic_detr.config import PRESETS, RECIPE, Config, get_preset, load_config, preset_chain, recipe_rung
from dynamic_detr.config.presets import Preset
from dynamic_detr.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_resolves_to_a_valid_config_and_yaml_round_trips(name, tmp_path):
    cfg = get_preset(name)
    assert isinstance(cfg, Config) and cfg.name == name
    cfg.validate()
    cfg.dump(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_its_base_plus_its_changes(name):
    """Each preset's `changes` are real differences from its base (no key repeats the base's value), and
    every field it does not list is its base's (after the recipe cut, if it has one)."""
    preset = PRESETS[name]
    cfg = get_preset(name)
    base = get_preset(preset.base) if preset.base else Config()
    if preset.recipe_steps is not None:
        base = recipe_rung(base, preset.recipe_steps)
    for key, value in preset.changes.items():
        *parents, last = key.split(".")
        old, new = base, cfg
        for part in parents:
            old, new = getattr(old, part), getattr(new, part)
        assert getattr(new, last) == value, key
        assert getattr(old, last) != value, f"{name}: {key} repeats its base's value"
        setattr(new, last, getattr(old, last))
    cfg.name = base.name
    assert cfg == base


def test_paper_preset_is_the_defaults_with_imagenet_weights():
    """paper_r50 = `Config()` + the backbone's ImageNet weights: the schema's defaults are the paper."""
    expected = Config(name="paper_r50")
    expected.model.backbone.weights = "ResNet50_Weights.IMAGENET1K_V1"
    assert get_preset("paper_r50") == expected
    assert PRESETS["paper_r50"].base is None


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
    assert DEMO_PRESET == "cpu_demo" and PRESETS["cpu_demo"].base == "cpu_small"
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


def test_cpu_small_turns_on_the_measured_part_of_the_recipe():
    m, cfg = get_preset("cpu_small").model, get_preset("cpu_small")
    assert m.encoder.enabled and m.encoder.residual and m.dense.enabled and m.decoder.query_selection == "boxes"
    assert m.decoder.query_nms == 0.7 and cfg.loss.iou_aware
    assert m.decoder.num_hybrid_queries == 0 and m.decoder.dn_queries == 0  # they cost AP at its budget
    assert (m.backbone.depth, m.backbone.weights, m.hidden_dim) == (18, None, 128)
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.lr_backbone, cfg.train.amp) == (4, 4e-4, 4e-4, "bf16")


def test_tiny_preset_is_the_papers_model_at_cpu_smalls_size():
    tiny = get_preset("cpu_tiny")
    assert preset_chain("cpu_tiny") == ["cpu_tiny", "cpu_small"] and PRESETS["cpu_tiny"].recipe_steps == 0
    assert recipe_rung(tiny, 0) == tiny  # no recipe switch on
    m = tiny.model
    assert (m.hidden_dim, m.encoder.num_blocks, m.decoder.num_stages, m.decoder.num_queries) == (64, 1, 2, 10)
    assert (tiny.train.amp, tiny.data.num_workers, tiny.model.backbone.depth) == ("none", 0, 18)


def test_presets_are_fresh_copies():
    a = get_preset("cpu_small")
    a.train.lr = 1.0
    a.data.train_short_sides.append(1000)
    b = get_preset("cpu_small")
    assert b.train.lr != 1.0 and 1000 not in b.data.train_short_sides
    assert 1000 not in get_preset("cpu_demo").data.train_short_sides


def test_unknown_preset():
    with pytest.raises(ConfigError, match="did you mean 'cpu_small'"):
        get_preset("cpu_smal")


def test_a_preset_with_a_bad_key_or_a_loop_of_bases_is_an_error(monkeypatch):
    monkeypatch.setitem(PRESETS, "broken", Preset(about="", base="cpu_tiny", changes={"train.lrr": 1e-3}))
    with pytest.raises(ConfigError, match=r"preset 'broken': unknown key 'train\.lrr' \(did you mean 'train\.lr'"):
        get_preset("broken")
    monkeypatch.setitem(PRESETS, "loop_a", Preset(about="", base="loop_b"))
    monkeypatch.setitem(PRESETS, "loop_b", Preset(about="", base="loop_a"))
    with pytest.raises(ConfigError, match="loop_a -> loop_b -> loop_a"):
        get_preset("loop_a")


def test_paper_preset_has_no_beyond_paper_switch():
    """paper_r50 is the paper: every field of the convergence recipe at its default (off)."""
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


def test_recipe_preset_has_deim_and_stable_dinos_settings_the_cpu_presets_leave_them_off():
    """recipe_r50: DEIM's MAL (gamma 1.5) as the class loss, Stable-DINO's matching cost (exponent 0.5); its
    position-supervised loss is MAL's alternative (one class loss at a time). cpu_small / cpu_demo: not
    measured yet, off."""
    loss = get_preset("recipe_r50").loss
    assert loss.mal and loss.mal_gamma == 1.5 and loss.iou_aware and not loss.position_supervised
    assert loss.cost_position_modulated and loss.cost_position_exponent == 0.5
    assert [name for name, _ in RECIPE][-5:] == ["mal", "stable_matching", "dense_o2o", "flat_cosine", "iou_aware"]
    for name in ("cpu_small", "cpu_demo"):
        loss = get_preset(name).loss
        assert not (loss.mal or loss.position_supervised or loss.cost_position_modulated), name
def test_recipe_preset_has_deims_dense_o2o_and_schedule_and_the_cpu_presets_do_not():
    """recipe_r50: DEIM's base config (58 epochs: mosaics at 0.5 from epoch 4 to 29, no strong augmentation from
    50, lr flat until 29 and down to 0.5x at 50) as fractions of the run; cpu_small / cpu_demo: off (not yet
    measured there)."""
    cfg = get_preset("recipe_r50")
    d, t = cfg.data, cfg.train
    assert d.mosaic_prob == 0.5 and (d.mosaic_size, d.mosaic_degrees, d.mosaic_translate) == (320, 10.0, 0.1)
    assert [round(f * 58, 6) for f in (d.aug_start, d.mosaic_stop, d.aug_stop)] == [4, 29, 50]
    assert d.mosaic_scale == [0.5, 1.5]
    assert (t.lr_schedule, t.lr_flat_until * 58, t.lr_min_factor) == ("flat_cosine", 29, 0.5)
    for name in ("paper_r50", "cpu_small", "cpu_demo", "cpu_tiny"):
        c = get_preset(name)
        assert (c.data.mosaic_prob, c.data.aug_start, c.data.aug_stop, c.train.lr_schedule) == (0, 0, 1, "step")


def test_recipe_rung_keeps_earlier_steps_only():
    cfg = get_preset("recipe_r50")
    two = recipe_rung(cfg, 2)  # fixes + dense head
    assert two.model.encoder.residual and two.model.dense.enabled
    assert two.model.decoder.query_selection == "none" and two.model.decoder.dn_queries == 0
    assert two.model.decoder.num_hybrid_queries == 0 and not two.loss.iou_aware
    assert two.model.backbone == cfg.model.backbone and cfg.data.mosaic_prob > 0
    assert two.data == get_preset("paper_r50").data  # the paper's sizes kept, Dense O2O (a later step) off
