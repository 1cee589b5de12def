"""The grouped-batches benchmark runs (--quick) and writes its results: both orders serve the whole epoch in the
same number of batches, the padded fractions are the per-batch figures' own, grouping pads less, and the table
and ratios are the figures' own."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from bench_helpers import run_bench


def test_grouped_batches_quick(tmp_path):
    out, work = tmp_path / "res", tmp_path / "work"
    proc = run_bench("grouped_batches.py", "--quick", "--out", str(out), "--work", str(work), timeout=300)
    rep = json.loads((out / "grouped_batches.json").read_text())
    s, r = rep["setup"], rep["results"]
    assert s["images"] == 24 and 0 < s["portrait"] < 24
    for name in ("ungrouped", "grouped"):
        x = r[name]
        assert x["batches"] == len(x["per_batch"]) == math.ceil(24 / s["batch_size"]), name
        assert all(0 <= f < 1 for f in x["per_batch"]), name
        assert x["mean_batch_padded_fraction"] == pytest.approx(statistics.fmean(x["per_batch"]))
        assert len(x["step_s"]) == s["steps"] and x["median_step_s"] == pytest.approx(statistics.median(x["step_s"]))
        assert f"| {x['padded_fraction']:.3f} | {x['mean_batch_padded_fraction']:.3f} |" in proc.stdout
    off, on = r["ungrouped"], r["grouped"]
    assert on["padded_fraction"] < off["padded_fraction"]  # the point of grouping
    assert rep["summary"]["pixels_ratio"] == pytest.approx(on["pixels_per_image"] / off["pixels_per_image"])
    assert rep["summary"]["step_ratio"] == pytest.approx(on["median_step_s"] / off["median_step_s"])
    assert (out / "grouped_batches.md").read_text().splitlines()[-1].startswith("Grouping: padded fraction")
