"""The convergence benchmark runs (--quick: every contender, tiny data) and writes its results, table and plots,
so the script cannot rot; the peers' adapters keep to the shared contract."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from bench_helpers import BENCH, run_bench

sys.path.insert(0, str(BENCH))
import peers


@pytest.mark.slow
def test_convergence_quick(tmp_path):
    out = tmp_path / "res"
    run_bench("convergence.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work"))
    report = json.loads((out / "convergence.json").read_text())
    assert list(report["results"]) == list(peers.ALL)
    for name, r in report["results"].items():
        assert r["params"] > 1e6 and r["steps"] > 0, name
        assert r["at_epochs"]["epoch"] == 1 and 0 <= r["at_epochs"]["AP"] <= 100, name
        assert r["at_minutes"] is not None and r["at_minutes"]["minutes"] >= 0.05, name
        assert r["skipped"] == 0, name
    md = (out / "convergence.md").read_text()
    assert "### Equal epochs (1)" in md and "### Equal minutes" in md
    assert all(peers.LABELS[n] in md for n in peers.ALL)
    assert (out / "convergence_ap_epochs.png").stat().st_size > 1000
    assert (out / "convergence_ap_minutes.png").stat().st_size > 1000
    # a second run with the same setup reuses the finished contenders instead of training them again
    again = run_bench("convergence.py", "--quick", "--only", "tv_fcos", "--out", str(out), "--work",
                      str(tmp_path / "work"), timeout=300)
    assert "already in" in again.stdout


def test_detr_postprocess_scales_to_original_pixels():
    logits = torch.full((1, 3, 2), -9.0)
    logits[0, 1, 1] = 9.0  # query 1, class 1: the only confident pair
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0], [0.9, 0.9, 0.5, 0.5]]])
    out = peers.detr_postprocess(logits, boxes, torch.tensor([[100, 200]]), focal=True, top_k=2)[0]
    assert out["labels"][0] == 1
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.0, 0.0, 100.0, 100.0]))
    soft = torch.zeros(1, 3, 3)
    soft[0, 2, 0] = 9.0  # softmax with no-object last: query 2 is class 0, clipped to the image
    out = peers.detr_postprocess(soft, boxes, torch.tensor([[100, 200]]), focal=False, top_k=1)[0]
    assert out["labels"].tolist() == [0]
    torch.testing.assert_close(out["boxes"][0], torch.tensor([130.0, 65.0, 200.0, 100.0]))


def test_hf_peers_train_batchnorm():
    """At random init a frozen BN is an identity: the HF peers get trainable BatchNorm like ours."""
    from dynamic_detr.config import get_preset

    for name in ("hf_detr", "hf_deformable_detr"):
        c = peers.build(name, get_preset("cpu_tiny"), num_classes=3, batch_size=2)
        kinds = {type(m).__name__ for m in c.model.modules()}
        assert "BatchNorm2d" in kinds and not any(k.endswith("FrozenBatchNorm2d") for k in kinds), name
