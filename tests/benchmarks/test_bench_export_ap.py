"""The export AP benchmark runs (--quick) and writes its results file, so the script cannot rot; its figures
are consistent with each other and with the table it prints."""

from __future__ import annotations

import json

import pytest
from bench_helpers import needs, run_bench

VARIANTS = ["PyTorch checkpoint (eval)", "PyTorch checkpoint (eval), batch 1", "ONNX letterbox 192x192",
            "ONNX letterbox 160x192", "ONNX stretched 160x192"]


@pytest.mark.slow
@pytest.mark.timeout(600)  # the run's own subprocess timeout (300 s) comes first
@needs("onnx", "onnxruntime", extra="export")
def test_export_ap_quick(tmp_path):
    out = tmp_path / "res.json"
    proc = run_bench("export_ap.py", "--quick", "--out", str(out), timeout=300)
    res = json.loads(out.read_text())
    assert (res["preset"], res["images"], res["eval_short_side"], res["eval_max_size"]) == ("cpu_tiny", 4, 160, 192)
    rows = res["results"]
    assert [r["variant"] for r in rows][:2] == VARIANTS[:2]
    assert all(r["variant"].startswith(v) for r, v in zip(rows, VARIANTS, strict=True))
    for r in rows:
        assert all(0 <= r[k] <= 100 for k in ("AP", "AP50", "AP75")), r
        assert r["AP_vs_pytorch"] == pytest.approx(r["AP"] - rows[0]["AP"], abs=0.011)
        assert r["variant"] in proc.stdout
