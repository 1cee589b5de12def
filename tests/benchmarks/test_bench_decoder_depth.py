"""The decoder-depth benchmark runs (--quick) and writes its results, so the script cannot rot: one row per
depth, the last with every stage, ratios consistent with the rows."""

from __future__ import annotations

import json

import pytest
from bench_helpers import run_bench


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_decoder_depth_quick(tmp_path):
    proc = run_bench("decoder_depth.py", "--quick", "--out", str(tmp_path), timeout=240)
    res = json.loads((tmp_path / "decoder_depth.json").read_text())
    rows = res["results"]
    assert res["preset"] == "cpu_tiny" and res["num_stages"] == 2 and [r["stages"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["AP"] <= 100 and r["latency_ms"] > 0
        assert r["AP_vs_all"] == pytest.approx(r["AP"] - rows[-1]["AP"], abs=0.011)
        assert r["latency_vs_all"] == pytest.approx(r["latency_ms"] / rows[-1]["latency_ms"], abs=0.002)
    assert "| 1 |" in proc.stdout and (tmp_path / "decoder_depth.md").read_text() in proc.stdout
