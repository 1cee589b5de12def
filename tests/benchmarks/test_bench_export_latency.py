"""The export latency benchmark runs (--quick) and writes its results file, so the script cannot rot; its
figures are consistent with each other and with the table it prints."""

from __future__ import annotations

import json

import pytest
from bench_helpers import needs, run_bench

RUNTIMES = ["pytorch eager", "onnxruntime native (DeformConv)", "onnxruntime portable (GridSample)"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # the run's own subprocess timeout (300 s) comes first
@needs("onnx", "onnxruntime", extra="export")
def test_export_latency_quick(tmp_path):
    out = tmp_path / "res.json"
    proc = run_bench("export_latency.py", "--quick", "--out", str(out), timeout=300)
    res = json.loads(out.read_text())
    assert (res["preset"], res["image_size"], res["batch"], res["warmup"], res["reps"]) == (
        "cpu_tiny", [96, 128], 1, 1, 2)
    rows = {r["runtime"]: r for r in res["results"]}
    assert list(rows) == RUNTIMES
    eager = rows["pytorch eager"]["median_ms"]
    assert rows["pytorch eager"]["speedup_vs_eager"] == 1.0
    for name, r in rows.items():
        # a cpu_tiny forward at 96x128 (R18 trunk, ~0.5 GFLOP) takes milliseconds: a timer around nothing, or
        # a runtime that skips the work, gives microseconds; a hung one minutes
        assert 0.2 <= r["median_ms"] <= 60_000, r
        # the ratio is eager's time over this one's, measured in the same run (2-decimal ms rounding aside)
        assert r["speedup_vs_eager"] == pytest.approx(eager / r["median_ms"], rel=0.03), r
        assert f"| {name} | {r['median_ms']:.1f} | {r['speedup_vs_eager']:.2f}x |" in proc.stdout, name
