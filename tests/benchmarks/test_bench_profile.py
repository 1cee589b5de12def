"""The profiling benchmark runs (--quick) and writes a consistent report: every part's share of the wall time
between 0 and 100 and summing to 100, backward shares by component, the top-op tables, a FLOP rate; and its
backward attribution links each backward node to the forward part that created it."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from bench_helpers import BENCH, run_bench
from torch import nn

TRAIN_PARTS = ["data", "backbone", "encoder", "dense_head", "decoder", "matcher", "loss", "backward", "optimizer",
               "other"]
INFER_PARTS = ["data", "backbone", "encoder", "dense_head", "decoder", "other"]


def _script():
    spec = importlib.util.spec_from_file_location("profile_step", BENCH / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backward_is_attributed_to_the_part_that_created_it():
    ps = _script()
    backbone, encoder = nn.Conv2d(3, 32, 3), nn.Linear(32, 1)  # the conv's backward dwarfs the linear's
    sections = ps.Sections(torch.device("cpu"))
    sections.hook(backbone, "backbone")
    sections.hook(encoder, "encoder")
    x = torch.randn(2, 3, 48, 48)

    def step() -> None:
        encoder(backbone(x).mean((2, 3))).sum().backward()

    prof = ps.profiled(step, torch.device("cpu"))
    sections.remove()
    shares = ps.backward_by_part(prof)
    assert sum(shares.values()) == pytest.approx(100)
    assert shares["backbone"] > shares["encoder"] > 0, shares
    assert shares["decoder"] == shares["dense_head"] == shares["loss"] == 0, shares
    assert shares["backbone"] > 50, shares
    assert not backbone._forward_hooks and not backbone._forward_pre_hooks  # remove() undoes the hooks


def test_kept_memory_is_attributed_to_the_part_that_saved_it():
    from types import SimpleNamespace

    ps = _script()
    backbone, encoder = nn.Conv2d(3, 32, 3), nn.Linear(32, 1)
    model = nn.ModuleDict({"backbone": backbone, "encoder": encoder})
    sections = ps.Sections(torch.device("cpu"))
    sections.hook(backbone, "backbone")
    sections.hook(encoder, "encoder")
    x = torch.randn(2, 3, 48, 48)
    c = SimpleNamespace(model=model, loss=lambda batch: encoder(backbone(batch).relu().mean((2, 3))).sum())
    kept = ps.kept_by_part(c, x, sections)
    sections.remove()
    # the conv keeps its input (2x3x48x48 floats), the ReLU between the parts its output (2x32x46x46), the
    # linear its input (2x32)
    assert kept["backbone"] == pytest.approx(2 * 3 * 48 * 48 * 4 / 2**20)
    assert kept["other"] == pytest.approx(2 * 32 * 46 * 46 * 4 / 2**20)
    assert kept["encoder"] == pytest.approx(2 * 32 * 4 / 2**20)  # not its weight: a parameter
    assert kept["decoder"] == kept["dense_head"] == kept["loss"] == 0, kept


@pytest.mark.slow
@pytest.mark.timeout(900)  # the run's own subprocess timeout (600 s) comes first
def test_profile_quick(tmp_path):
    out = tmp_path / "res"
    run_bench("profile_step.py", "--quick", "--out", str(out), "--work", str(tmp_path / "work"))
    report = json.loads((out / "profile.json").read_text())
    assert (report["setup"]["batch"], report["setup"]["reps"], report["setup"]["presets"]) == (2, 1, ["cpu_tiny"])
    assert report["peaks"]["matmul_gflops"] > 0 and report["peaks"]["conv3x3_gflops"] > 0
    rows = report["results"]
    assert [r["name"] for r in rows] == ["faithful", "dynamic_detr"]
    md = (out / "profile.md").read_text()
    assert md.count("Top 15 ops by self CPU time") == 4  # training step and inference, per contender
    for r in rows:
        assert r["amp"] in ("none", "bf16") and r["batch"] == 2, r["name"]
        for key, parts in (("train", TRAIN_PARTS), ("infer", INFER_PARTS)):
            x, where = r[key], (r["name"], key)
            assert list(x["shares"]) == parts and list(x["parts_ms"]) == parts, where
            assert all(0 <= s <= 100 for s in x["shares"].values()), (where, x["shares"])
            # the wall time is measured on its own: the parts cover it once and only once
            assert sum(x["shares"].values()) == pytest.approx(100, abs=5), (where, x["shares"])
            assert sum(x["parts_ms"].values()) == pytest.approx(x["wall_ms"], rel=0.05), where
            assert x["compute_ms"] == pytest.approx(x["wall_ms"] - x["parts_ms"]["data"], rel=1e-6), where
            assert x["gflop"] > 0 and x["gflop_s"] > 0 and x["of_matmul"] > 0 and x["of_conv3x3"] > 0, where
            assert x["gflop_s"] == pytest.approx(x["gflop"] / (x["compute_ms"] / 1000), rel=1e-6), where
            ops = x["top_ops"]
            assert len(ops) == 15 and all(0 < o["share"] <= 100 for o in ops), where
            assert [o["self_ms"] for o in ops] == sorted((o["self_ms"] for o in ops), reverse=True), where
            assert f"| `{ops[0]['op']}` | {ops[0]['calls']} |" in md, where
        for part in ("backbone", "encoder", "decoder", "backward", "optimizer"):
            assert r["train"]["parts_ms"][part] > 0, (r["name"], part)
        kept = r["train"]["kept_mb"]
        assert all(kept[p] > 0 for p in ("backbone", "encoder", "decoder")), kept
        assert f"| **total** | **{sum(kept.values()):.1f}** | 100% |" in md, kept
        backward = r["train"]["backward_by_part"]
        assert all(0 <= s <= 100 for s in backward.values()), backward
        assert sum(backward.values()) == pytest.approx(100, abs=0.1), backward
        assert backward["backbone"] > 0 and backward["encoder"] > 0 and backward["decoder"] > 0, backward
        assert f"## cpu_tiny: {r['label']} (`{r['name']}`)" in md
