"""The speed benchmark runs (--quick) for ours and every peer and writes its results and ratio table; the
figures of each row are consistent with each other, with the machine's measured peak and with the tables."""

from __future__ import annotations

import json

import pytest
from bench_helpers import needs, run_bench

NAMES = ["dynamic_detr", "hf_detr", "hf_deformable_detr", "tv_fcos", "tv_retinanet", "hf_rtdetr_r18", "hf_dfine_n"]


@pytest.mark.slow
@pytest.mark.timeout(900)  # the run's own subprocess timeout (600 s) comes first
@needs("transformers", extra="bench")  # --quick measures every peer, the HF ones too
def test_speed_quick(tmp_path):
    out = tmp_path / "res"
    run_bench("speed.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work"))
    report = json.loads((out / "speed.json").read_text())
    peak = report["matmul_gflops"]
    assert 1 < peak < 1e6, peak
    assert (report["setup"]["batch"], report["setup"]["reps"], report["setup"]["presets"]) == (2, 1, ["cpu_tiny"])
    rows = report["results"]
    assert [r["name"] for r in rows] == NAMES
    md = (out / "speed.md").read_text()
    for r in rows:
        name, b = r["name"], r["batch"]
        assert (r["preset"], b, r["image_size"]) == ("cpu_tiny", 2, rows[0]["image_size"]), name  # same batch
        assert r["params"] > 1e6 and r["peak_mb"] > 100, name
        assert 50 < r["start_mb"] < r["peak_mb"], name  # the process before its first step, below its peak
        assert r["gflops"] > 0.1 and r["train_gflop_step"] > r["gflops"], name
        # throughputs are the batch over the measured times, FLOP rates the counted FLOPs over them
        assert r["train_img_s"] == pytest.approx(b / r["train_step_s"], rel=1e-9), name
        assert r["train_gflop_s"] == pytest.approx(r["train_gflop_step"] / r["train_step_s"], rel=1e-9), name
        # times are real: a training step of 2 images (forward, backward, optimiser) outlasts a 1-image
        # inference, and no contender computes faster than twice this machine's own matmul peak
        assert 0.001 < r["train_step_s"] < 600 and r["latency_ms"] > 0.1, name
        assert r["train_step_s"] * 1000 > r["latency_ms"], name
        assert r["train_gflop_s"] < 2 * peak and r["infer_img_s"] * r["gflops"] < 2 * peak, name
        row = f"| cpu_tiny | {r['label']} | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} | {r['train_img_s']:.2f} |"
        assert row in md, name
    ours = rows[0]
    for p in rows[1:]:  # the ratio table divides ours by each peer
        assert f"| cpu_tiny | {p['label']} | x{ours['train_img_s'] / p['train_img_s']:.2f} | " in md, p["name"]
    assert md.count("| cpu_tiny |") == 7 + 6  # 7 measured rows, 6 ratio rows
    # RT-DETR and D-FINE are cut to cpu_tiny's sizes in --quick runs (peers.QUICK_PEER_SETTINGS)
    assert set(report["setup"]["peer_settings"]) >= {"hf_rtdetr_r18.size=preset", "hf_dfine_n.size=preset"}
