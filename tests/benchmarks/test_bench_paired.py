"""benchmarks/paired.py: per-seed differences to the baseline, their mean and 95% interval, and the refusal of
runs that differ in more than the init seed."""

from __future__ import annotations

import importlib
import json
import math

import pytest
from bench_helpers import BENCH


@pytest.fixture(scope="module")
def paired():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        return importlib.import_module("paired")


def _run(path, seed: int, ap: dict[str, float], aps: dict[str, float], minutes: bool = True, data: str = "d"):
    def point(name):
        return {"epoch": 4, "minutes": 2.0, "AP": ap[name], "APs": aps[name]}

    results = {name: {"label": f"label {name}", "sec_per_step": 1.0 if name == "base" else 1.5,
                      "at_epochs": point(name), "at_minutes": point(name) if minutes else None} for name in ap}
    path.write_text(json.dumps({"setup": {"seed": seed, "data": data, "preset": "p", "overrides": [], "epochs": 4,
                                          "minutes": 2.0, "batch_size": 8},
                                "machine": {"cpu": "cpu", "date": "today"}, "results": results}))
    return path


def test_mean_and_interval_of_the_paired_differences(paired, tmp_path):
    diffs = [1.0, 2.0, 4.5]  # arm - base in seeds 0, 1, 2
    files = [_run(tmp_path / f"s{k}.json", k, {"base": 10.0 + k, "arm": 10.0 + k + d},
                  {"base": 5.0, "arm": 5.0 - d}) for k, d in enumerate(diffs)]
    assert paired.main([*map(str, files), "--baseline", "base", "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "paired.json").read_text())["results"]["arm"]
    ap = res["at_epochs"]["AP"]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2 df)
    assert ap["diffs"] == pytest.approx(diffs) and ap["mean"] == pytest.approx(mean)
    assert (ap["low"], ap["high"]) == (pytest.approx(mean - half, rel=1e-5), pytest.approx(mean + half, rel=1e-5))
    assert res["at_epochs"]["APs"]["mean"] == pytest.approx(-mean) and res["step_ratio"] == pytest.approx(1.5)
    assert res["at_minutes"]["AP"]["mean"] == pytest.approx(mean)
    md = (tmp_path / "out" / "paired.md").read_text()
    assert f"| label arm | {mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] |" in md
    assert "+1.0 / +2.0 / +4.5" in md and "### Equal minutes" in md


def test_runs_must_differ_in_the_init_seed_only(paired, tmp_path):
    a = _run(tmp_path / "a.json", 0, {"base": 1.0, "arm": 2.0}, {"base": 1.0, "arm": 2.0})
    b = _run(tmp_path / "b.json", 1, {"base": 1.0, "arm": 2.0}, {"base": 1.0, "arm": 2.0}, data="other")
    with pytest.raises(SystemExit, match=r"differs .* in data"):
        paired.main([str(a), str(b), "--baseline", "base", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="distinct init seeds"):
        paired.main([str(a), str(a), "--baseline", "base", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--baseline nope"):
        paired.main([str(a), "--baseline", "nope", "--out", str(tmp_path / "out")])
