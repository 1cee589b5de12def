"""`predict` over every kind of source (folders of sub-folders, quoted globs, URLs of a local server, videos), the
exit codes (0 all read, 1 some skipped, 2 nothing read), and progress lines on stderr for `predict` and `eval`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from builders import save_untrained_tiny, shapes_dataset
from dynamic_detr.cli.main import main
from dynamic_detr.data.sources import resolve_sources
from media_helpers import png_bytes, write_video


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained cpu_tiny model (2 classes) saved as a model folder: what is written, not what is found."""
    return save_untrained_tiny(tmp_path_factory.mktemp("model") / "m")


def _predict(model_dir, out, *sources) -> int:
    return main(["predict", "--checkpoint", str(model_dir), "--device", "cpu", "--threshold", "0.0",
                 "--out", str(out), *map(str, sources)])


def test_folders_globs_and_urls_in_one_run(model_dir, tmp_path, local_http, capsys):
    data = tmp_path / "data"
    for rel in ("top.png", "sub/a.png", "sub/deeper/b.jpg", "other/a.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(png_bytes((40, 30), (200, 40, 40)))
    shots = tmp_path / "shots"
    (shots / "day").mkdir(parents=True)
    (shots / "day" / "s.png").write_bytes(png_bytes((32, 32)))
    base = local_http({"/photos/remote.png": (200, "image/png", png_bytes((50, 20)))})
    out = tmp_path / "pred"
    code = _predict(model_dir, out, data, f"{shots}/**/*.png", f"{base}/photos/remote.png", f"{base}/gone.png",
                    tmp_path / "missing.png")
    printed = capsys.readouterr()
    assert code == 1, printed  # two inputs skipped, the rest written
    assert "6 image(s)" in printed.out and "2 input(s) skipped" in printed.out
    assert f"{base}/gone.png: HTTP 404 Not Found" in printed.out
    assert f"{tmp_path / 'missing.png'}: no such file or folder" in printed.out
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert written == ["day/s.json", "other/a.json", "remote.json", "sub/a.json", "sub/deeper/b.json", "top.json"]
    assert (out / "sub" / "deeper" / "b.png").is_file()
    record = json.loads((out / "remote.json").read_text())
    assert record["file"] == f"{base}/photos/remote.png" and (record["width"], record["height"]) == (50, 20)
    assert "predict: 7/7 (100%)" in printed.err  # progress off a terminal: a plain line, no bar


def test_video_gives_an_annotated_video_and_one_json(model_dir, tmp_path, capsys):
    av = pytest.importorskip("av")
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    write_video(clip, frames=4, size=(63, 47))  # odd sides: the written video pads them
    out = tmp_path / "pred"
    assert _predict(model_dir, out, clip) == 0
    assert "0 image(s), 1 video(s) (4 frame(s))" in capsys.readouterr().out
    record = json.loads((out / "clip.json").read_text())
    assert (record["file"], record["width"], record["height"]) == (str(clip), 63, 47)  # the input's pixels
    assert [f["frame"] for f in record["frames"]] == [0, 1, 2, 3]
    assert all(len(f["detections"]) > 0 for f in record["frames"])  # threshold 0: every query's box
    with av.open(str(out / "clip.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)  # padded to even sides


def test_nothing_to_read_is_exit_code_2(model_dir, tmp_path, capsys):
    nested = tmp_path / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / "a" / "notes.txt").write_text("x")
    assert _predict(model_dir, tmp_path / "p1", nested) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: nothing to predict: {nested}: no image files in this folder or its sub-folders"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    assert _predict(model_dir, tmp_path / "p2", bad) == 2  # found, but none could be read
    printed = capsys.readouterr()
    assert "0 image(s)" in printed.out and "bad.png: cannot decode image" in printed.out
    assert "nothing could be read" in printed.err


def test_video_without_the_extra_is_one_line(model_dir, tmp_path, capsys, monkeypatch):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "av", None)
    assert _predict(model_dir, tmp_path / "p", clip) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {clip}: reading video needs PyAV, the optional video extra: "
                   "pip install 'dynamic-detr[video]'")


def test_output_folder_above_the_inputs_is_refused_and_inside_them_is_skipped(model_dir, tmp_path, capsys):
    """Sub-folders are mirrored into the output folder, so one holding inputs at any depth is refused (`predict
    data --out data` would draw over data/sub/a.png); one inside an input folder is not read back as input."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.png").write_bytes(png_bytes((40, 30), (200, 40, 40)))
    before = (data / "sub" / "a.png").read_bytes()
    assert _predict(model_dir, data, data) == 2
    assert capsys.readouterr().err.startswith(f"error: {data}: the output folder holds the input")
    assert (data / "sub" / "a.png").read_bytes() == before
    assert _predict(model_dir, data / "pred", data) == 0
    assert "1 image(s)" in capsys.readouterr().out
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png")) == ["pred/sub/a.png", "sub/a.png"]
    again = resolve_sources([str(data)], out=data / "pred")  # the next run does not read the drawings back
    assert [s.origin for s in again.sources] == [str(data / "sub" / "a.png")]


def test_a_glob_through_dot_dot_never_draws_over_an_input(model_dir, tmp_path, capsys):
    """`predict 'data/*/../../x/*.png' --out pred` wrote pred/sub/../../x/a.png, i.e. replaced x/a.png."""
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.png").write_bytes(png_bytes((40, 30), (200, 40, 40)))
    before = (tmp_path / "x" / "a.png").read_bytes()
    out = tmp_path / "pred"
    assert _predict(model_dir, out, f"{tmp_path}/data/*/../../x/*.png") == 0, capsys.readouterr()
    assert (tmp_path / "x" / "a.png").read_bytes() == before
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == ["pred/a.json"]


def test_the_writer_refuses_a_path_outside_the_output_folder(tmp_path):
    """The last check, on the final path: a name with `..`, an absolute one, or a symlink leading out is a
    UserError before anything is written."""
    from dynamic_detr.data.sources import Item
    from dynamic_detr.errors import UserError
    from dynamic_detr.predict.writer import write_predictions

    def detect(images):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                for _ in images]

    out, outside = tmp_path / "pred", tmp_path / "x"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    image = torch.zeros((3, 8, 8), dtype=torch.uint8)
    for name in ("../x/a", str(outside / "a"), "link/a"):
        with pytest.raises(UserError, match="would be written outside"):
            write_predictions(detect, {}, [Item(name, "in.png", image)], out, 0.5)
        assert list(outside.iterdir()) == []
    write_predictions(detect, {}, [Item("sub/../a", "in.png", image)], out, 0.5)  # stays inside: written
    assert (out / "a.png").is_file() and (out / "a.json").is_file()


def test_eval_reports_progress_off_a_terminal(model_dir, tmp_path, capsys):
    data = shapes_dataset(tmp_path / "data", {"val": 3}, size=64)
    assert main(["eval", "--checkpoint", str(model_dir), "--data", str(data), "--split", "val",
                 "--batch-size", "2", "--workers", "0", "--device", "cpu"]) == 0
    assert "eval: 2/2 (100%) batch" in capsys.readouterr().err


def test_ctrl_c_closes_the_video_and_its_json(tmp_path):
    """A webcam ends with Ctrl-C: the frames so far make a playable video and a valid JSON. Any callable with
    `Predictor.__call__`'s contract can be the model (here a fixed box per image, no network)."""
    from dynamic_detr.data.sources import Item, VideoStream
    from dynamic_detr.predict.writer import write_predictions

    av = pytest.importorskip("av")
    stream = VideoStream(fps=15.0)

    def frames():
        for i in range(5):
            yield Item("webcam0", "0", torch.full((3, 40, 60), 90, dtype=torch.uint8), stream, i, i / 15)
        raise KeyboardInterrupt

    def detect(images):
        return [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 20.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([7])} for _ in images]

    summary = write_predictions(detect, {7: "disc"}, frames(), tmp_path, 0.5, batch_size=2)
    assert summary.interrupted and (summary.videos, summary.frames, summary.detections) == (1, 4, 4)
    record = json.loads((tmp_path / "webcam0.json").read_text())
    assert [f["frame"] for f in record["frames"]] == [0, 1, 2, 3]  # the 5th was waiting for its batch
    assert record["frames"][0]["detections"][0]["category"] == "disc" and record["fps"] == 15.0
    with av.open(str(tmp_path / "webcam0.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4


def test_sigterm_closes_the_video_and_its_json_and_names_appear_only_when_complete(tmp_path):
    """SIGTERM (a supervisor stopping the run) ends it as Ctrl-C does: the video and its JSON are closed where it
    stopped. While they grow they carry hidden `.partial` names, so `webcam0.mp4` / `.json` under their own names
    are always complete files. Before: only Ctrl-C was handled, SIGTERM left an invalid JSON and an unplayable
    video under their final names."""
    import signal

    from dynamic_detr.data.sources import Item, VideoStream
    from dynamic_detr.predict.writer import write_predictions

    av = pytest.importorskip("av")
    stream = VideoStream(fps=15.0)
    seen_while_writing = []

    def frames():
        for i in range(6):
            if i == 5:
                signal.raise_signal(signal.SIGTERM)
            yield Item("webcam0", "0", torch.full((3, 40, 60), 90, dtype=torch.uint8), stream, i, i / 15)

    def detect(images):
        seen_while_writing.append(sorted(p.name for p in tmp_path.iterdir()))
        return [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 20.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([7])} for _ in images]

    summary = write_predictions(detect, {7: "disc"}, frames(), tmp_path, 0.5, batch_size=2)
    assert summary.interrupted and (summary.videos, summary.frames) == (1, 4)
    assert ".webcam0.partial.json" in seen_while_writing[1]  # the video's file appears with its first packet
    assert not {"webcam0.json", "webcam0.mp4"} & {name for names in seen_while_writing for name in names}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webcam0.json", "webcam0.mp4"]
    record = json.loads((tmp_path / "webcam0.json").read_text())
    assert [f["frame"] for f in record["frames"]] == [0, 1, 2, 3]
    with av.open(str(tmp_path / "webcam0.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_an_image_output_is_never_half_written(tmp_path, monkeypatch):
    """A drawing or record that fails half-way (disk full, a kill) leaves nothing under its name: both are
    written to a temp file and renamed."""
    from PIL import Image

    from dynamic_detr.data.sources import Item
    from dynamic_detr.predict.writer import write_predictions

    def detect(images):
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                for _ in images]

    def half_then_fail(self, fp, format=None, **kw):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_predictions(detect, {}, [Item("a", "in.png", torch.zeros((3, 8, 8), dtype=torch.uint8))], tmp_path,
                          0.5)
    assert list(tmp_path.iterdir()) == []

