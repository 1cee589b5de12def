"""Inference-time decoder depth: AP and latency of a trained model run with its first N decoder stages.

Every stage is supervised in training (deep supervision), so every stage's heads can give the detections; RT-DETR
adjusts its decoder depth at inference the same way. For N = 1 .. num_stages, the same weights
(`--decoder-stages N` of predict / eval / export / serve, `model.decoder.eval_stages`): COCO AP on the val split
(eval resize, padded batches, as `dynamic-detr eval`) and the batch-1 latency of forward + postprocess on the
first val image (median of `--reps` runs after `--warmup`), in float32. Never run it while another job uses the
cores: the latency is wall-clock time.

    .venv/bin/python benchmarks/decoder_depth.py --checkpoint runs/demo --data runs/demo_data \\
        --out benchmarks/results/decoder_depth/cpu_demo
    .venv/bin/python benchmarks/decoder_depth.py --quick     # smoke run (the test suite calls it): random cpu_tiny

Writes `<out>/decoder_depth.json` and `.md`; docs/benchmarks.md has the measured figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from export_ap import AP_KEYS, model_and_data


def run(checkpoint: Path, data: Path, batch: int, workers: int, warmup: int, reps: int) -> dict:
    from dynamic_detr.data.coco import CocoDetection
    from dynamic_detr.data.collate import build_loader
    from dynamic_detr.data.sampler import SeededDataset
    from dynamic_detr.data.transforms import build_transforms
    from dynamic_detr.evaluate.inference import evaluate_model
    from dynamic_detr.model.loading import load_model

    device = torch.device("cpu")
    model, cfg = load_model(checkpoint, device)
    d, num = cfg.data, cfg.model.decoder.num_stages
    dataset = CocoDetection(data, d.val_split)
    names = dict(zip(dataset.category_ids, dataset.class_names, strict=True))
    gt = dataset.coco_gt()
    transform = build_transforms(d, train=False)
    image, _ = SeededDataset(dataset, transform)[0]  # one eval-resized val image for the latency
    h, w = image.shape[-2:]
    pad = d.size_divisibility
    images = torch.zeros(1, 3, -(-h // pad) * pad, -(-w // pad) * pad)
    images[0, :, :h, :w] = image
    masks = torch.ones(1, *images.shape[-2:], dtype=torch.bool)
    masks[0, :h, :w] = False
    sizes = torch.tensor([[h, w]])

    rows = []
    for n in range(1, num + 1):
        model.set_eval_stages(n)
        loader = build_loader(SeededDataset(dataset, transform), batch, train=False, num_workers=workers,
                              size_divisibility=pad)
        metrics, _ = evaluate_model(model, loader, gt, names, device)

        def forward() -> None:
            with torch.no_grad():
                model.postprocess(model(images, masks), sizes)

        ms = 1000 * common.median_seconds(forward, device, warmup, reps)
        rows.append({"stages": n, **{k: round(metrics[k], 2) for k in AP_KEYS}, "latency_ms": round(ms, 1)})
        print(f"{n} stage(s): AP {rows[-1]['AP']:.1f}, {ms:.1f} ms")
    full = rows[-1]
    for r in rows:
        r["AP_vs_all"] = round(r["AP"] - full["AP"], 2)
        r["latency_vs_all"] = round(r["latency_ms"] / full["latency_ms"], 3)
    return {"checkpoint": str(checkpoint), "data": str(data), "split": d.val_split, "images": len(dataset),
            "preset": cfg.name, "num_stages": num, "input": [int(h), int(w)], "batch": batch, "reps": reps,
            "date": time.strftime("%Y-%m-%d"), "machine": common.machine(device), "results": rows}


def markdown(res: dict) -> str:
    h, w = res["input"]
    lines = [f"{res['preset']} ({res['checkpoint']}), {res['images']} {res['split']} images of {res['data']}; "
             f"latency: batch 1, {h}x{w}, forward + postprocess, median of {res['reps']}, float32, "
             f"{res['machine'].get('cpu', '')}, {res['date']}",
             "", "| decoder stages | " + " | ".join(AP_KEYS) + " | AP vs all | latency (ms) | vs all |",
             "|---|" + "---|" * (len(AP_KEYS) + 3)]
    lines += [f"| {r['stages']} | " + " | ".join(f"{r[k]:.1f}" for k in AP_KEYS)
              + f" | {r['AP_vs_all']:+.1f} | {r['latency_ms']:.1f} | x{r['latency_vs_all']:.2f} |"
              for r in res["results"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained model (run folder, .pt, .safetensors, model folder)")
    p.add_argument("--data", type=Path, help="dataset folder (the model config's val split is used)")
    p.add_argument("--batch", type=int, default=4, help="eval batch size for AP")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30, help="timed batch-1 runs per depth")
    p.add_argument("--out", type=Path, default=common.RESULTS / "decoder_depth", help="folder for the results")
    p.add_argument("--quick", action="store_true", help="random cpu_tiny on 4 synthetic images (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.warmup, args.reps = 0, 1
    with tempfile.TemporaryDirectory() as tmp:
        res = run(*model_and_data(p, args, Path(tmp)), args.batch, args.workers, args.warmup, args.reps)
    common.write_results(args.out, "decoder_depth", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
