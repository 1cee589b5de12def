"""The fine-tuning benchmark runs (--quick) through the trainer: the fine-tuned run loads every tensor but the
class heads of the 6-class source model, both target runs are evaluated every epoch, and the results, table
and plot are written. (What the full run measured is in docs/benchmarks.md: an AP figure is a benchmark's result,
not something a unit test can check.)"""

from __future__ import annotations

import json

import pytest
from bench_helpers import run_bench


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_finetune_quick(tmp_path):
    out = tmp_path / "res"
    run_bench("finetune.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work"), timeout=500)
    report = json.loads((out / "finetune.json").read_text())
    assert report["setup"]["target_classes"] == ["star", "ring", "cross"]
    ft, scratch = report["results"]["finetuned"], report["results"]["scratch"]
    assert [h["epoch"] for h in ft["history"]] == [h["epoch"] for h in scratch["history"]] == [1, 2]
    assert all(h["AP"] is not None and h["loss"] > 0 for h in ft["history"] + scratch["history"])
    loaded, total = map(int, ft["loaded"].split(" tensors")[0].split(" of "))
    assert total - loaded == 4, ft["loaded"]  # cpu_tiny: 2 decoder stages' class FC (weight, bias), 6 -> 3 classes
    assert scratch["loaded"] is None
    md = (out / "finetune.md").read_text()
    assert f"| 2 | {ft['history'][1]['AP']:.1f} | {scratch['history'][1]['AP']:.1f} |" in md
    assert (out / "finetune_ap.png").stat().st_size > 1000
