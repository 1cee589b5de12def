"""The speed benchmark runs (--quick) for ours and every peer and writes its results and ratio table."""

from __future__ import annotations

import json

import pytest
from bench_helpers import run_bench


@pytest.mark.slow
def test_speed_quick(tmp_path):
    out = tmp_path / "res"
    run_bench("speed.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work"))
    report = json.loads((out / "speed.json").read_text())
    assert report["matmul_gflops"] > 0
    names = [r["name"] for r in report["results"]]
    assert names == ["dynamic_detr", "hf_detr", "hf_deformable_detr", "tv_fcos", "tv_retinanet"]
    for r in report["results"]:
        assert r["train_img_s"] > 0 and r["latency_ms"] > 0 and r["infer_img_s"] > 0, r["name"]
        assert r["gflops"] > 0.1 and r["train_gflop_step"] > r["gflops"] and r["peak_mb"] > 100, r["name"]
    md = (out / "speed.md").read_text()
    assert md.count("| cpu_tiny |") == 5 + 4  # 5 measured rows, 4 ratio rows
