"""`dynamic-detr predict`: detect objects in images, draw them, and write one JSON of detections per image."""

from __future__ import annotations

import argparse
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def register(sub) -> None:
    p = sub.add_parser("predict", help="detect objects in images or folders of images",
                       description="Run a trained model on images. For every input, OUT/<name>.png has the "
                                   "boxes drawn and OUT/<name>.json the detections (xyxy pixels, score, "
                                   "category). Unreadable images and images with an aspect ratio over 100:1 "
                                   "are reported and skipped; the exit code is 1 when any input was skipped. "
                                   "OUT must not be a folder holding inputs (drawn copies would overwrite "
                                   "them): that is refused.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="run folder, .pt checkpoint, .safetensors or an exported .onnx (run with onnxruntime)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created if needed; not the folder of any input)")
    p.add_argument("--threshold", type=float, default=0.3, help="score threshold for drawing and JSON")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="images per forward pass (default: 4)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size of 0 would never flush)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def list_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expanded (non-recursive) to their image files, sorted."""
    from ..errors import UserError

    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def run(args: argparse.Namespace) -> int:
    import torch

    from ..engine.loading import load_model
    from ..engine.predictor import Predictor, check_output_folder
    from ..export.onnx_runner import is_onnx, load_onnx

    files = list_inputs(args.inputs)
    check_output_folder(files, args.out)  # before loading the model: refuse early
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, cfg = load_onnx(args.checkpoint) if is_onnx(args.checkpoint) else load_model(args.checkpoint, device)
    args.out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, cfg, device)
    n_ok, n_dets, failed = predictor.predict_files(files, args.out, args.threshold, args.batch_size)
    print(f"{n_ok} image(s), {n_dets} detection(s) above {args.threshold} written to {args.out}")
    if failed:
        print(f"{len(failed)} input(s) skipped:")
        for line in failed:
            print(f"  {line}")
        return 1
    return 0
