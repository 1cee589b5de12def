"""The dataset memory benchmark runs (--quick) and writes its results: every record was read once through the
workers, the records' size is what their arrays hold, the summed memory figures add up per process, the ratios
are the figures' own and the table shows them."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from bench_helpers import run_bench


def test_dataset_memory_quick(tmp_path):
    out, work = tmp_path / "res", tmp_path / "work"
    proc = run_bench("dataset_memory.py", "--quick", "--out", str(out), "--work", str(work), timeout=600)
    rep = json.loads((out / "dataset_memory.json").read_text())
    assert (rep["setup"]["images"], rep["setup"]["workers"], rep["setup"]["batch"]) == (2000, [2, 4], 16)
    gen, ref, runs, s = rep["generated"], rep["pycocotools"], rep["runs"], rep["summary"]
    (ann_file,) = work.glob("coco_like_*/annotations/instances_train2017.json")
    data = json.loads(ann_file.read_text())
    n, m = len(data["images"]), len(data["annotations"])
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert (gen["images"], gen["annotations"], gen["crowd"]) == (n, m, crowd) == (2000, m, crowd)
    assert 0.8 * 860_001 / 118_287 < m / n < 1.2 * 860_001 / 118_287 and 0 < crowd < 0.05 * m
    assert all(isinstance(a["segmentation"], list | dict) for a in data["annotations"])  # polygons / RLE present
    assert (ref["images"], ref["annotations"]) == (n, m) and ref["seconds"] > 0
    names = sum(len(img["file_name"].encode()) for img in data["images"])
    for r in runs:
        w = r["workers"]
        # every record read once, through the workers: images and non-crowd boxes add up to the file's
        assert (r["num_images"], r["num_annotations"], r["num_crowd"]) == (n, m, crowd), w
        assert (r["touched_images"], r["touched_boxes"]) == (n, m - crowd), w
        assert r["batches"] == math.ceil(n / 16)
        # the records are their arrays: 3 x int64 per image, the names, 2 offset arrays, 57 B per annotation
        assert r["records_bytes"] == 24 * n + names + 16 * (n + 1) + 57 * m
        assert r["records_mb"] == pytest.approx(r["records_bytes"] / 2**20)
        for when in ("start", "end"):
            fig = r[when]
            per = fig["per_process"]
            assert fig["processes"] == len(per) == w + 1, (w, when)
            for k in ("rss", "uss", "pss"):
                assert fig[k] == pytest.approx(sum(p[k] for p in per)), (w, when, k)
            for p in per:  # private pages count fully in PSS, shared ones in part: USS <= PSS <= RSS
                assert 0 < p["uss"] <= p["pss"] + 1e-6 and p["pss"] <= p["rss"] + 1e-6, (w, when, p)
            assert per[0]["rss"] > 50  # the main process holds torch
            assert fig["pss"] < fig["rss"]  # forked workers share their parent's pages
        for k in ("rss", "uss", "pss"):
            assert r["growth"][k] == pytest.approx(r["end"][k] / r["start"][k]), (w, k)
        assert 0 < r["startup_s"] < 300 and r["iterate_s"] > 0
        g = r["growth"]
        assert f"| {w} | end / start | | x{g['rss']:.3f} | x{g['uss']:.3f} | x{g['pss']:.3f} |" in proc.stdout
    assert s["startup_s"] == pytest.approx(statistics.median(r["startup_s"] for r in runs))
    assert s["startup_ratio"] == pytest.approx(s["startup_s"] / ref["seconds"])
    assert s["max_pss_growth"] == max(r["growth"]["pss"] for r in runs)
    assert s["records_ok"] == (s["records_mb"] <= 1024) and s["growth_ok"] == (s["max_pss_growth"] <= 1.2)
    assert s["startup_ok"] == (s["startup_ratio"] <= 1.5)
    md = (out / "dataset_memory.md").read_text()
    assert f"| records (MB) | {s['records_mb']:.1f} |" in md
    assert f"| start-up ratio, ours / pycocotools | x{s['startup_ratio']:.2f} |" in md
