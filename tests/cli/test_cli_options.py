"""Bad command-line options are one `error: ...` line on stderr and exit code 2, before anything loads: they used
to end in a traceback (DataLoader's ValueError, torch.device's RuntimeError, mkdir's FileExistsError, a
UnicodeDecodeError reading a binary --config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynamic_detr.cli.main import main


def _one_line_error(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    return err


def _eval(tmp_path: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path), *extra]


@pytest.mark.parametrize("option, value, message", [("--batch-size", "0", "--batch-size must be at least 1, got 0"),
                                                    ("--workers", "-1", "--workers must be at least 0, got -1")])
def test_eval_counts(tmp_path, capsys, option, value, message):
    assert message in _one_line_error(_eval(tmp_path, option, value), capsys)


def test_data_check_workers(tmp_path, capsys):
    assert "--workers must be at least 1, got 0" in _one_line_error(
        ["data", "check", "--data", str(tmp_path), "--workers", "0"], capsys)


@pytest.mark.parametrize("command", ["eval", "predict", "train", "demo", "explain"])
@pytest.mark.parametrize("device", ["foo", "cuda:x", "cuda:99"])
def test_device(tmp_path, capsys, command, device):
    argv = {"eval": _eval(tmp_path),
            "predict": ["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")],
            "train": ["train", "--data", str(tmp_path), "--preset", "cpu_tiny", "--out", str(tmp_path / "o")],
            "demo": ["demo", "--out", str(tmp_path / "o")],
            "explain": ["explain", "--checkpoint", str(tmp_path), str(tmp_path / "a.png"), "--out",
                        str(tmp_path / "o")]}[command]
    assert f"--device {device}: " in _one_line_error([*argv, "--device", device], capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["predict", "data synth", "data show", "data convert", "train", "demo",
                                     "eval --plots"])
@pytest.mark.parametrize("below", [False, True])
def test_out_naming_a_file(tmp_path, capsys, command, below):
    """`--out` where a folder is expected names an existing file (or a path under one)."""
    (tmp_path / "data").mkdir()
    file = tmp_path / "taken.txt"
    file.write_text("mine")
    out = file / "sub" if below else file
    data = str(tmp_path / "data")
    argv = {"predict": ["predict", data, "--checkpoint", data, "--out", str(out)],
            "data synth": ["data", "synth", "--out", str(out)],
            "data show": ["data", "show", "--data", data, "--out", str(out)],
            "data convert": ["data", "convert", "--data", data, "--out", str(out)],
            "train": ["train", "--data", data, "--preset", "cpu_tiny", "--out", str(out)],
            "demo": ["demo", "--out", str(out)],
            "eval --plots": _eval(tmp_path, "--plots", str(out))}[command]
    err = _one_line_error(argv, capsys)
    assert str(out) in err
    assert f"{file} is a file, not a folder" in err if below else f"{out}: is a file, not a folder" in err
    assert file.read_text() == "mine"


@pytest.mark.parametrize("content", [b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00", b"model:\n  hidden_dim: \xe9\n"])
def test_info_config_binary_file(tmp_path, capsys, content):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    err = _one_line_error(["info", "--config", str(path)], capsys)
    assert err.startswith(f"error: {path}: not a YAML config"), err
