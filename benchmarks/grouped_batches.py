"""Aspect-ratio grouped batches: the padding they save and the training step time they save.

`data.group_by_aspect=true` (the trainer's default: `data.sampler.GroupedBatchSampler`, portrait images batched
with portrait ones, the others with each other) against `false` (the shuffled order batched as drawn), on the
same synthetic dataset (half the images square, the others landscape or portrait), the same seed, the same
training augmentations and the trainer's own sampler and loader construction:

* padding, over one whole epoch of each: the padded fraction of the batch tensor (1 - the images' own pixels
  over B x H x W, from the batch's padding masks), per batch and over the epoch, and the batch pixels per image;
* step time: the `cpu_small` model (or `--preset`), one full training step (forward, loss, backward, clip, AdamW)
  on each of the epoch's first `--steps` batches after `--warmup` untimed ones, the two orders measured
  alternately batch by batch so that drift of the machine's speed hits both; medians.

    .venv/bin/python benchmarks/grouped_batches.py                # 400 images, 256 px, batch 4, ~2 min
    .venv/bin/python benchmarks/grouped_batches.py --quick        # smoke run (the test suite calls it)

Writes `<out>/grouped_batches.json` and `grouped_batches.md`. Never run it while another job uses the cores
(the step times are wall-clock).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import peers
from dynamic_detr.data.collate import build_loader
from dynamic_detr.data.sampler import GroupedBatchSampler, ResumableSampler, SeededDataset
from dynamic_detr.data.transforms import build_transforms


def epoch_loader(train_set, cfg, batch_size: int, grouped: bool, seed: int):
    """The trainer's training loader (train/trainer.py `_build_data`), one rank, epoch 0."""
    sampler = ResumableSampler(len(train_set), shuffle=True, seed=seed)
    if grouped:
        sampler = GroupedBatchSampler(sampler, train_set.aspect_groups(), batch_size)
    sampler.set_epoch(0)
    return build_loader(SeededDataset(train_set, build_transforms(cfg.data, train=True)), batch_size, train=True,
                        num_workers=cfg.data.num_workers, size_divisibility=cfg.data.size_divisibility,
                        sampler=sampler, seed=seed)


def padding(batches: list) -> dict[str, Any]:
    """Padded fraction per batch and over all batches; batch tensor pixels per image."""
    per_batch, own, total = [], 0, 0
    for b in batches:
        n, h, w = b.masks.shape
        valid = int((~b.masks).sum())
        per_batch.append(1 - valid / (n * h * w))
        own, total = own + valid, total + n * h * w
    return {"batches": len(batches), "padded_fraction": 1 - own / total,
            "mean_batch_padded_fraction": statistics.fmean(per_batch),
            "pixels_per_image": total / sum(b.masks.shape[0] for b in batches), "per_batch": per_batch}


def step_times(c: peers.Contender, runs: dict[bool, list], warmup: int, steps: int) -> dict[bool, list[float]]:
    """Seconds of one training step on each of the first `steps` batches of each order (after `warmup`
    untimed ones each), the two orders alternating."""
    c.model.train()
    params = [p for g in c.optimizer.param_groups for p in g["params"]]
    times: dict[bool, list[float]] = {False: [], True: []}

    def step(batch) -> float:
        t0 = time.perf_counter()
        loss = c.loss(batch)
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip > 0 else float("inf"))
        c.optimizer.step()
        return time.perf_counter() - t0

    for i in range(warmup + steps):
        for grouped in (False, True):
            batches = runs[grouped]
            dt = step(batches[i % len(batches)])
            if i >= warmup:
                times[grouped].append(dt)
    return times


def markdown(report: dict[str, Any]) -> str:
    s, r = report["setup"], report["results"]
    off, on = r["ungrouped"], r["grouped"]
    rows = [f"Setup: {s['data']}, batch {s['batch_size']}, preset `{s['preset']}` {' '.join(s['overrides'])}, "
            f"seed {s['seed']}, {s['steps']} timed steps per order after {s['warmup']} warm-up; "
            f"{report['machine']['cpu']}, {report['machine']['threads']} threads, torch {report['machine']['torch']}, "
            f"{report['machine']['date']}.", "",
            "| batches | padded fraction (epoch) | mean over batches | batch pixels / image | median step (s) |",
            "|---|---|---|---|---|"]
    for label, x in (("as drawn (`group_by_aspect=false`)", off), ("grouped (`group_by_aspect=true`)", on)):
        rows.append(f"| {label} | {x['padded_fraction']:.3f} | {x['mean_batch_padded_fraction']:.3f} | "
                    f"{x['pixels_per_image']:.0f} | {x['median_step_s']:.3f} |")
    d = report["summary"]
    rows += ["", f"Grouping: padded fraction {off['padded_fraction']:.3f} -> {on['padded_fraction']:.3f}, batch "
                 f"pixels per image x{d['pixels_ratio']:.3f}, median step x{d['step_ratio']:.3f} (grouped / as drawn)."]
    return "\n".join(rows) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synth", type=int, default=400, help="synthetic training images")
    p.add_argument("--image-size", type=int, default=256, help="synthetic long side (augmentations scaled to it)")
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=40, help="timed training steps per order")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per order first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench", help="where data is generated")
    p.add_argument("--out", type=Path, default=common.RESULTS / "grouped_batches", help="results folder")
    p.add_argument("--quick", action="store_true", help="smoke run: 24 images, cpu_tiny, 2 timed steps")
    p.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = p.parse_args(argv)
    if args.quick:
        args.synth, args.image_size, args.preset, args.steps, args.warmup = 24, 128, "cpu_tiny", 2, 1
        args.overrides = [*args.overrides, "data.num_workers=0"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    overrides = common.sized_data_overrides(args.image_size) + list(args.overrides)
    cfg = common.make_config(args.preset, overrides)
    data = common.synthetic_data(args.work, args.synth, 8, image_size=args.image_size, seed=args.seed)
    train_set, _ = common.datasets(data, cfg)
    groups = train_set.aspect_groups()
    common.seed_everything(args.seed)
    runs = {g: list(epoch_loader(train_set, cfg, args.batch_size, g, args.seed)) for g in (False, True)}
    results = {("grouped" if g else "ungrouped"): padding(b) for g, b in runs.items()}
    common.seed_everything(args.seed)
    c = peers.build("dynamic_detr", cfg, len(train_set.category_ids), args.batch_size)
    times = step_times(c, runs, args.warmup, args.steps)
    for g, t in times.items():
        results["grouped" if g else "ungrouped"].update(median_step_s=statistics.median(t), step_s=t)
    off, on = results["ungrouped"], results["grouped"]
    report = {"setup": {"data": f"synthetic {args.synth} train, {args.image_size} px, "
                                f"{int(groups.sum())} portrait", "preset": args.preset, "overrides": overrides,
                        "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
                        "seed": args.seed, "images": len(train_set), "portrait": int(groups.sum())},
              "machine": common.machine(torch.device("cpu")), "results": results,
              "summary": {"pixels_ratio": on["pixels_per_image"] / off["pixels_per_image"],
                          "step_ratio": on["median_step_s"] / off["median_step_s"],
                          "padded_saved": off["padded_fraction"] - on["padded_fraction"]}}
    md = markdown(report)
    common.write_results(args.out, "grouped_batches", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
