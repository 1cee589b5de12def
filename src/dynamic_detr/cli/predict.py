"""`dynamic-detr predict`: detect objects in images and videos, draw them, and write the detections as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import add_decoder_stages_arg

if TYPE_CHECKING:
    from ..predict.writer import PredictSummary


def register(sub) -> None:
    p = sub.add_parser("predict", help="detect objects in images, folders, globs, URLs, videos or a webcam",
                       description="Run a trained model on images and videos. SOURCE is an image file; a folder "
                                   "(walked recursively for images, sub-folders mirrored in OUT); a quoted glob "
                                   "(\"data/**/*.jpg\"); an http(s) URL of an image; a video file (needs the "
                                   "video extra: pip install 'dynamic-detr[video]'); or a webcam index (0). "
                                   "For an image, OUT/<name>.png has the boxes drawn and OUT/<name>.json the "
                                   "detections (xyxy pixels, score, category); for a video, OUT/<name>.mp4 and "
                                   "one OUT/<name>.json with a list of frames. Inputs that cannot be read "
                                   "(missing, undecodable, a bad URL, an aspect ratio over 100:1) are reported "
                                   "and skipped. Exit code: 0 all read, 1 any input skipped, 2 nothing could be "
                                   "read (or a usage error), 130 stopped by Ctrl-C (the way to end a webcam; "
                                   "what was written is kept). OUT must not hold any input, at any depth (drawn "
                                   "copies could overwrite them): that is refused.")
    p.add_argument("inputs", nargs="+", metavar="SOURCE",
                   help="image, folder, quoted glob, http(s) URL, video file or webcam index")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="run folder, .pt checkpoint, .safetensors or an exported .onnx (run with onnxruntime)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created if needed; must not hold any input)")
    p.add_argument("--threshold", type=float, default=0.3, help="score threshold for drawing and JSON")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="images per forward pass (default: 4)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    add_decoder_stages_arg(p)
    add_tile_options(p, "--batch-size tiles go through the model at a time")
    p.add_argument("--tile-max-detections", type=_positive_int, default=None, metavar="N",
                   help="with --tile: most detections kept per image after merging (default 100; the model's "
                        "query count caps each tile, this the whole image)")
    p.set_defaults(func=run)


def add_tile_options(p: argparse.ArgumentParser, batching: str) -> None:
    """--tile, --tile-overlap, --tile-full-image, --tile-merge (`predict`, `eval`; docs/tiling.md)."""
    g = p.add_argument_group("tiled inference (docs/tiling.md)")
    g.add_argument("--tile", type=_positive_int, metavar="SIZE",
                   help="cut each image into overlapping SIZE x SIZE tiles at its original resolution, run the "
                        f"model on each (resized to its eval size) and merge the detections; {batching}. For "
                        "small objects on large images")
    g.add_argument("--tile-overlap", type=float, default=None, metavar="F",
                   help="fraction of SIZE shared by neighbouring tiles, in [0, 0.9] (default 0.2)")
    g.add_argument("--tile-full-image", action="store_true",
                   help="also run the whole image (resized as usual) and merge it in: large objects seen whole")
    g.add_argument("--tile-merge", choices=["nms", "weighted"], default=None,
                   help="merge duplicates by class-wise NMS (default) or score-weighted boxes")


def tile_options(args: argparse.Namespace):
    """`TileOptions` from the command line (checked: a UserError naming the option), or None without --tile;
    a --tile-* option without --tile is refused."""
    from ..errors import UserError
    from ..predict.tiling import TileOptions

    if args.tile is None:
        given = [name for name, value in (("--tile-overlap", args.tile_overlap), ("--tile-merge", args.tile_merge),
                                          ("--tile-full-image", args.tile_full_image or None)) if value is not None]
        if given:
            raise UserError(f"{given[0]} needs --tile SIZE")
        return None
    options = TileOptions(size=args.tile, overlap=0.2 if args.tile_overlap is None else args.tile_overlap,
                          full_image=args.tile_full_image, merge=args.tile_merge or "nms")
    options.check({"size": "--tile", "overlap": "--tile-overlap", "merge": "--tile-merge"})
    return options


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
    """Files as given; folders expanded (non-recursive) to their image files, sorted (`export --check`)."""
    from ..data.sources import IMAGE_SUFFIXES
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

    from ..data.sources import iter_items, resolve_sources
    from ..export.onnx_runner import is_onnx, load_onnx
    from ..model.loading import load_model
    from ..predict.predictor import Predictor, check_output_folder
    from ..progress import progress
    from .common import check_decoder_stages, check_out_folder, resolve_device

    device = resolve_device(args.device)
    tiles = tile_options(args)
    if args.tile_max_detections is not None and tiles is None:
        from ..errors import UserError

        raise UserError("--tile-max-detections needs --tile SIZE")
    check_out_folder(args.out)
    sources = resolve_sources(args.inputs, args.out)  # paths only; a video without PyAV stops here
    check_output_folder(sources.local_files(), args.out, nested=True)  # before loading the model: refuse early
    _refuse_empty(sources.missing, bool(sources.sources))
    onnx = is_onnx(args.checkpoint)
    stages = check_decoder_stages(args, onnx)
    model, cfg = load_onnx(args.checkpoint) if onnx else load_model(args.checkpoint, device, decoder_stages=stages)
    args.out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model, cfg, device)
    items = progress(iter_items(sources.sources), "predict", sources.total, unit="img")
    if tiles is None:
        summary = predictor.predict_items(items, args.out, args.threshold, args.batch_size)
    else:  # one image at a time, its tiles --batch-size at a time; boxes under the threshold are not merged
        from ..predict.tiling import TiledPredictor
        from ..predict.writer import write_predictions

        tiled = TiledPredictor(predictor, tiles, batch_size=args.batch_size, min_score=args.threshold,
                               top_k=args.tile_max_detections or 100)
        summary = write_predictions(tiled, predictor.names, items, args.out, args.threshold, batch_size=1)
    return _report(summary, sources.missing, args.threshold, args.out)


def _refuse_empty(missing: list[str], found: bool) -> None:
    """Nothing to read at all: one line, before the model loads."""
    from ..errors import UserError

    if not found:
        more = f" (and {len(missing) - 1} more input(s) naming nothing)" if len(missing) > 1 else ""
        raise UserError(f"nothing to predict: {missing[0]}{more}")


def _report(summary: PredictSummary, missing: list[str], threshold: float, out: Path) -> int:
    """Print what was written and what was skipped; the exit code (0 all read, 1 some skipped, 2 none read,
    130 interrupted)."""
    videos = f", {summary.videos} video(s) ({summary.frames} frame(s))" if summary.videos else ""
    print(f"{summary.images} image(s){videos}, {summary.detections} detection(s) above {threshold} "
          f"written to {out}")
    skipped = missing + summary.failed
    if skipped:
        print(f"{len(skipped)} input(s) skipped:")
        for line in skipped:
            print(f"  {line}")
    if summary.interrupted:
        print("interrupted: what was written is kept (an open video closed where it stopped)", file=sys.stderr)
        return 130
    if summary.images + summary.frames == 0:
        print("nothing could be read", file=sys.stderr)
        return 2
    return 1 if skipped else 0
