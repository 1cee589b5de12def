"""Run folders never mix: a second `train` into a run folder goes to NAME2 and leaves NAME as it was,
`--exist-ok` starts NAME over with only the new run's files, `--resume` continues in NAME."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from builders import shapes_dataset
from dynamic_detr.checkpoint import load_checkpoint
from dynamic_detr.cli.main import main
from dynamic_detr.train.rundir import RUN_FILES, clear_run, fresh_run_dir

TINY = ["data.num_workers=0", "data.train_short_sides=[96]", "data.train_max_size=128",
        "data.eval_short_side=96", "data.eval_max_size=128", "data.crop_prob=0.0"]


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """4 train images: one step of cpu_tiny's batch of 4 per epoch."""
    return shapes_dataset(tmp_path_factory.mktemp("easy"), {"train": 4, "val": 2})


def _train(data: Path, out: Path, *flags: str, epochs: int = 1) -> int:
    return main(["train", "--data", str(data), "--preset", "cpu_tiny", "--out", str(out), "--epochs", str(epochs),
                 *TINY, *flags])


def _rows(run: Path) -> list[tuple[str, str]]:
    with (run / "results.csv").open(newline="") as f:
        return [(r["epoch"], r["step"]) for r in csv.DictReader(f)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- helpers
def test_fresh_run_dir_picks_the_first_free_name(tmp_path):
    out = tmp_path / "exp"
    assert fresh_run_dir(out) == out  # missing
    out.mkdir()
    assert fresh_run_dir(out) == out  # empty
    (out / "results.csv").write_text("epoch\n1\n")
    assert fresh_run_dir(out) == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert fresh_run_dir(out) == tmp_path / "exp2"  # an empty folder is free
    (tmp_path / "exp2" / "notes.txt").write_text("")
    (tmp_path / "exp3").write_text("a file, not a folder")
    assert fresh_run_dir(out) == tmp_path / "exp4"


def test_clear_run_removes_the_run_files_only(tmp_path):
    run = tmp_path / "run"
    for name in ("tensorboard", "plots", "weights"):
        (run / name).mkdir(parents=True)
        (run / name / "f").write_text("old")
    for name in ("config.yaml", "results.csv", "metrics.json", "last.pt", "best.pt", ".last.pt.x1.tmp", "notes.txt"):
        (run / name).write_text("old")
    removed = clear_run(run)
    assert sorted(removed) == sorted(n + "/" if n in ("tensorboard", "plots", "weights") else n for n in RUN_FILES)
    assert [p.name for p in run.iterdir()] == ["notes.txt"]
    assert clear_run(tmp_path / "missing") == []


# --------------------------------------------------------------------------- the train command
def test_second_run_goes_to_a_new_folder_and_leaves_the_first_alone(easy, tmp_path, capsys):
    run = tmp_path / "mine"
    assert _train(easy, run) == 0
    before = _snapshot(run)
    assert {"results.csv", "best.pt", "last.pt", "metrics.json"} <= set(before)
    capsys.readouterr()

    assert _train(easy, run) == 0
    printed = capsys.readouterr().out
    second = tmp_path / "mine2"
    assert f"this run goes to {second}" in printed and f"run folder: {second}" in printed
    assert _snapshot(run) == before  # not a file added, removed or changed
    assert _rows(second) == [("1", "1")]
    assert (second / "best.pt").is_file() and (second / "metrics.json").is_file()


def test_exist_ok_starts_the_folder_over(easy, tmp_path, capsys):
    run = tmp_path / "mine"
    assert _train(easy, run, epochs=2) == 0
    assert _rows(run) == [("1", "1"), ("2", "2")]
    (run / "notes.txt").write_text("not a run file")
    capsys.readouterr()

    assert _train(easy, run, "--exist-ok") == 0
    printed = capsys.readouterr().out
    assert "removed the earlier run's" in printed and "results.csv" in printed
    assert not (tmp_path / "mine2").exists()
    assert _rows(run) == [("1", "1")]  # only the new run's row
    assert len(list((run / "tensorboard").glob("events.*"))) == 1  # only the new run's events
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(run / name)
        assert (state["epoch"], state["step"]) == (1, 1), name
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 1
    assert (run / "notes.txt").read_text() == "not a run file"


def test_resume_continues_in_the_same_folder(easy, tmp_path, capsys):
    run = tmp_path / "mine"
    assert _train(easy, run) == 0
    capsys.readouterr()
    assert _train(easy, run, "--resume", epochs=2) == 0
    assert f"resuming {run}" in capsys.readouterr().out
    assert not (tmp_path / "mine2").exists()
    assert _rows(run) == [("1", "1"), ("2", "2")]


def test_exist_ok_with_resume_is_a_one_line_error(easy, tmp_path, capsys):
    assert _train(easy, tmp_path / "r", "--exist-ok", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--exist-ok" in err and "--resume" in err and "\n" not in err
    assert not (tmp_path / "r").exists()
