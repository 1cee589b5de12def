"""Speed: training throughput, inference latency / throughput, peak memory, parameters, GFLOPs and the
achieved fraction of this machine's matmul throughput, for our presets and the peers at matched sizes.

Every (preset, contender) pair is measured in a fresh child process (so that its peak memory is its own) on
the same fixed batch of synthetic images at the preset's eval size: a training step (forward, loss with
Hungarian matching where the model has one, backward, optimiser step) at `--batch` images, inference at
batch 1 and at `--batch`. Times are medians of `--reps` runs after warm-up, synchronised on CUDA. FLOPs are
counted by `torch.utils.flop_counter` (convolutions, matmuls, attention, deformable conv, RoIAlign; the
sampling ops grid_sample / roi_align's bilinear weights are not FLOPs there), so "of peak" is counted FLOPs
per second over the fp32 matmul rate measured at the start of the same run. Peak memory (process peak RSS on
CPU, `max_memory_allocated` on CUDA) is read after the timed runs and before the FLOP-counting passes, which
hold more than a plain step (the checkpointed contender's peak was 1.3x higher with them); `start_mb` is the
memory before the first step (CPU: the RSS of Python, torch, the libraries, the model and the batch).

    .venv/bin/python benchmarks/speed.py                          # cpu_small and cpu_tiny vs peers (~8 min
                                                                  # before RT-DETR and D-FINE-N joined)
    .venv/bin/python benchmarks/speed.py --presets paper_r50 --device cuda --image-size 800 1216
    .venv/bin/python benchmarks/speed.py --presets cpu_small --only dynamic_detr hf_rtdetr_r18 hf_dfine_n hf_dfine_s
    .venv/bin/python benchmarks/speed.py --quick                  # smoke run (the test suite calls it)

Writes `<out>/speed.json` and `speed.md`. Never run it while another job uses the cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import peers
from dynamic_detr.model.info import flop_counter


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """This machine's fp32 matmul rate (GFLOP/s): median of `reps` n x n products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = common.now(device)
        a @ b
        times.append(common.now(device) - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def fixed_batch(cfg, data: Path, batch_size: int, device: torch.device):
    """The first `batch_size` val images at the preset's eval size, with their boxes (deterministic)."""
    from dynamic_detr.data.coco import CocoDetection

    val_set = CocoDetection(data, cfg.data.val_split)
    return next(iter(common.loader(val_set, cfg, False, batch_size, 0))).to(device)


def _memory_mb(device: torch.device) -> float | None:
    """Memory in use now: CUDA allocated, or this process's resident set (Linux /proc; None elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * resource.getpagesize() / 2**20


def measure(preset: str, name: str, args) -> dict[str, Any]:
    """One contender at one preset; runs in its own process."""
    device = common.pick_device(args.device)
    overrides = ["data.num_workers=0"]
    if args.image_size:
        overrides += [f"data.eval_short_side={min(args.image_size)}", f"data.eval_max_size={max(args.image_size)}"]
    cfg = common.make_config(preset, overrides)
    data = Path(args.data_dir)
    common.seed_everything(0)
    c = peers.build(name, cfg, num_classes=6, batch_size=args.batch,
                    settings=peers.peer_settings(args.peer_set).get(name))
    c.model.to(device)
    batch = fixed_batch(cfg, data, args.batch, device)
    one = fixed_batch(cfg, data, 1, device)
    params = [p for g in c.optimizer.param_groups for p in g["params"]]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_mb = _memory_mb(device)

    def train_step() -> None:
        c.model.train()
        loss = c.loss(batch)
        c.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, c.clip if c.clip > 0 else float("inf"))
        c.optimizer.step()

    def infer(b) -> None:
        c.model.eval()
        with torch.no_grad():
            c.detect(b)

    train_s = common.median_seconds(train_step, device, args.warmup, args.reps)
    lat_s = common.median_seconds(lambda: infer(one), device, args.warmup, args.reps * 2)
    thr_s = common.median_seconds(lambda: infer(batch), device, args.warmup, args.reps)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with flop_counter() as counter:
        train_step()
    train_flops = counter.get_total_flops()
    # grad mode: FlopCounterMode's module tracker fails on views made under no_grad, and nn.MultiheadAttention's
    # fused eval path (no_grad only) is invisible to it (model/info.py does the same)
    c.model.eval()
    with torch.enable_grad(), flop_counter() as counter:
        c.detect(one)
    infer_flops = counter.get_total_flops()
    return {"preset": preset, "name": name, "label": peers.LABELS[name], "params": c.params(),
            "image_size": list(batch.images.shape[-2:]), "batch": args.batch,
            "train_img_s": args.batch / train_s, "train_step_s": train_s, "train_gflop_step": train_flops / 1e9,
            "latency_ms": lat_s * 1000, "infer_img_s": args.batch / thr_s, "gflops": infer_flops / 1e9,
            "train_gflop_s": train_flops / 1e9 / train_s, "peak_mb": peak_mb, "start_mb": start_mb,
            "memory": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}


def table(rows: list[dict[str, Any]], peak: float) -> str:
    out = ["| preset | model | params (M) | GFLOPs (1 img) | train img/s | of peak (train) | latency b1 (ms) "
           "| infer img/s (b{b}) | peak mem (MB) |".format(b=rows[0]["batch"] if rows else 8),
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['preset']} | {r['label']} | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} | "
                   f"{r['train_img_s']:.2f} | {100 * r['train_gflop_s'] / peak:.0f}% | {r['latency_ms']:.0f} | "
                   f"{r['infer_img_s']:.2f} | {r['peak_mb']:.0f} |")
    return "\n".join(out)


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """Ours divided by each peer at the same preset (>1 = ours faster / lighter, for latency and memory
    the peer's over ours)."""
    out = ["| preset | vs | train img/s | latency b1 | infer img/s | peak mem |", "|---|---|---|---|---|---|"]
    for ours in (r for r in rows if r["name"] == "dynamic_detr"):
        for p in (r for r in rows if r["preset"] == ours["preset"] and r["name"] not in peers.OURS):
            out.append(f"| {ours['preset']} | {p['label']} | x{ours['train_img_s'] / p['train_img_s']:.2f} | "
                       f"x{p['latency_ms'] / ours['latency_ms']:.2f} | x{ours['infer_img_s'] / p['infer_img_s']:.2f} "
                       f"| x{p['peak_mb'] / ours['peak_mb']:.2f} |")
    return "\n".join(out)


def cost_table(rows: list[dict[str, Any]]) -> str:
    """What the recipe costs: each of our contenders over the paper's model (`faithful`) at the same preset
    (>1 = slower / heavier than the paper's model)."""
    out = ["| preset | model | train step | latency b1 | infer img/s | peak mem |", "|---|---|---|---|---|---|"]
    for base in (r for r in rows if r["name"] == "faithful"):
        for r in (r for r in rows if r["preset"] == base["preset"] and r["name"] in peers.OURS and r is not base):
            out.append(f"| {r['preset']} | {r['label']} | x{r['train_step_s'] / base['train_step_s']:.2f} | "
                       f"x{r['latency_ms'] / base['latency_ms']:.2f} | x{r['infer_img_s'] / base['infer_img_s']:.2f} "
                       f"| x{r['peak_mb'] / base['peak_mb']:.2f} |")
    return "\n".join(out) if len(out) > 2 else ""


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["cpu_small", "cpu_tiny"])
    p.add_argument("--only", nargs="+", choices=peers.CHOICES,
                   help="contenders (default: ours and every peer but "
                        f"{', '.join(peers.EXTRA_PEERS)}; any rung of the recipe ladder or ablation too)")
    p.add_argument("--peer-set", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="change one of a peer's settings (peers.SETTINGS), e.g. hf_rtdetr_r18.size=preset "
                        "(repeatable); RT-DETR and D-FINE are measured at their official sizes by default")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("SHORT", "LONG"),
                   help="eval size (default: each preset's eval_short_side / eval_max_size)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench")
    p.add_argument("--out", type=Path, default=common.RESULTS)
    p.add_argument("--quick", action="store_true", help="smoke run: cpu_tiny, batch 2, 1 rep")
    p.add_argument("--worker", nargs=2, metavar=("PRESET", "NAME"), help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.batch, args.warmup, args.reps = ["cpu_tiny"], 2, 1, 1
        args.peer_set = [*peers.QUICK_PEER_SETTINGS, *args.peer_set]
    try:
        peers.peer_settings(args.peer_set)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:  # child: one measurement, JSON on the last stdout line
        print(json.dumps(measure(*args.worker, args)))
        return 0
    device = common.pick_device(args.device)
    data = common.synthetic_data(args.work, 0, max(args.batch, 8), image_size=320, seed=0)
    peak = matmul_gflops(device)
    print(f"fp32 matmul: {peak:.0f} GFLOP/s on {device}", flush=True)
    rows = []
    for preset in args.presets:
        for name in args.only or ["dynamic_detr", *peers.PEERS]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", preset, name, "--data-dir", str(data),
                   "--batch", str(args.batch), "--warmup", str(args.warmup), "--reps", str(args.reps),
                   "--device", args.device]
            if args.image_size:
                cmd += ["--image-size", *map(str, args.image_size)]
            for item in args.peer_set:
                cmd += ["--peer-set", item]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"speed: {preset} / {name} failed (exit {proc.returncode})")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{preset:10s} {row['label']:36s} train {row['train_img_s']:6.2f} img/s, latency "
                  f"{row['latency_ms']:7.1f} ms, infer {row['infer_img_s']:6.2f} img/s, {row['peak_mb']:.0f} MB",
                  flush=True)
    report = {"machine": common.machine(device), "matmul_gflops": peak,
              "setup": {"batch": args.batch, "warmup": args.warmup, "reps": args.reps, "presets": args.presets,
                        "image_size": args.image_size, "peer_settings": args.peer_set}, "results": rows}
    md = (f"{report['machine']['cpu']}, {report['machine']['threads']} threads, {device}; fp32 matmul "
          f"{peak:.0f} GFLOP/s; torch {report['machine']['torch']}; {report['machine']['date']}.\n\n"
          f"{table(rows, peak)}\n\nRatios, ours over each peer (>1: ours better):\n\n{ratio_table(rows)}\n")
    if cost_table(rows):
        md += f"\nOur contenders over the paper's model (`faithful`; >1: slower / heavier):\n\n{cost_table(rows)}\n"
    common.write_results(args.out, "speed", report, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
