"""`dynamic-detr config show | diff`: a preset or YAML file resolved in full (YAML that loads back), the fields two
differ in, and one-line errors for a bad name or file."""

from __future__ import annotations

import pytest
import yaml

from dynamic_detr.cli.main import main
from dynamic_detr.config import PRESETS, Config, apply_overrides, diff, get_preset, load_config


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["config", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_show_prints_the_resolved_preset_as_yaml_that_loads_back(name, capsys, tmp_path):
    code, out, err = run(capsys, "show", name)
    assert code == 0 and err == ""
    header, _, body = out.partition("\n")
    chain = " <- ".join([name] + ([PRESETS[name].base] if PRESETS[name].base else []))
    assert header.startswith(f"# preset {name}") and header.endswith(" <- defaults"), header
    assert header.replace(" (no recipe steps of its base)", "").startswith(f"# preset {chain}"), header
    assert yaml.safe_load(body) == get_preset(name).to_dict()
    (tmp_path / "shown.yaml").write_text(out)  # the header is a comment: the output is a config file
    assert load_config(tmp_path / "shown.yaml") == get_preset(name)


def test_show_names_the_whole_chain_and_the_recipe_cut(capsys):
    assert run(capsys, "show", "cpu_demo")[1].splitlines()[0] == "# preset cpu_demo <- cpu_small <- defaults"
    assert run(capsys, "show", "cpu_tiny")[1].splitlines()[0] == (
        "# preset cpu_tiny (no recipe steps of its base) <- cpu_small <- defaults")
    assert run(capsys, "show", "recipe_r50")[1].splitlines()[0] == "# preset recipe_r50 <- paper_r50 <- defaults"


def test_show_applies_overrides_and_reads_files(capsys, tmp_path):
    code, out, _ = run(capsys, "show", "cpu_tiny", "train.lr=3e-4", "model.decoder.num_stages=3")
    assert code == 0 and out.splitlines()[0].endswith(", with train.lr=3e-4 model.decoder.num_stages=3")
    assert yaml.safe_load(out)["train"]["lr"] == 3e-4 and yaml.safe_load(out)["model"]["decoder"]["num_stages"] == 3
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ntrain:\n  epochs: 3\n")
    code, out, _ = run(capsys, "show", str(path))
    assert code == 0 and out.splitlines()[0] == f"# file {path}"
    expected = Config(name="mine")
    expected.train.epochs = 3
    assert yaml.safe_load(out) == expected.to_dict()


def test_diff_prints_one_line_per_differing_field(capsys):
    code, out, err = run(capsys, "diff", "cpu_small", "cpu_demo")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "name: cpu_small -> cpu_demo",
        "model.encoder.enabled: true -> false",
        "model.decoder.num_stages: 6 -> 3",
        "model.decoder.num_queries: 50 -> 30",
        "model.dense.num_convs: 2 -> 1",
        "data.train_short_sides: [192, 224, 256] -> [192, 224, 255]",
        "data.train_max_size: 288 -> 256",
        "data.crop_resize_sides: [192, 224, 256] -> [192, 224, 255]",
    ]


def test_diff_of_the_paper_and_the_recipe_is_the_recipe(capsys):
    _, out, _ = run(capsys, "diff", "paper_r50", "recipe_r50")
    lines = out.splitlines()
    assert "model.decoder.query_selection: none -> boxes" in lines and "loss.iou_aware: false -> true" in lines
    assert "model.backbone.weights: ResNet50_Weights.IMAGENET1K_V1 -> null" in run(
        capsys, "diff", "paper_r50", "cpu_small")[1].splitlines()
    assert len(lines) == 1 + len(PRESETS["recipe_r50"].changes)  # the name, then each change


@pytest.mark.parametrize("a, b", [(a, b) for a in sorted(PRESETS) for b in sorted(PRESETS) if a < b])
def test_diff_lists_exactly_the_fields_that_differ(a, b):
    """Applying diff's right-hand values to A as overrides gives B: nothing is missed, nothing extra."""
    lines = diff(get_preset(a), get_preset(b))
    overrides = [f"{line.split(': ', 1)[0]}={line.split(' -> ', 1)[1]}" for line in lines]
    assert apply_overrides(get_preset(a), overrides) == get_preset(b)
    assert len(lines) == len(set(lines)) and lines


def test_diff_of_a_file_and_a_preset_and_of_equal_configs(capsys, tmp_path):
    path = tmp_path / "run.yaml"
    apply_overrides(get_preset("cpu_tiny"), ["train.epochs=30", "data.num_workers=4"]).dump(path)
    code, out, _ = run(capsys, "diff", "cpu_tiny", str(path))
    assert code == 0 and out.splitlines() == ["data.num_workers: 0 -> 4", "train.epochs: 12 -> 30"]
    code, out, err = run(capsys, "diff", "cpu_demo", "cpu_demo")
    assert code == 0 and out == "" and "resolve to the same config" in err


@pytest.mark.parametrize("argv, message", [
    (["show", "cpu_smal"], "error: unknown preset 'cpu_smal' (did you mean 'cpu_small'?)"),
    (["diff", "cpu_small", "paper"], "error: unknown preset 'paper'"),
    (["show", "missing.yaml"], "error: missing.yaml: cannot read config"),
    (["show", "cpu_tiny", "train.lrr=1"], "error: override 'train.lrr=1': unknown key 'train.lrr'"),
])
def test_bad_input_is_a_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def test_unreadable_file_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\x00\xff")
    code, out, err = run(capsys, "diff", "cpu_tiny", str(tmp_path / "bin.yaml"))
    assert code == 2 and out == "" and "not a YAML config" in err and err.count("\n") == 1
