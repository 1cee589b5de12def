"""Tiled inference on large canvases: AP / APs and seconds per image with and without tiling (docs/tiling.md).

The data: the synthetic generator (`data.synthetic.render`) at 1,024-2,048 px canvases holding 8-40 px objects,
20 per 1024 x 1024 px (its object count, size range and size law set for the call): at most 80 on a canvas, so
that COCO's 100 detections per image can find them all. Training images are 256 px crops of such
canvases (boxes clipped to the crop, kept when at least half of a box is inside); the benchmark's val set is whole
canvases. A model (default preset `cpu_demo`, whose training scales never enlarge a 256 px image) is trained on
the crops by the project's trainer (`train.trainer.Trainer`, as `dynamic-detr train` runs it) for `--minutes`,
then evaluated on the val canvases with the same COCO evaluator in four ways:

    plain            each canvas resized to the model's eval size (what `predict` / `eval` do without --tile)
    tiled            --tile 256 --tile-overlap 0.2 (class-wise NMS)
    tiled_full       the same with --tile-full-image
    tiled_weighted   the same with --tile-merge weighted

Seconds per image count the detector's calls only (the PNG decoding is left out).

    .venv/bin/python benchmarks/tiling.py                    # about 8 min of training + data + eval, 2 cores
    .venv/bin/python benchmarks/tiling.py --minutes 20 --train-canvases 80
    .venv/bin/python benchmarks/tiling.py --quick            # smoke run (cpu_tiny, seconds; the test suite)

Writes OUT/tiling.json and OUT/tiling.md; the data and the run folder stay under WORK (reused: a second run with
the same data options does not render again, and `--reuse-model` skips training). Never run it while another job
uses the cores: the time budget and the seconds per image are wall-clock time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import common
from dynamic_detr.data import synthetic
from dynamic_detr.data.coco import CocoDetection
from dynamic_detr.evaluate.metrics import AP_NAMES, CocoEvaluator
from dynamic_detr.fileio import atomic_write_text
from dynamic_detr.model.loading import load_model
from dynamic_detr.predict.predictor import Predictor
from dynamic_detr.predict.tiled_eval import predict_split
from dynamic_detr.predict.tiling import TiledPredictor, TileOptions
from dynamic_detr.train.trainer import Trainer

MIN_VISIBLE = 0.5
"""A box cut by a training crop is kept when at least this fraction of its area is inside the crop."""


# ------------------------------------------------------------------------------------------------ data
@contextlib.contextmanager
def large_canvas_objects(count: int, min_side: int, max_side: int, image_size: int) -> Iterator[None]:
    """The generator set for one canvas: `count` objects, sides `min_side`..`max_side` px, log-uniform."""
    keep = (synthetic.OBJECTS_PER_IMAGE, synthetic.MIN_SIDE, synthetic.MAX_FRACTION, synthetic.SIZE_GAMMA)
    synthetic.OBJECTS_PER_IMAGE = (count, count)
    synthetic.MIN_SIDE = min_side
    synthetic.MAX_FRACTION = max_side / image_size
    synthetic.SIZE_GAMMA = 1.0
    try:
        yield
    finally:
        synthetic.OBJECTS_PER_IMAGE, synthetic.MIN_SIDE, synthetic.MAX_FRACTION, synthetic.SIZE_GAMMA = keep


def render_canvas(args: argparse.Namespace, split: str, index: int):
    """Canvas `index` of `split`: (PIL image, objects), long side drawn in [canvas_min, canvas_max]."""
    rng = np.random.default_rng([args.data_seed, 7, synthetic.SPLITS[split], index])
    size = int(rng.integers(args.canvas[0], args.canvas[1] + 1))
    count = max(1, round(args.density * size * size / 1024**2))
    with large_canvas_objects(count, args.objects[0], args.objects[1], size):
        return synthetic.render(args.data_seed, split, index, size)


def crop_objects(objects: list[dict[str, Any]], x0: int, y0: int, size: int) -> list[dict[str, Any]]:
    """The objects of a crop at (x0, y0): boxes clipped to it, kept when MIN_VISIBLE of the box is inside."""
    out = []
    for obj in objects:
        bx, by, bw, bh = obj["bbox"]
        cx0, cy0 = max(bx, x0), max(by, y0)
        cx1, cy1 = min(bx + bw, x0 + size), min(by + bh, y0 + size)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        inside = (cx1 - cx0) * (cy1 - cy0) / (bw * bh)
        if inside >= MIN_VISIBLE:
            out.append({"category_id": obj["category_id"], "bbox": [cx0 - x0, cy0 - y0, cx1 - cx0, cy1 - cy0],
                        "area": float(obj["area"] * inside)})
    return out


def write_split(root: Path, split: str, samples: list[tuple[Any, list[dict[str, Any]]]]) -> None:
    """`root/<split>/*.png` and `root/annotations/instances_<split>.json` (COCO) from (PIL image, objects)."""
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (image, objects) in enumerate(samples):
        name = f"{i + 1:06d}.png"
        image.save(root / split / name, compress_level=1)
        images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height})
        anns += [{"id": len(anns) + 1 + k, "image_id": i + 1, **obj, "iscrowd": 0} for k, obj in enumerate(objects)]
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(synthetic.CLASSES)]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / "annotations" / f"instances_{split}.json", json.dumps(coco) + "\n")


def crops_of(args: argparse.Namespace, split: str, first: int, canvases: int, per_canvas: int
             ) -> list[tuple[Any, list[dict[str, Any]]]]:
    """`per_canvas` random crops (each with at least one object kept; up to 20 tries) of each of `canvases`."""
    out = []
    for index in range(first, first + canvases):
        image, objects = render_canvas(args, split, index)
        rng = np.random.default_rng([args.data_seed, 11, index])
        for _ in range(per_canvas):
            for _try in range(20):
                x0 = int(rng.integers(0, image.width - args.crop + 1))
                y0 = int(rng.integers(0, image.height - args.crop + 1))
                kept = crop_objects(objects, x0, y0, args.crop)
                if kept:
                    out.append((image.crop((x0, y0, x0 + args.crop, y0 + args.crop)), kept))
                    break
    return out


def make_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(training root: crops in train / val, canvas root: whole canvases in val), rendered once per setting."""
    key = (f"c{args.canvas[0]}-{args.canvas[1]}_o{args.objects[0]}-{args.objects[1]}_d{args.density}_"
           f"crop{args.crop}_seed{args.data_seed}")
    crops, canvases = work / f"crops_{key}_{args.train_canvases}x{args.crops_per_canvas}", \
        work / f"canvases_{key}_{args.val_canvases}"
    if not (crops / "annotations" / "instances_val.json").exists():
        shutil.rmtree(crops, ignore_errors=True)
        print(f"rendering {args.train_canvases} training canvases, {args.crops_per_canvas} crops of "
              f"{args.crop} px each, into {crops}", flush=True)
        write_split(crops, "train", crops_of(args, "train", 0, args.train_canvases, args.crops_per_canvas))
        write_split(crops, "val", crops_of(args, "train", args.train_canvases, 2, args.crops_per_canvas))
    if not (canvases / "annotations" / "instances_val.json").exists():
        shutil.rmtree(canvases, ignore_errors=True)
        print(f"rendering {args.val_canvases} val canvases into {canvases}", flush=True)
        write_split(canvases, "val", [render_canvas(args, "val", i) for i in range(args.val_canvases)])
    return crops, canvases


# ------------------------------------------------------------------------------------------------ train, eval
def train(args: argparse.Namespace, data: Path, run: Path) -> str:
    """Train in `run` (or reuse it with --reuse-model); how the run ended (`TrainResult.status`)."""
    if args.reuse_model and (run / "weights").is_dir():
        print(f"reusing the model in {run}", flush=True)
        return "reused"
    # the preset's epochs stay unless --epochs is given: under a time budget the lr drop comes at
    # lr_drop_epochs / epochs of the minutes (train/schedule.py), so a large epoch cap would drop it at once
    changes = [*args.override] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    cfg = common.make_config(args.preset, changes)
    print(f"training {args.preset} on {data} for {args.minutes} min (at most {cfg.train.epochs} epochs, lr drop "
          f"after {cfg.train.lr_drop_epochs} of them) in {run}", flush=True)
    result = Trainer(cfg, data, run, minutes=args.minutes, overwrite=True, progress=False).fit()
    if result.status not in ("finished", "time budget", "stopped early"):
        raise SystemExit(f"{run}: training ended with status {result.status!r}")
    print(f"training ended: {result.status}", flush=True)
    return result.status


class Timed:
    """A detector whose calls are timed (wall clock, seconds summed)."""

    def __init__(self, detect) -> None:
        self.detect, self.seconds = detect, 0.0

    def __call__(self, images):
        start = time.perf_counter()
        out = self.detect(images)
        self.seconds += time.perf_counter() - start
        return out


def evaluate(detect, canvases: Path) -> dict[str, Any]:
    """AP..APl of `detect` on the val canvases, and its seconds per image."""
    dataset = CocoDetection(canvases, "val")
    timed = Timed(detect)
    dets, skipped = predict_split(timed, dataset)
    evaluator = CocoEvaluator(dataset.coco_gt())
    evaluator.update(dets)
    evaluator.skip_images(skipped)
    metrics = evaluator.summarize()
    return {**{k: metrics[k] for k in AP_NAMES}, "sec_per_image": timed.seconds / max(len(dataset), 1),
            "detections": len(dets)}


def variants(args: argparse.Namespace) -> dict[str, TileOptions | None]:
    tile = TileOptions(args.tile, overlap=args.overlap)
    return {"plain": None, "tiled": tile, "tiled_full": TileOptions(args.tile, args.overlap, full_image=True),
            "tiled_weighted": TileOptions(args.tile, args.overlap, merge="weighted")}


def markdown(report: dict[str, Any]) -> str:
    s, m = report["setup"], report["machine"]
    lines = [f"Setup: preset `{s['preset']}` trained {s['minutes']} min ({s['epochs_done']} epoch(s)) on "
             f"{s['train_crops']} crops of {s['crop']} px from {s['train_canvases']} canvases; evaluated on "
             f"{s['val_canvases']} canvases of {s['canvas'][0]}-{s['canvas'][1]} px ({s['val_objects']} objects of "
             f"{s['objects'][0]}-{s['objects'][1]} px); tile {s['tile']}, overlap {s['overlap']}; {m['cpu']}, "
             f"{m['threads']} threads, {m['date']}.", "",
             "| inference | AP | AP50 | APs | APm | s / image |", "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {common.fmt(r['AP'])} | {common.fmt(r['AP50'])} | {common.fmt(r['APs'])} | "
                     f"{common.fmt(r['APm'])} | {r['sec_per_image']:.2f} |")
    plain, tiled = report["results"]["plain"]["APs"], report["results"]["tiled"]["APs"]
    if plain is not None and tiled is not None and not math.isnan(plain) and not math.isnan(tiled):
        ratio = f"x{tiled / plain:.1f}" if plain >= 0.1 else "plain APs under 0.1"
        lines += ["", f"APs tiled / plain: {ratio} (target: at least x2)."]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu_demo")
    p.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config changes for training")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget (default: 8)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epoch cap (default: the preset's; the time budget's lr drop comes at the preset's "
                        "lr_drop_epochs / epochs of the minutes)")
    p.add_argument("--canvas", type=int, nargs=2, default=[1024, 2048], metavar=("MIN", "MAX"),
                   help="long side of the canvases")
    p.add_argument("--objects", type=int, nargs=2, default=[8, 40], metavar=("MIN", "MAX"), help="object sides")
    p.add_argument("--density", type=float, default=20.0,
                   help="objects per 1024 x 1024 px (default 20: at most 80 on a canvas, under COCO's 100 "
                        "detections scored per image)")
    p.add_argument("--crop", type=int, default=256, help="training crop side")
    p.add_argument("--train-canvases", type=int, default=40)
    p.add_argument("--crops-per-canvas", type=int, default=24)
    p.add_argument("--val-canvases", type=int, default=16)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--reuse-model", action="store_true", help="evaluate the model WORK holds, do not train")
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench")
    p.add_argument("--out", type=Path, default=common.RESULTS / "tiling")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: cpu_tiny, 384-512 px canvases (60 objects per 1024^2), 128 px crops and tiles, "
                        "seconds of training")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.minutes, args.canvas, args.crop, args.tile = "cpu_tiny", 0.05, [384, 512], 128, 128
        args.train_canvases, args.crops_per_canvas, args.val_canvases, args.density = 2, 4, 2, 60.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    work = args.work / ("tiling_quick" if args.quick else "tiling")
    crops, canvases = make_data(args, work)
    run = work / f"run_{args.preset}"
    status = train(args, crops, run)
    model, cfg = load_model(run, torch.device("cpu"))
    predictor = Predictor(model, cfg, torch.device("cpu"))
    results = {}
    for name, options in variants(args).items():
        detect = predictor if options is None else TiledPredictor(predictor, options, batch_size=8)
        results[name] = evaluate(detect, canvases)
        print(f"{name}: AP {common.fmt(results[name]['AP'])}, APs {common.fmt(results[name]['APs'])}, "
              f"{results[name]['sec_per_image']:.2f} s / image", flush=True)
    val = json.loads((canvases / "annotations" / "instances_val.json").read_text())
    history = (run / "results.csv").read_text().strip().splitlines()[1:] if (run / "results.csv").exists() else []
    report = {"setup": {"preset": args.preset, "override": args.override, "minutes": args.minutes,
                        "train_status": status, "epochs_done": len(history), "canvas": args.canvas,
                        "objects": args.objects, "density": args.density, "crop": args.crop,
                        "train_canvases": args.train_canvases,
                        "train_crops": len(json.loads((crops / "annotations" / "instances_train.json")
                                                      .read_text())["images"]),
                        "val_canvases": args.val_canvases, "val_objects": len(val["annotations"]),
                        "tile": args.tile, "overlap": args.overlap, "data_seed": args.data_seed,
                        "eval_size": [cfg.data.eval_short_side, cfg.data.eval_max_size]},
              "machine": common.machine(torch.device("cpu")), "results": results}
    common.write_results(args.out, "tiling", report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
