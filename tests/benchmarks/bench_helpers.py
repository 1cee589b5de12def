"""Running a benchmark script as a user would: a subprocess, its results under the test's temp folder."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def run_bench(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> *args`; asserts exit code 0 and shows the end of stderr when not."""
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def needs(*modules: str, extra: str) -> pytest.MarkDecorator:
    """Skip unless every one of `modules` (an optional extra of pyproject.toml) is installed; looked up without
    importing it, since the benchmark itself runs in a subprocess."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (pip install '.[{extra}]')")
