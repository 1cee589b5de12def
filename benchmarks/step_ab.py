"""Interleaved A/B of training-step time: several configurations of our model in one process, on the same
batches, in alternating order, so that the machine's drift (this VM's speed moves by up to 2x within an hour)
falls on every arm alike.

Each arm is the preset with its own `key=value` overrides. The batches are `--batches` training batches of
the synthetic dataset through the preset's training transform (multi-scale, crop, flip: the sizes a real run
pads to). Every round runs each arm once over all batches (a training step each: forward, loss with Hungarian
matching, backward, clipping, AdamW), the arms' order reversed every other round (ABBA); the first round is
warm-up. Reported per arm: the median over rounds of the mean step time, and its ratio to the first arm
measured round by round (the median of the per-round ratios, and their range).

    .venv/bin/python benchmarks/step_ab.py --preset cpu_demo --arm off \\
        --arm encoder model.encoder.enabled=true --arm p3p4 model.encoder.enabled=true model.encoder.levels=2
    .venv/bin/python benchmarks/step_ab.py --quick      # smoke run (the test suite calls it)

Writes `<out>/step_ab.json` and `step_ab.md`. Never run it while another job uses the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import peers
from dynamic_detr.config import apply_overrides


def parse_arms(raw: list[list[str]]) -> list[tuple[str, list[str]]]:
    """`--arm NAME [key=value ...]` groups -> [(name, overrides)]; names must be distinct."""
    arms = [(group[0], group[1:]) for group in raw]
    names = [n for n, _ in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f"--arm names must be distinct, got {names}")
    if any("=" in n for n in names):
        raise SystemExit("each --arm starts with its name, then its key=value overrides")
    return arms


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.pick_device(args.device)
    overrides = common.sized_data_overrides(args.image_size) if args.image_size else []
    base = common.make_config(args.preset, [*overrides, "data.num_workers=0", *args.overrides])
    data = common.synthetic_data(args.work, 64, 8, image_size=args.image_size or 256, seed=0)
    train_set, _ = common.datasets(data, base)
    common.seed_everything(0)  # the same batches (scales, crops, flips) in every run
    loader = common.loader(train_set, base, True, base.train.batch_size, 0)
    batches = []
    for batch in loader:
        batches.append(batch.to(device))
        if len(batches) == args.batches:
            break
    contenders = []
    for name, arm in parse_arms(args.arm):
        cfg = apply_overrides(base, arm)
        common.seed_everything(0)
        c = peers.ours_from_config(name, cfg, len(train_set.category_ids))
        c.model.to(device)
        contenders.append((name, arm, c, cfg.train.amp))
    times: dict[str, list[float]] = {name: [] for name, *_ in contenders}
    for r in range(args.rounds + 1):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for name, _, c, _ in order:
            params = [p for g in c.optimizer.param_groups for p in g["params"]]
            c.model.train()
            t0 = common.now(device)
            for batch in batches:
                loss = c.loss(batch)
                c.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip > 0 else float("inf"))
                c.optimizer.step()
            seconds = (common.now(device) - t0) / len(batches)
            if r > 0:  # round 0 warms up (allocator, kernels' first calls)
                times[name].append(seconds)
        if r > 0:
            print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n, *_ in contenders), flush=True)
    first = contenders[0][0]
    rows = []
    for name, arm, c, amp in contenders:
        ratios = [a / b for a, b in zip(times[name], times[first], strict=True)]
        rows.append({"arm": name, "overrides": arm, "amp": amp, "params": c.params(),
                     "step_s": statistics.median(times[name]), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "times": times[name]})
    sizes = sorted({tuple(b.images.shape[-2:]) for b in batches})
    return {"setup": {"preset": args.preset, "overrides": [*overrides, *args.overrides], "batches": args.batches,
                      "batch_size": base.train.batch_size, "padded_sizes": [list(s) for s in sizes],
                      "rounds": args.rounds},
            "machine": common.machine(device), "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    s, m = report["setup"], report["machine"]
    first = report["rows"][0]["arm"]
    out = [f"Setup: preset `{s['preset']}` {' '.join(s['overrides'])}, {s['batches']} training batches of "
           f"{s['batch_size']} (padded sizes {', '.join('x'.join(map(str, hw)) for hw in s['padded_sizes'])}), "
           f"{s['rounds']} interleaved rounds after a warm-up; {m['cpu']}, {m['threads']} threads, "
           f"torch {m['torch']}, {m['date']}.", "",
           f"| arm | overrides | amp | params (M) | s / step | vs {first} (median, range over rounds) |",
           "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        out.append(f"| {r['arm']} | {' '.join(r['overrides']) or '-'} | {r['amp']} | {r['params'] / 1e6:.2f} | "
                   f"{r['step_s']:.3f} | x{r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) |")
    return "\n".join(out) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_demo")
    p.add_argument("--arm", nargs="+", action="append", metavar="NAME [KEY=VALUE ...]",
                   help="an arm: its name, then its overrides of the preset (repeat; the first is the reference)")
    p.add_argument("--batches", type=int, default=6, help="training batches each arm steps through per round")
    p.add_argument("--rounds", type=int, default=6, help="timed rounds (after one warm-up round)")
    p.add_argument("--image-size", type=int, default=0,
                   help="synthetic long side, the augmentation recipe scaled to it (0: the preset's sizes, 256 px "
                        "images)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench", help="where data is generated")
    p.add_argument("--out", type=Path, default=common.RESULTS / "step_ab", help="folder for the results files")
    p.add_argument("--quick", action="store_true", help="smoke run: cpu_tiny, 2 arms, 1 batch, 1 round")
    p.add_argument("overrides", nargs="*", help="overrides for every arm (e.g. train.amp=none)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.batches, args.rounds, args.image_size = "cpu_tiny", 1, 1, 128
        args.arm = args.arm or [["plain"], ["two_levels", "model.encoder.levels=2"]]
    if not args.arm:
        p.error("give at least one --arm")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report = run(args)
    common.write_results(args.out, "step_ab", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
