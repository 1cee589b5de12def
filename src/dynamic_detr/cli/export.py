"""`dynamic-detr export`: an ONNX graph (post-processing included) and an optional onnxruntime parity check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_decoder_stages_arg


def register(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX",
                       description="Write an ONNX graph taking letterboxed images [B, 3, H, W] float in [0, 1] "
                                   "(eval-resized with the aspect kept, top-left, zero-padded to H x W), "
                                   "valid_sizes [B, 2] int64 (h, w of the image inside) and orig_sizes [B, 2] int64 "
                                   "(h, w of the file), returning boxes [B, K, 4] xyxy in original pixels, scores "
                                   "[B, K] and labels [B, K] (dataset category ids): top-K, no NMS, no threshold. "
                                   "The config travels in the graph's metadata: `predict` and `eval` take the "
                                   ".onnx as --checkpoint. EMA weights are exported when present. Deformable convs "
                                   "become ONNX DeformConv (opset 19+) unless --portable.")
    p.add_argument("--checkpoint", required=True, type=Path, help="run folder, .pt checkpoint or .safetensors")
    p.add_argument("--out", required=True, type=Path, help="output .onnx file")
    p.add_argument("--opset", type=int, default=19, help="ONNX opset (default 19; DeformConv needs 19+)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                   help="graph input (letterbox canvas) size (default: the eval max size, rounded up to "
                        "data.size_divisibility, on both sides: every eval-resized image fits as it is; an image "
                        "that does not fit a smaller canvas is shrunk to fit)")
    p.add_argument("--dynamic", action="store_true", help="free batch dimension (H and W stay fixed)")
    p.add_argument("--batch", type=int, default=1,
                   help="the graph's fixed batch size without --dynamic (default 1; for runtimes that need static "
                        "shapes: `predict` and `eval` fill a last, shorter batch with blank images)")
    p.add_argument("--portable", action="store_true",
                   help="deformable convs as GridSample + MatMul, for runtimes without DeformConv")
    add_decoder_stages_arg(p)
    p.add_argument("--top-k", type=int, default=100, help="detections per image (default 100)")
    p.add_argument("--check", action="store_true",
                   help="run onnxruntime and PyTorch on the same images, print their largest differences and exit 1 "
                        "when they are out of tolerance")
    p.add_argument("--box-tol", type=float, metavar="PX",
                   help="--check: largest box difference allowed (default 1 px)")
    p.add_argument("--score-tol", type=float, help="--check: largest score difference allowed (default 1e-3)")
    p.add_argument("--min-label-agreement", type=float, metavar="PERCENT",
                   help="--check: labels that must agree, position by position (default 100)")
    p.add_argument("--data", type=Path,
                   help="images for --check: an image folder or a COCO dataset folder (its val split); "
                        "random images when omitted")
    p.set_defaults(func=run)


def default_image_size(max_size: int, size_divisibility: int = 32) -> tuple[int, int]:
    """A square canvas that holds every eval-resized image (no side exceeds the eval max size), so the graph
    sees each image exactly as PyTorch eval does."""
    side = -(-max_size // size_divisibility) * size_divisibility if size_divisibility > 1 else max_size
    return side, side


def _check_files(data: Path | None, val_split: str) -> list[Path]:
    from ..errors import UserError
    from .predict import list_inputs

    if data is None:
        return []
    folder = data / val_split if (data / val_split).is_dir() else data
    if not folder.is_dir():
        raise UserError(f"{data}: no such folder")
    return list_inputs([folder])


def run(args: argparse.Namespace) -> int:
    from ..export.onnx_export import (
        BOX_TOL_PX,
        MIN_LABEL_AGREEMENT,
        SCORE_TOL,
        Parity,
        check_images,
        compare,
        export_onnx,
    )
    from ..model.loading import load_model

    model, cfg = load_model(args.checkpoint, "cpu", decoder_stages=args.decoder_stages)
    size = tuple(args.image_size) if args.image_size else default_image_size(cfg.data.eval_max_size,
                                                                           cfg.data.size_divisibility)
    wrapper = export_onnx(model, args.out, size, opset=args.opset, portable=args.portable,
                          dynamic_batch=args.dynamic, top_k=args.top_k, batch=args.batch)
    mode = "portable (GridSample)" if args.portable else "native (DeformConv)"
    batch = "dynamic batch" if args.dynamic else f"batch {args.batch}"
    print(f"wrote {args.out}: {mode}, opset {args.opset}, input {batch} x {size[0]}x{size[1]} (letterbox)")
    if args.check:
        files = _check_files(args.data, cfg.data.val_split)
        images, valid, sizes = check_images(files, cfg.data, size, count=4)
        if args.dynamic:
            parity = compare(wrapper, args.out, images, valid, sizes)
        else:  # a fixed-batch graph: images repeated up to its batch, one at a time
            n = args.batch
            parity = Parity.merge([compare(wrapper, args.out, images[i:i + 1].repeat(n, 1, 1, 1),
                                           valid[i:i + 1].repeat(n, 1), sizes[i:i + 1].repeat(n, 1))
                                   for i in range(len(images))])
        where = f"{len(images)} image(s) of {args.data}" if files else f"{len(images)} random image(s)"
        print(f"onnxruntime vs PyTorch on {where}: {parity.line()}")
        box = BOX_TOL_PX if args.box_tol is None else args.box_tol
        score = SCORE_TOL if args.score_tol is None else args.score_tol
        labels = MIN_LABEL_AGREEMENT if args.min_label_agreement is None else args.min_label_agreement / 100
        tolerance = (f"tolerance: boxes within {box:g} px, scores within {score:g}, labels agreeing >= "
                     f"{100 * labels:g}%")
        failures = parity.failures(box, score, labels)
        if failures:
            print(f"error: parity check failed: {'; '.join(failures)} ({tolerance}; --box-tol, --score-tol, "
                  f"--min-label-agreement); {args.out} was written but does not compute what the PyTorch model "
                  "does", file=sys.stderr)
            return 1
        print(f"parity check passed ({tolerance})")
    return 0
