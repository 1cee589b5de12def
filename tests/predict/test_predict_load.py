"""`predict` over a folder of many mixed images (corrupt, huge, 1x1, grayscale, RGBA, palette, 16-bit):
finishes, reports every bad one, writes one JSON per good one, and its memory stays bounded; malformed image
bytes (hypothesis) are reported as bad while the run goes on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from builders import save_untrained_tiny
from dynamic_detr.cli.main import main
from dynamic_detr.errors import UserError
from dynamic_detr.predict.predictor import Predictor

hypothesis = pytest.importorskip("hypothesis")  # the dev extra: without it this module is skipped
st = pytest.importorskip("hypothesis.strategies")
HealthCheck, given, settings = hypothesis.HealthCheck, hypothesis.given, hypothesis.settings

N_IMAGES = 1000  # a messy folder: 100 corrupt, 4 huge, the rest tiny, gray, RGBA, palette, 16-bit, RGB
HUGE = (4000, 3000)
# memory is bounded when the peak RSS over the whole mix (4 huge images among N_IMAGES) stays within this margin
# of the peak over a folder holding one huge image: a huge image costs ~180 MB decoded (36 MB uint8 + 144 MB
# float), so keeping the 3 other huge ones (or their drawn copies) would exceed it. An absolute bound failed on
# a fresh machine (1532 MB against 1500) as torch's own footprint varies.
MAX_EXTRA_RSS_MB = 400


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_untrained_tiny(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def loaded_model(model_dir):
    """(model, config) loaded from `model_dir` once for this module's in-process tests (was a module-level cache
    that kept the model alive for the rest of the session)."""
    from dynamic_detr.model.loading import load_model

    return load_model(model_dir)


def _write_mix(folder: Path) -> set[str]:
    """N_IMAGES files; returns the names of the ones that must be reported as bad."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    bad = set()
    for i in range(N_IMAGES):
        kind = i % 10
        name = f"{i:04d}"
        if kind == 0:  # corrupt: truncated PNG, garbage with a JPEG name, empty
            path = folder / f"{name}_bad.{['png', 'jpg', 'png'][i // 10 % 3]}"
            src = io.BytesIO()
            Image.new("RGB", (64, 48), (200, 10, 10)).save(src, "PNG")
            path.write_bytes([src.getvalue()[:60], b"\xff\xd8garbage" * 20, b""][i // 10 % 3])
            bad.add(path.name)
        elif kind == 1 and i < 40:  # huge, cheap to encode (flat colour)
            Image.new("RGB", HUGE, (30, 120, 200)).save(folder / f"{name}_huge.png")
        elif kind == 2:
            Image.new("RGB", (1, 1), (5, 5, 5)).save(folder / f"{name}_1x1.png")
        elif kind == 3:
            Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), "L").save(folder / f"{name}_gray.jpg")
        elif kind == 4:
            Image.fromarray(rng.integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA").save(folder / f"{name}_rgba.png")
        elif kind == 5:
            Image.new("P", (33, 21), 3).save(folder / f"{name}_palette.png")
        elif kind == 6:
            Image.fromarray(rng.integers(0, 65535, (30, 20), dtype=np.uint16)).save(folder / f"{name}_16bit.png")
        else:
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    return bad


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 1,000 images to write, then two predict runs (their own limits: 600 s each)
def test_predict_over_many_mixed_images_streams(model_dir, tmp_path):
    images = tmp_path / "images"
    bad = _write_mix(images)
    out = tmp_path / "pred"
    proc, rss_mb = _predict(model_dir, images, out)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]  # 1: some inputs were skipped
    assert "Traceback" not in proc.stderr
    good = N_IMAGES - len(bad)
    assert f"{good} image(s)" in proc.stdout and f"{len(bad)} input(s) skipped" in proc.stdout
    for name in bad:
        assert name in proc.stdout, name
    jsons = sorted(out.glob("*.json"))
    assert len(jsons) == good
    huge = json.loads((out / "0001_huge.json").read_text())
    assert (huge["width"], huge["height"]) == HUGE
    one = tmp_path / "one_huge"
    one.mkdir()
    (images / "0001_huge.png").rename(one / "0001_huge.png")
    base_proc, base_mb = _predict(model_dir, one, tmp_path / "pred_one")
    assert base_proc.returncode == 0, base_proc.stderr[-3000:]
    assert rss_mb < base_mb + MAX_EXTRA_RSS_MB, f"predict peaked at {rss_mb:.0f} MB, {base_mb:.0f} MB on one image"


def _predict(model_dir: Path, images: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`predict` in a subprocess; returns it and its peak RSS in MB."""
    code = ("import resource, sys\nfrom dynamic_detr.cli.main import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, "predict", "--checkpoint", str(model_dir), "--threshold",
                           "0.0", "--batch-size", "4", "--device", "cpu", "--out", str(out), str(images)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    return proc, int(proc.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024


_PNG = io.BytesIO()
Image.new("RGB", (20, 10), (9, 9, 9)).save(_PNG, "PNG")


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=200).map(lambda b: _PNG.getvalue()[:40] + b),
                 st.binary(max_size=200).map(lambda b: b"\xff\xd8\xff\xe0" + b),
                 st.binary(max_size=200).map(lambda b: b"GIF89a" + b)))
def test_malformed_image_bytes_reported_and_run_continues(loaded_model, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzzimg")
    model, cfg = loaded_model
    (folder / "0.png").write_bytes(_PNG.getvalue())
    (folder / "1.png").write_bytes(data)
    (folder / "2.png").write_bytes(_PNG.getvalue())
    files = [folder / f"{i}.png" for i in range(3)]
    out = folder / "out"  # not the input folder: that is refused (drawings would overwrite the inputs)
    out.mkdir()
    n_ok, _, failed = Predictor(model, cfg, torch.device("cpu")).predict_files(files, out, 0.5, batch_size=2)
    assert n_ok + len(failed) == 3 and n_ok >= 2
    assert all("1.png" in m and "\n" not in m for m in failed)


def test_extreme_aspect_ratio_reported_and_run_continues(model_dir, tmp_path, capsys):
    """A 1x1000 image once resized to 0 px and crashed `predict`. It is named, counted, skipped;
    an image at the 100:1 limit (resized to 1 x 192 px here) is still predicted."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_ok.png").write_bytes(_PNG.getvalue())
    Image.new("RGB", (1, 1000), (200, 200, 200)).save(folder / "b_strip.png")
    Image.new("RGB", (200, 2), (200, 200, 200)).save(folder / "c_limit.png")
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_dir), "--device", "cpu", "--out", str(out),
                 str(folder)]) == 1  # 1: an input was skipped
    text = capsys.readouterr().out
    assert "2 image(s)" in text and "1 input(s) skipped" in text
    assert f"{folder / 'b_strip.png'}: a 1x1000 image: aspect ratio 1000:1 exceeds the 100:1 limit; skipped" in text
    assert sorted(p.name for p in out.glob("*.json")) == ["a_ok.json", "c_limit.json"]
    limit = json.loads((out / "c_limit.json").read_text())
    assert (limit["width"], limit["height"]) == (200, 2)


def test_output_folder_holding_inputs_is_refused(model_dir, loaded_model, tmp_path, capsys):
    """`--out` = the input folder once overwrote a.png with its drawn copy. Refused, inputs untouched;
    the same folder reached through a symlink too; a sub-folder is fine."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(_PNG.getvalue())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model, cfg = loaded_model
    files = sorted(folder.iterdir())
    with pytest.raises(UserError, match="holds the input"):
        Predictor(model, cfg, torch.device("cpu")).predict_files(files, folder, 0.5)
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    for out, inputs in ((folder, [folder]), (link, [folder / "a.png"]), (folder, [link / "b.png"])):
        assert main(["predict", "--checkpoint", str(model_dir), "--device", "cpu", "--out", str(out),
                     *map(str, inputs)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {out}: the output folder holds the input") and "--out" in err, err
        assert "\n" not in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert main(["predict", "--checkpoint", str(model_dir), "--device", "cpu", "--out", str(folder / "pred"),
                 str(folder)]) == 0
    assert sorted(p.name for p in (folder / "pred").iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
