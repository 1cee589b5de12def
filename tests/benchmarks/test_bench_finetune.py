"""The fine-tuning benchmark runs (--quick) through the trainer: the fine-tuned run loads every tensor but the
class heads of the 6-class source model, both target runs are evaluated every epoch, and the results, table
and plot are written. The committed full run shows fine-tuning ahead of random weights."""

from __future__ import annotations

import json

import pytest
from bench_helpers import BENCH, run_bench


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


def test_committed_run_fine_tunes_ahead_of_scratch():
    """The full run in benchmarks/results (docs/benchmarks.md): the fine-tuned model is ahead at the last epoch
    and, loosely, by more than 1 AP on the mean over the epochs."""
    path = BENCH / "results" / "finetune" / "finetune.json"
    if not path.exists():
        pytest.skip("no committed fine-tuning run")
    r = json.loads(path.read_text())["results"]
    ft = [h["AP"] for h in r["finetuned"]["history"]]
    scratch = [h["AP"] for h in r["scratch"]["history"]]
    assert len(ft) == len(scratch) >= 4
    assert ft[-1] > scratch[-1], (ft, scratch)
    assert sum(ft) / len(ft) > sum(scratch) / len(scratch) + 1.0, (ft, scratch)
