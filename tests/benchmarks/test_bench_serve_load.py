"""The serve load test runs (--quick: a tiny model, 1 and 2 clients x 3 requests) and writes its results file, so
the script cannot rot; its figures are consistent with each other and with the table it prints."""

from __future__ import annotations

import json

import pytest
from bench_helpers import needs, run_bench


@pytest.mark.slow
@pytest.mark.timeout(400)  # the run's own subprocess timeout (300 s) comes first
@needs("starlette", "uvicorn", "python_multipart", extra="serve")
def test_serve_load_quick(tmp_path):
    out = tmp_path / "load.json"
    proc = run_bench("serve_load.py", "--quick", "--out", str(out), timeout=300)
    res = json.loads(out.read_text())
    assert res["model"] == {"preset": "cpu_tiny", "runtime": "pytorch"} and res["sigterm_exit_code"] == 0
    assert [r["concurrency"] for r in res["rounds"]] == [1, 2]
    for r in res["rounds"]:
        assert r["requests"] == 3 * r["concurrency"] == r["ok"] and r["errors"] == r["dropped"] == 0, r
        # a cpu_tiny forward on a 96x72 image takes milliseconds: a timer around nothing gives microseconds
        assert 1 <= r["p50_ms"] <= r["p99_ms"] <= 60_000, r
        assert r["throughput_rps"] == pytest.approx(r["ok"] / r["seconds"], rel=0.02, abs=0.01), r
        # every image of the round went through the model once, in batches the server reports
        assert sum(int(size) * n for size, n in r["batches"].items()) == r["requests"], r
        row = f"| {r['concurrency']} | {r['requests']} | {r['ok']} | 0 | 0 | {r['throughput_rps']:.2f} |"
        assert row in proc.stdout, proc.stdout
    assert list(res["rss_mb"]) == ["after_first_4", "after_1_clients", "after_2_clients", "end"]
    assert all(50 < v < 20_000 for v in res["rss_mb"].values())
    assert [m["request"] for m in res["malformed"]] == ["not an image", "truncated PNG", "truncated JPEG",
                                                        "too large", "unknown field", "wrong type",
                                                        "extreme aspect ratio"]
    assert [m["status"] for m in res["malformed"]] == [415, 422, 422, 413, 400, 400, 422]
    assert all(m["then"] == 200 and m["ok"] for m in res["malformed"])
    targets = res["targets"]
    assert targets["malformed_all_4xx_then_200"] and targets["sigterm_exit_0"] and targets["no_errors_or_drops_at_2"]
    assert targets["speedup"] == pytest.approx(res["rounds"][1]["throughput_rps"] / res["rounds"][0]["throughput_rps"],
                                               abs=0.01)
