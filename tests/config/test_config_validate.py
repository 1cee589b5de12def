"""One place validates a config (config/validate.py): every check about the config's values alone runs when a
config is loaded, built from a preset or overridden, and names the field. The data transforms and the detector
used to hold some of these checks; their cases are here now."""

from __future__ import annotations

import pytest

from dynamic_detr.config import PRESETS, Config, DataConfig, apply_overrides, check_data, get_preset, load_config
from dynamic_detr.config.validate import config_problems
from dynamic_detr.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_no_problem(name):
    assert config_problems(get_preset(name)) == []


@pytest.mark.parametrize("overrides, match", [
    # the data transforms' checks (were in data/transforms.py)
    (["data.eval_short_side=200", "data.eval_max_size=200"], r"data\.eval_max_size \(200\) must exceed"),
    (["data.train_max_size=80"], r"data\.train_max_size \(80\) must exceed every data\.train_short_sides"),
    (["data.crop_size=[40,20]"], r"data\.crop_size must be \[min, max\] with 1 <= min <= max"),
    (["data.crop_size=[40]"], r"data\.crop_size must be \[min, max\]"),
    (["data.crop_prob=1.5"], r"data\.crop_prob must be a probability"),
    (["data.hflip_prob=-0.1"], r"data\.hflip_prob must be a probability"),
    (["data.train_short_sides=[0,128]"], r"data\.train_short_sides must be positive sizes"),
    (["data.train_short_sides=[]"], r"data\.train_short_sides must not be empty"),
    (["data.eval_short_side=0"], r"data\.eval_short_side must be a positive size"),
    (["data.crop_resize_sides=[]"], r"data\.crop_resize_sides must be positive sizes"),
    # Dense O2O's mosaic, the augmentation policy and the flat-cosine lr (fractions of the run)
    (["data.mosaic_prob=1.2"], r"data\.mosaic_prob must be a probability in \[0, 1\], got 1\.2"),
    (["data.mosaic_size=0"], r"data\.mosaic_size must be a positive size, got 0"),
    (["data.mosaic_degrees=-5"], r"data\.mosaic_degrees must be in \[0, 180\]"),
    (["data.mosaic_translate=1.5"], r"data\.mosaic_translate must be a fraction in \[0, 1\]"),
    (["data.mosaic_scale=[1.5,0.5]"], r"data\.mosaic_scale must be \[min, max\] with 0 < min <= max"),
    (["data.mosaic_scale=[0,1]"], r"data\.mosaic_scale must be \[min, max\]"),
    (["data.aug_start=-0.1"], r"data\.aug_start must be a fraction of the run in \[0, 1\], got -0\.1"),
    (["data.aug_stop=1.5"], r"data\.aug_stop must be a fraction of the run in \[0, 1\], got 1\.5"),
    (["data.aug_start=0.5", "data.aug_stop=0.4"], r"data\.aug_start \(0\.5\) must be <= data\.aug_stop \(0\.4\)"),
    (["data.aug_start=0.5", "data.mosaic_stop=0.3"],
     r"data\.aug_start \(0\.5\) must be <= data\.mosaic_stop \(0\.3\)"),
    (["data.mosaic_prob=0.5", "data.aug_start=0.5", "data.aug_stop=0.5"], r"the mosaic window is empty"),
    (["train.lr_schedule=cosine"], r"train\.lr_schedule must be step\|flat_cosine, got 'cosine'"),
    (["train.lr_flat_until=1.1"], r"train\.lr_flat_until must be a fraction of the run in \[0, 1\]"),
    (["train.lr_min_factor=2"], r"train\.lr_min_factor must be in \[0, 1\]"),
    (["train.lr_schedule=flat_cosine", "data.aug_stop=0.4"],
     r"train\.lr_flat_until \(0\.5\) must be <= data\.aug_stop \(0\.4\): flat_cosine lowers the lr"),
    # the detector's (was in model/detector.py)
    (["model.num_classes=3", "model.category_ids=[1,2]"], r"model\.category_ids has 2 ids but model\.num_classes is 3"),
    # the layout's, for a config (data/layout.py still checks its own arguments)
    (["data.format=yolo", "data.val_ann=x.json"], r"data\.format is 'yolo'"),
    (["data.format=xml"], r"data\.format must be auto\|coco\|yolo\|voc"),
    # the config's own
    (["model.hidden_dim=65"], r"model\.hidden_dim must be divisible by num_heads"),
    (["model.decoder.query_selection=boxes"], r"query_selection needs model\.dense\.enabled=true"),
    (["loss.hybrid_k=0"], r"loss\.hybrid_k must be >= 1"),
    (["model.class_loss=softmax", "loss.iou_aware=true"], r"loss\.iou_aware needs model\.class_loss=focal"),
    (["model.class_loss=softmax", "loss.mal=true"], r"loss\.mal needs model\.class_loss=focal"),
    (["model.class_loss=softmax", "loss.position_supervised=true"],
     r"loss\.position_supervised needs model\.class_loss=focal"),
    (["loss.mal=true", "loss.position_supervised=true"],
     r"loss\.mal and loss\.position_supervised are two class losses for the same term .*: turn one off"),
    (["loss.mal_gamma=0"], r"loss\.mal_gamma must be a finite number > 0, got 0"),
    (["loss.cost_position_exponent=-0.5"], r"loss\.cost_position_exponent must be a finite number > 0, got -0\.5"),
    (["loss.position_supervised_weight=-1"], r"loss\.position_supervised_weight must be a finite number >= 0"),
    (["train.amp=fp32"], r"train\.amp must be none\|bf16\|fp16"),
    (["train.eval_every=0"], r"train\.eval_every must be >= 1"),
    (["train.max_nonfinite_steps=0"], r"train\.max_nonfinite_steps must be >= 1"),
    (["train.patience=-1"], r"train\.patience must be >= 0 \(epochs without an AP gain; 0 = off\), got -1"),
    (["train.eval_every=5", "train.patience=2"], r"train\.patience \(2\) must be >= train\.eval_every \(5\)"),
    (["train.min_delta=-0.5"], r"train\.min_delta must be a finite number >= 0 \(AP points\), got -0\.5"),
    (["train.min_delta=.inf"], r"train\.min_delta must be a finite number >= 0"),
    (["train.epochs=0"], r"train\.epochs must be >= 1"),
    (["train.batch_size=0"], r"train\.batch_size must be >= 1"),
])
def test_bad_values_are_one_config_error_naming_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        apply_overrides(get_preset("cpu_tiny"), overrides)
    assert str(info.value).startswith("overrides: ") and "\n" not in str(info.value)


def test_early_stopping_values_that_are_accepted():
    """patience 0 (off) whatever eval_every; a patience of eval_every or more; any finite min_delta >= 0."""
    for overrides in (["train.eval_every=5"], ["train.eval_every=5", "train.patience=5"],
                      ["train.patience=1", "train.min_delta=0.5"], ["train.patience=30", "train.min_delta=0"]):
        assert config_problems(apply_overrides(get_preset("cpu_tiny"), overrides)) == []


def test_the_iou_aware_class_losses_that_are_accepted():
    """MAL or the position-supervised loss beside iou_aware (each replaces its varifocal loss), the modulated
    matching cost with any class loss, softmax included."""
    for overrides in (["loss.mal=true", "loss.iou_aware=true"],
                      ["loss.position_supervised=true", "loss.iou_aware=true"],
                      ["loss.cost_position_modulated=true", "loss.mal=true"],
                      ["loss.cost_position_modulated=true", "model.class_loss=softmax"]):
        assert config_problems(apply_overrides(get_preset("cpu_tiny"), overrides)) == []
def test_augment_policy_and_schedule_values_that_are_accepted():
    """A tail without mosaics (mosaic_stop after aug_stop: the tail ends the window); the step schedule with any
    lr_flat_until; flat_cosine with its floor where the cosine ends (no cosine: a step to the floor)."""
    for overrides in (["data.aug_stop=0.9"], ["data.mosaic_prob=0.5", "data.aug_start=0.1", "data.aug_stop=0.9"],
                      ["data.aug_stop=0.4"], ["train.lr_schedule=flat_cosine", "data.aug_stop=0.5"],
                      ["data.mosaic_prob=0.5", "data.aug_start=0.5", "data.mosaic_stop=0.5", "data.aug_stop=0.8",
                       "data.mosaic_prob=0"]):
        apply_overrides(get_preset("cpu_tiny"), overrides)


def test_checks_run_on_load_too(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  crop_prob: 2.0\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.crop_prob must be a probability in \[0, 1\], got 2\.0"):
        load_config(tmp_path / "c.yaml")


def test_a_data_section_built_in_python_is_checked_by_the_same_code():
    """`check_data` (what `build_transforms` calls) and `Config.validate` give the same message."""
    bad = DataConfig(train_max_size=80)
    with pytest.raises(ConfigError) as direct:
        check_data(bad)
    with pytest.raises(ConfigError) as whole:
        Config(data=bad).validate("here")
    assert str(whole.value) == f"here: {direct.value}"
    check_data(DataConfig())


def test_predict_batch_size_must_be_positive(capsys, tmp_path):
    from dynamic_detr.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o"),
              "--batch-size", "0"])
    assert e.value.code == 2
    assert "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
