"""The tiling benchmark runs (--quick): large canvases and training crops rendered, a model trained by the trainer
for seconds, and the four ways of inference (plain, tiled, with the whole image, weighted) scored on the canvases,
with the results JSON and table written. (What the full run measured is in docs/tiling.md: an AP figure is a
benchmark's result, not something a unit test can check.)"""

from __future__ import annotations

import json

import pytest
from bench_helpers import run_bench


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiling_quick(tmp_path):
    out, work = tmp_path / "res", tmp_path / "work"
    run_bench("tiling.py", "--quick", "--out", str(out), "--work", str(work), timeout=500)
    report = json.loads((out / "tiling.json").read_text())
    assert list(report["results"]) == ["plain", "tiled", "tiled_full", "tiled_weighted"]
    for r in report["results"].values():
        assert r["AP"] is not None and r["sec_per_image"] > 0 and r["detections"] > 0
    s = report["setup"]
    assert s["train_status"] == "time budget"  # 3 s of training end the run, as --minutes ends the full one
    assert s["val_canvases"] == 2 and s["val_objects"] > 0 and s["train_crops"] == 8 and s["epochs_done"] >= 1
    crops = next(work.glob("tiling_quick/crops_*"))
    train = json.loads((crops / "annotations" / "instances_train.json").read_text())
    assert all(a["bbox"][0] >= 0 and a["bbox"][0] + a["bbox"][2] <= 128 for a in train["annotations"])
    assert all(im["width"] == im["height"] == 128 for im in train["images"])
    canvases = json.loads(next(work.glob("tiling_quick/canvases_*/annotations/instances_val.json")).read_text())
    assert all(384 <= max(im["width"], im["height"]) <= 512 for im in canvases["images"])
    # visible extents of 8-40 px shapes (a shape may be up to 30% hidden by a later one)
    assert all(min(a["bbox"][2:]) >= 5 and max(a["bbox"][2:]) <= 48 for a in canvases["annotations"])
    assert "| tiled_full |" in (out / "tiling.md").read_text()
