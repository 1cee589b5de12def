"""benchmarks/step_ab.py runs (--quick) and writes its results; its arms are the preset with their overrides."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bench_helpers import BENCH, run_bench


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_step_ab_quick(tmp_path):
    out = tmp_path / "res"
    proc = run_bench("step_ab.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work"), timeout=240)
    report = json.loads((out / "step_ab.json").read_text())
    rows = report["rows"]
    assert [r["arm"] for r in rows] == ["plain", "two_levels"]
    assert rows[1]["overrides"] == ["model.encoder.levels=2"] and rows[0]["ratio"] == 1.0
    assert all(len(r["times"]) == 1 and r["step_s"] > 0 for r in rows)
    assert rows[1]["ratio"] == pytest.approx(rows[1]["step_s"] / rows[0]["step_s"])
    assert rows[0]["params"] == rows[1]["params"]  # cpu_tiny shares a block's weights across levels
    assert "| two_levels | model.encoder.levels=2 |" in proc.stdout


def test_arms_need_distinct_names(tmp_path):
    bad = subprocess.run([sys.executable, str(BENCH / "step_ab.py"), "--arm", "a", "--arm", "a", "x=1",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--arm names must be distinct" in bad.stderr
