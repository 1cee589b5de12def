"""The page screenshot tool runs (an untrained tiny model, the default synthetic image) and saves a PNG of the
page with the image drawn, so the README's picture can be made again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_helpers import needs, run_bench
from PIL import Image


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs("starlette", "uvicorn", "python_multipart", "selenium", extra="dev")
@pytest.mark.skipif(not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_serve_screenshot(tmp_path):
    out = tmp_path / "page.png"
    proc = run_bench("serve_screenshot.py", "--threshold", "0", "--size", "900", "700", "--out", str(out),
                     timeout=240)
    assert "detection(s) at score >= 0.0 drawn" in proc.stdout and str(out) in proc.stdout
    shot = np.asarray(Image.open(out).convert("RGB"))
    assert shot.shape[1] == 900 and 400 <= shot.shape[0] <= 700
    # the synthetic image (saturated colours) fills a good part of the window; the page alone (greys, a slider,
    # colour swatches) has under 1% of such pixels
    saturated = (shot.max(axis=2).astype(int) - shot.min(axis=2)) > 60
    assert saturated.mean() > 0.08, saturated.mean()
