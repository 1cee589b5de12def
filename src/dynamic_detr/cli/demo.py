"""`dynamic-detr demo`: everything end to end on the synthetic dataset.

Generates the dataset if missing (and checks it), trains `cpu_demo` within a time budget, evaluates with
the COCO metrics, draws predictions on validation images, and prints where everything is.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_TRAIN_IMAGES = 1000
DEMO_VAL_IMAGES = 200
DEMO_IMAGE_SIZE = 256
"""Long side of the demo's images: cpu_small's data section is sized for it; 58% of the objects are
COCO-small (area < 32^2) at this size."""
DEMO_PRESET = "cpu_demo"
"""The demo trains `cpu_demo`: cpu_small without the dynamic encoder and with a lighter dense head and decoder,
the cuts that pay in a budget of minutes (docs/recipe.md says what each measured). `dynamic-detr demo --preset
cpu_small` trains the whole model, encoder included."""
DEMO_OVERRIDES = ["train.eval_every=1000"]
"""Evaluate once, at the end of the budget: every evaluation of the 200 val images during the run would be
time taken from training."""


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthetic data -> train cpu_demo -> evaluate -> draw, end to end",
                       description="End to end on the synthetic shapes dataset. --minutes is the whole "
                                   "budget: training gets what the data generation and evaluation leave.")
    p.add_argument("--minutes", type=float, default=10.0, help="total time budget (default: 10)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default: runs/demo)")
    p.add_argument("--data", type=Path, help="dataset folder (default: OUT/data, generated if missing)")
    p.add_argument("--preset", default=DEMO_PRESET, help=f"preset to train (default: {DEMO_PRESET})")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import apply_overrides, get_preset
    from ..data.check import check_dataset
    from ..data.records import annotation_path
    from ..data.synthetic import generate
    from ..errors import UserError
    from ..evaluate.metrics import format_table
    from ..train.trainer import Trainer
    from .common import check_out_folder, resolve_device

    resolve_device(args.device)  # checked here: the trainer takes the name
    check_out_folder(args.out)
    start = time.perf_counter()
    data = args.data or args.out / "data"
    if not all(annotation_path(data, s).exists() for s in ("train", "val")):
        print(f"[1/4] generating the synthetic dataset in {data} "
              f"({DEMO_TRAIN_IMAGES} train / {DEMO_VAL_IMAGES} val images, {DEMO_IMAGE_SIZE} px)", flush=True)
        generate(data, train=DEMO_TRAIN_IMAGES, val=DEMO_VAL_IMAGES, image_size=DEMO_IMAGE_SIZE, seed=0)
    else:
        print(f"[1/4] using the dataset in {data}", flush=True)
    for split in ("train", "val"):
        report = check_dataset(data, split, decode=False)
        print(report.summary())
        if not report.ok:
            raise UserError(f"{data}: dataset check failed: {report.errors[0]}")

    cfg = apply_overrides(get_preset(args.preset), [*DEMO_OVERRIDES, *args.overrides])
    run_dir = args.out / "run"
    spent = (time.perf_counter() - start) / 60
    # keep ~7% of the budget for the one evaluation, the final drawing and start-up (measured: 0.35 min of a
    # 10-minute demo after training ends)
    train_minutes = max(0.5, (args.minutes - spent) * 0.93)
    resume = (run_dir / "last.pt").exists()
    encoder = "" if cfg.model.encoder.enabled else ", dynamic encoder off (model.encoder.enabled=true turns it on)"
    print(f"[2/4] training {cfg.name}{encoder} for {train_minutes:.1f} min in {run_dir}"
          f"{' (resuming)' if resume else ''}", flush=True)
    # the demo has one run folder: it resumes the run there, or starts over (an earlier run that left no
    # checkpoint is cleared first, so that nothing mixes); it never moves to run2
    trainer = Trainer(cfg, data, run_dir, minutes=train_minutes, resume=resume, device=args.device,
                      overrides=list(args.overrides or []), overwrite=not resume)
    result = trainer.fit()
    if result.status == "interrupted":
        print(f"interrupted; `dynamic-detr demo --out {args.out}` resumes from {run_dir / 'last.pt'}")
        return 130
    print("[3/4] evaluation on the val split (COCO metrics, all detections, no threshold)")
    if result.metrics is None:
        raise UserError(f"{run_dir}: training ended without an evaluation ({result.status})")
    print(format_table(result.metrics))

    print("[4/4] drawing predictions on validation images", flush=True)
    from ..model.loading import load_model
    from ..predict.predictor import Predictor

    pred_dir = args.out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    model, run_cfg = load_model(run_dir / "best.pt", trainer.device)
    files = sorted((data / cfg.data.val_split).glob("*.png"))[:12]
    Predictor(model, run_cfg, trainer.device).predict_files(files, pred_dir, threshold=0.4)
    total = (time.perf_counter() - start) / 60
    m = result.metrics
    print(f"\ndone in {total:.1f} min: AP {m['AP']:.1f}, AP50 {m['AP50']:.1f}, APs {m['APs']:.1f} "
          f"after {result.epochs_done} epoch(s)")
    print(f"  dataset        {data}")
    print(f"  run folder     {run_dir}  (config.yaml, results.csv, best.pt, last.pt, tensorboard/)")
    print(f"  metrics        {run_dir / 'metrics.json'}")
    print(f"  curves         {run_dir / 'plots'}  (loss.png, ap.png, val_predictions.png)")
    print(f"  predictions    {pred_dir}  (<image>.png drawn, <image>.json detections)")
    return 0
