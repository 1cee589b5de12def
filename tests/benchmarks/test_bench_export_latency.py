"""The export latency benchmark runs (--quick) and writes its results file, so the script cannot rot."""

from __future__ import annotations

import json

from bench_helpers import run_bench


def test_export_latency_quick(tmp_path):
    out = tmp_path / "res.json"
    proc = run_bench("export_latency.py", "--quick", "--out", str(out), timeout=300)
    res = json.loads(out.read_text())
    runtimes = [r["runtime"] for r in res["results"]]
    assert runtimes == ["pytorch eager", "onnxruntime native (DeformConv)", "onnxruntime portable (GridSample)"]
    assert all(r["median_ms"] > 0 and r["speedup_vs_eager"] > 0 for r in res["results"])
    assert "| pytorch eager |" in proc.stdout
