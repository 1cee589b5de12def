"""The export latency benchmark runs (--quick) and writes its results file, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "export_latency.py"


def test_export_latency_quick(tmp_path):
    out = tmp_path / "res.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    runtimes = [r["runtime"] for r in res["results"]]
    assert runtimes == ["pytorch eager", "onnxruntime native (DeformConv)", "onnxruntime portable (GridSample)"]
    assert all(r["median_ms"] > 0 and r["speedup_vs_eager"] > 0 for r in res["results"])
    assert "| pytorch eager |" in proc.stdout
