"""Paired comparison of convergence runs over several init seeds: each contender against a baseline, seed by seed.

A single convergence run cannot resolve a difference of an AP or two: AP swings by several points between
neighbouring epochs of one run. Run `convergence.py` once per init seed (`--seed k`, the same `--data-seed`, a
separate `--out` each), then compare here: for every contender present in every run, the difference to the
baseline in the same run (same data, same init seed, same order of batches) at equal epochs and, where the runs
had a minutes budget, at equal minutes; the mean difference over the seeds with its 95% interval (Student's t,
n - 1 degrees of freedom), for AP and APs.

    for s in 0 1 2; do .venv/bin/python benchmarks/convergence.py --seed $s --out runs/enc/seed$s \\
        --only no_encoder encoder encoder_static encoder_tuned --preset cpu_demo --synth 480 500; done
    .venv/bin/python benchmarks/paired.py runs/enc/seed*/convergence.json --baseline no_encoder \\
        --out benchmarks/results/encoder_paired

Writes `<out>/paired.json` and `<out>/paired.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

METRICS = ("AP", "APs")
BUDGETS = (("at_epochs", "equal epochs"), ("at_minutes", "equal minutes"))


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom (a 95% two-sided interval)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_interval(diffs: list[float]) -> dict[str, Any]:
    """Mean of `diffs` and its 95% interval (t, n - 1 df); no interval from a single value."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None, "diffs": diffs}
    half = t_quantile_975(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half, "diffs": diffs}


def load_runs(paths: list[Path]) -> list[dict[str, Any]]:
    """The convergence reports; they must share everything in their setup but the init seed."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    ref = {k: v for k, v in runs[0]["setup"].items() if k != "seed"}
    for path, run in zip(paths, runs, strict=True):
        setup = {k: v for k, v in run["setup"].items() if k != "seed"}
        if setup != ref:
            diff = sorted(k for k in set(setup) | set(ref) if setup.get(k) != ref.get(k))
            raise SystemExit(f"{path}: its setup differs from {paths[0]}'s in {', '.join(diff)} (only --seed may)")
    seeds = [run["setup"]["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the runs must have distinct init seeds, got {seeds}")
    return runs


def compare(runs: list[dict[str, Any]], baseline: str) -> dict[str, Any]:
    """{contender: {budget: {metric: mean_interval}}} for every contender in every run, against `baseline`."""
    names = [n for n in runs[0]["results"] if n != baseline and all(n in r["results"] for r in runs)]
    if not all(baseline in r["results"] for r in runs):
        raise SystemExit(f"--baseline {baseline}: not in every run")
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {}
        for budget, _ in BUDGETS:
            points = [(r["results"][name].get(budget), r["results"][baseline].get(budget)) for r in runs]
            if any(a is None or b is None for a, b in points):
                continue
            out[name][budget] = {m: mean_interval([a[m] - b[m] for a, b in points if a[m] is not None
                                                   and b[m] is not None]) for m in METRICS}
            out[name][budget]["minutes"] = statistics.fmean(a["minutes"] for a, _ in points)
            out[name][budget]["epoch"] = statistics.fmean(float(a["epoch"]) for a, _ in points)
        out[name]["sec_per_step"] = statistics.fmean(r["results"][name]["sec_per_step"] for r in runs)
        out[name]["step_ratio"] = out[name]["sec_per_step"] / statistics.fmean(
            r["results"][baseline]["sec_per_step"] for r in runs)
    return out


def _cell(v: dict[str, Any]) -> str:
    if v["low"] is None:
        return f"{v['mean']:+.1f}"
    return f"{v['mean']:+.1f} [{v['low']:+.1f}, {v['high']:+.1f}]"


def markdown(runs: list[dict[str, Any]], baseline: str, result: dict[str, Any]) -> str:
    s = runs[0]["setup"]
    labels = {n: r["label"] for n, r in runs[0]["results"].items()}
    seeds = ", ".join(str(r["setup"]["seed"]) for r in runs)
    out = [f"Setup: {s['data']}, preset `{s['preset']}` {' '.join(s['overrides'])}, batch {s['batch_size']}, "
           f"init seeds {seeds}; {runs[0]['machine']['cpu']}, {runs[0]['machine']['date']}. Each cell: the mean "
           f"difference to **{labels[baseline]}** in the same run, over the seeds, with its 95% interval.", ""]
    for budget, title in BUDGETS:
        rows = [(n, r[budget]) for n, r in result.items() if budget in r]
        if not rows:
            continue
        budget_value = s["epochs"] if budget == "at_epochs" else s["minutes"]
        out += [f"### {title.capitalize()} ({budget_value} {'epochs' if budget == 'at_epochs' else 'min'})", "",
                "| contender | AP - baseline | APs - baseline | per seed (AP) | step time vs baseline |",
                "|---|---|---|---|---|"]
        for name, r in rows:
            per_seed = " / ".join(f"{d:+.1f}" for d in r["AP"]["diffs"])
            out.append(f"| {labels[name]} | {_cell(r['AP'])} | {_cell(r['APs'])} | {per_seed} | "
                       f"x{result[name]['step_ratio']:.2f} |")
        base = [r["results"][baseline][budget] for r in runs]
        if all(b is not None for b in base):
            out += ["", f"Baseline ({labels[baseline]}): AP " + " / ".join(common.fmt(b["AP"]) for b in base)
                    + ", APs " + " / ".join(common.fmt(b["APs"]) for b in base) + "."]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="convergence.json of each init seed")
    p.add_argument("--baseline", required=True, help="the contender every other one is compared with")
    p.add_argument("--out", type=Path, default=common.RESULTS / "paired", help="folder for the results files")
    args = p.parse_args(argv)
    runs = load_runs(args.runs)
    result = compare(runs, args.baseline)
    report = {"baseline": args.baseline, "runs": [str(r) for r in args.runs],
              "seeds": [r["setup"]["seed"] for r in runs], "setup": runs[0]["setup"], "results": result}
    common.write_results(args.out, "paired", report, markdown(runs, args.baseline, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
