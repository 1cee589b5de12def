"""`dynamic-detr eval`: COCO metrics of a trained model on a dataset split."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .common import add_decoder_stages_arg
from .predict import add_tile_options, tile_options

if TYPE_CHECKING:
    from ..config import DataConfig


def register(sub) -> None:
    p = sub.add_parser("eval", help="COCO bbox metrics of a checkpoint on a dataset split",
                       description="Evaluate a checkpoint (run folder, .pt or .safetensors) with the standard "
                                   "COCO metrics (pycocotools); detections are never thresholded.")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="run folder, .pt checkpoint, .safetensors or an exported .onnx (run with onnxruntime)")
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--out", type=Path, help="write metrics JSON here")
    p.add_argument("--save-detections", type=Path, metavar="DETS_JSON",
                   help="write detections in COCO results format (the dataset's own ids)")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="write the error analysis here: precision-recall curves, confusion matrix, TIDE-style "
                        "error breakdown, ground truth beside predictions (docs/analysis.md)")
    p.add_argument("--plot-threshold", type=float, default=0.3, metavar="T",
                   help="score threshold of the confusion matrix and the drawn predictions (default 0.3; the "
                        "curves and the error breakdown use every detection)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--raw", action="store_true", help="use the raw weights even when the checkpoint has EMA")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    add_decoder_stages_arg(p)
    add_tile_options(p, "each image of the split is read at its original size (not through the eval loader), "
                        "its tiles --batch-size at a time")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    from ..errors import UserError
    from .common import check_at_least, check_decoder_stages, check_out_folder, resolve_device

    if not 0 <= args.plot_threshold <= 1:
        raise UserError(f"--plot-threshold must be in [0, 1], got {args.plot_threshold}")
    check_at_least(args.batch_size, 1, "--batch-size")
    check_at_least(args.workers, 0, "--workers")
    if args.plots:
        check_out_folder(args.plots, "--plots")
    tiles = tile_options(args)
    if tiles is not None and args.amp != "none":
        raise UserError("--amp is not used with --tile (tiles run in float32): leave it out")
    device = resolve_device(args.device)

    from ..data.coco import CocoDetection
    from ..data.layout import split_source
    from ..data.loaders import eval_loader
    from ..evaluate.inference import evaluate_model
    from ..evaluate.metrics import format_table, metrics_json
    from ..export.onnx_runner import is_onnx, load_onnx
    from ..fileio import atomic_write_json, atomic_write_text
    from ..model.loading import load_model

    onnx = is_onnx(args.checkpoint)
    stages = check_decoder_stages(args, onnx)
    model, cfg = (load_onnx(args.checkpoint) if onnx
                  else load_model(args.checkpoint, device, prefer_ema=not args.raw, decoder_stages=stages))
    split = args.split or cfg.data.val_split
    source = split_source(args.data, split, data_section_for(cfg.data, args.data))
    print(f"evaluating split '{split}' of {args.data}: {source.layout}, {source.ann_file}")
    dataset = CocoDetection(args.data, split, source=source)
    if cfg.model.category_ids and set(cfg.model.category_ids) - set(dataset.category_ids):
        missing = sorted(set(cfg.model.category_ids) - set(dataset.category_ids))[:5]
        print(f"warning: the model predicts category ids the dataset does not have (e.g. {missing})")
    names = dict(zip(dataset.category_ids, dataset.class_names, strict=True))
    keep: dict = {}
    if tiles is None:
        loader = eval_loader(dataset, cfg.data, args.batch_size, num_workers=args.workers)
        metrics, dets = evaluate_model(model, loader, dataset.coco_gt(), names, device, args.amp, keep=keep,
                                       desc="eval")
    else:  # the split's images at their original size, one at a time (the eval loader would resize them)
        from ..predict.predictor import Predictor
        from ..predict.tiled_eval import evaluate_tiled
        from ..predict.tiling import TiledPredictor

        tiled = TiledPredictor(Predictor(model, cfg, device), tiles, batch_size=args.batch_size)
        metrics, dets = evaluate_tiled(tiled, dataset, names, keep=keep, desc="eval (tiled)")
    assert metrics is not None
    print(format_table(metrics))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, metrics_json(metrics))
        print(f"metrics written to {args.out}")
    if args.save_detections:
        args.save_detections.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.save_detections, json.dumps(dets))
        print(f"{len(dets)} detections written to {args.save_detections}")
    if args.plots:
        from ..evaluate.analysis import write_analysis
        from ..evaluate.error_breakdown import format_errors
        from ..visualize import dataset_images

        summary = write_analysis(args.plots, keep["evaluator"], dataset_images(dataset, 8), args.plot_threshold)
        print()
        print(format_errors(summary["errors"]))
        print(f"error analysis written to {args.plots}")
    return 0


def data_section_for(data: DataConfig, root: Path) -> DataConfig:
    """The checkpoint's data section for a dataset given with `--data`: its absolute annotation / image paths
    (`data.*_ann`, `data.*_images` of the training machine) are dropped unless they lie under `root`, so that
    the dataset named on the command line is the one evaluated; relative ones are relative to `root` anyway."""
    out = copy.deepcopy(data)
    base = root.expanduser().resolve()
    for name in ("train_ann", "train_images", "val_ann", "val_images"):
        path = Path(getattr(out, name)).expanduser()
        if path.is_absolute() and not path.resolve().is_relative_to(base):  # "" is Path("."): relative
            setattr(out, name, "")
    return out
