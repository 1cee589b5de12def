"""`dynamic-detr data synth | check | show | convert`: generate the synthetic dataset, lint a dataset (COCO, Roboflow,
YOLO, Pascal VOC), draw it, convert it to the standard COCO layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.layout import FORMATS, SplitSource, find_splits, resolve_split
from ..errors import UserError
from .common import add_config_args, check_at_least, check_out_folder, resolve_config

IMAGE_MODES = ("copy", "symlink", "hardlink")
"""`data convert --image-files` (data.convert.IMAGE_MODES; not imported here: numpy at start-up)."""

MAX_LISTED = 20
"""Findings printed per kind unless --all."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="generate, check or draw a COCO-format dataset",
        description="Generate the synthetic shapes dataset, lint a COCO dataset, or draw its boxes.")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = sub.add_parser(
        "synth", help="write the deterministic synthetic shapes dataset (COCO layout)",
        description="Write DIR/annotations/instances_{train,val}.json and DIR/{train,val}/*.png: six shape "
                    "classes on cluttered backgrounds, 2-8 objects per image (docs/data.md).")
    synth.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    synth.add_argument("--train", type=int, default=1000, metavar="N", help="training images (default: 1000)")
    synth.add_argument("--val", type=int, default=200, metavar="N", help="validation images (default: 200)")
    synth.add_argument("--image-size", type=int, default=320, metavar="S",
                       help="long side of every image in pixels (default: 320)")
    synth.add_argument("--seed", type=int, default=0, metavar="K",
                       help="seed; same seed, same bytes (default: 0)")
    synth.set_defaults(func=_synth)

    check = sub.add_parser(
        "check", help="lint a dataset (COCO, Roboflow, YOLO, Pascal VOC) and print a summary",
        description="Validate DIR/annotations/instances_<split>.json (or the split's Roboflow COCO export, YOLO "
                    "labels, Pascal VOC xml: docs/data.md) and decode every image. Exit code 0: clean (warnings "
                    "allowed); 1: errors found; 2: not a usable dataset at all.")
    check.add_argument("--data", required=True, type=Path, metavar="DIR", help="dataset root")
    check.add_argument("--split", action="append", metavar="S",
                       help="split to check (repeatable; default: every split found)")
    _add_source_args(check)
    check.add_argument("--headers-only", action="store_true",
                       help="read image headers only (fast; does not prove the files decode)")
    check.add_argument("--workers", type=int, default=None, metavar="N",
                       help="reader threads (default: #cpus, max 8)")
    check.add_argument("--all", action="store_true",
                       help=f"list every finding (default: first {MAX_LISTED} per kind)")
    check.set_defaults(func=_check)

    show = sub.add_parser(
        "show", help="draw ground-truth boxes on N images (optionally augmented) and a dataset summary",
        description="Write OUT/<k>_<image>.png: the first N images of a training epoch with their ground-truth "
                    "boxes and class names; with --augment after the training augmentations at full strength, "
                    "as the trainer applies them for train.seed = --seed (mosaics too, with "
                    "data.mosaic_prob; a crop, flip or mosaic bug shows as boxes off their objects). Also "
                    "OUT/summary.png: objects per class, object sizes (sqrt area, COCO boundaries 32 / 96 px), "
                    "objects per image. The augmentation settings come from the "
                    "config (--preset, --config, key=value overrides).")
    show.add_argument("--data", required=True, type=Path, metavar="DIR", help="dataset root")
    show.add_argument("--split", metavar="S", help="split to draw (default: the config's data.train_split)")
    show.add_argument("--augment", action="store_true", help="apply the training augmentations first")
    show.add_argument("--n", type=int, default=16, metavar="N", help="images to draw (default: 16)")
    show.add_argument("--seed", type=int, default=None, metavar="K",
                      help="order and augmentation seed (default: the config's train.seed)")
    show.add_argument("--out", required=True, type=Path, metavar="DIR",
                      help="output folder (created; not the dataset's image folder)")
    add_config_args(show, default_preset="cpu_small")
    show.set_defaults(func=_show)

    convert = sub.add_parser(
        "convert", help="write a YOLO / Pascal VOC / any-path COCO dataset as the standard COCO layout",
        description="Read each split as training reads it (same validation; a malformed record stops with its "
                    "file and line) and write OUT/annotations/instances_<split>.json with the images in "
                    "OUT/<split>/ (boxes only). Records training would skip are left out and listed; exit code 1 "
                    "when there were any.")
    convert.add_argument("--data", required=True, type=Path, metavar="DIR", help="dataset root")
    convert.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (COCO layout)")
    convert.add_argument("--from", dest="format", choices=FORMATS, default="auto",
                         help="source format (default: auto-detected)")
    convert.add_argument("--to", choices=["coco"], default="coco", help="target format (coco)")
    convert.add_argument("--split", action="append", metavar="S",
                         help="split to convert (repeatable; default: every split found)")
    convert.add_argument("--image-files", choices=IMAGE_MODES, default="copy",
                         help="copy the images (default), or symlink / hardlink them")
    convert.add_argument("--all", action="store_true",
                         help=f"list every finding (default: first {MAX_LISTED} per kind)")
    convert.set_defaults(func=_convert)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="dataset format (default: auto-detected; docs/data.md)")
    parser.add_argument("--ann", metavar="FILE", default="",
                        help="a COCO annotation file at any path (relative: to --data); one split")
    parser.add_argument("--images", metavar="DIR", default="",
                        help="its image folder (relative: to --data; default: the annotation file's folder)")


def _sources(args: argparse.Namespace) -> list[SplitSource]:
    """The splits named by --split (or all found), located with --format / --ann / --images."""
    if args.ann or getattr(args, "images", ""):
        if args.split and len(args.split) > 1:
            raise UserError("--ann / --images describe one split: give --split at most once")
        name = args.split[0] if args.split else Path(args.ann or "train").stem
        return [resolve_split(args.data, name, fmt=args.format, ann=args.ann, images=args.images)]
    splits = args.split or find_splits(args.data, args.format)
    if not splits:
        raise UserError(f"{args.data}: no dataset found: no instances_<split>.json in DIR/annotations/ (COCO, "
                        "images in DIR/<split>/), no Roboflow DIR/<split>/_annotations.coco.json, YOLO data.yaml or "
                        "Pascal VOC ImageSets/Main/<split>.txt (docs/data.md)")
    return [resolve_split(args.data, s, fmt=args.format) for s in splits]


def _synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import generate

    if args.train < 0 or args.val < 0:
        raise UserError(f"--train and --val must be >= 0, got {args.train} and {args.val}")
    if args.image_size < 32:
        raise UserError(f"--image-size must be >= 32, got {args.image_size}")
    check_out_folder(args.out)
    try:
        stats = generate(args.out, train=args.train, val=args.val, image_size=args.image_size, seed=args.seed,
                         progress=sys.stderr.isatty())
    except OSError as e:
        raise UserError(f"{e.filename or args.out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {args.out}: {len(stats['classes'])} classes ({', '.join(stats['classes'])}), "
          f"seed {args.seed}, long side {args.image_size} px")
    for split in ("train", "val"):
        s = stats[split]
        opi = s["objects_per_image"]
        print(f"  {split}: {s['images']} images, {s['objects']} objects "
              f"({opi['min']}-{opi['max']} per image, mean {opi['mean']:.1f}); "
              f"small {100 * s['small']:.0f}%, medium {100 * s['medium']:.0f}%, "
              f"large {100 * s['large']:.0f}%; box sides {s['min_side']}-{s['max_side']} px")
    return 0


def _list(title: str, items: list[str], show_all: bool) -> None:
    shown = items if show_all else items[:MAX_LISTED]
    for line in shown:
        print(f"{title}: {_printable(line)}")
    if len(items) > len(shown):
        print(f"{title}: ... and {len(items) - len(shown)} more (--all lists them)")


def _printable(text: str) -> str:
    """`text` with what stdout cannot encode as backslash escapes: a `file_name` may hold a lone surrogate (JSON
    `"\\ud800"`), and printing the finding that names it must not crash the report (UnicodeEncodeError)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def _check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    if not args.data.is_dir():
        raise UserError(f"{args.data}: dataset folder not found")
    if args.workers is not None:
        check_at_least(args.workers, 1, "--workers")
    failed = False
    for source in _sources(args):
        print(f"layout: {source.describe()}")
        report = check_dataset(args.data, source.split, decode=not args.headers_only, workers=args.workers,
                               source=source)
        print(report.summary())
        _list("error", report.errors, args.all)
        _list("warning", report.warnings, args.all)
        failed |= not report.ok
    print("FAILED: errors found (see above)" if failed else "OK")
    return 1 if failed else 0


def _show(args: argparse.Namespace) -> int:
    from ..data.loaders import load_split
    from ..data.show import dataset_stats, plot_summary, show_samples

    if args.n < 0:
        raise UserError(f"--n must be >= 0, got {args.n}")
    check_out_folder(args.out)
    if not args.data.is_dir():
        raise UserError(f"{args.data}: dataset folder not found")
    cfg = resolve_config(args)
    split = args.split or cfg.data.train_split
    seed = cfg.train.seed if args.seed is None else args.seed
    dataset = load_split(args.data, split, cfg.data)
    if args.out.is_dir() and args.out.resolve() == dataset.records.image_dir.resolve():
        raise UserError(f"{args.out}: is the dataset's image folder; choose another --out")
    written = show_samples(args.data, split, args.out, args.n, seed, args.augment, cfg.data, dataset=dataset)
    stats = dataset_stats(dataset.records)
    plot_summary(stats, args.out / "summary.png", title=f"{args.data} ({split})")
    small, medium, large = stats.size_counts()
    how = f"augmented as in training (seed {seed})" if args.augment else f"as read (order of seed {seed})"
    print(f"{len(written)} image(s) with ground truth, {how}, and summary.png written to {args.out}")
    print(f"  {len(stats.boxes_per_image)} images, {stats.num_objects} objects; small {small}, medium {medium}, "
          f"large {large}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..data.convert import convert_split

    if not args.data.is_dir():
        raise UserError(f"{args.data}: dataset folder not found")
    check_out_folder(args.out)
    if args.out.resolve() == args.data.resolve():
        raise UserError(f"{args.out}: is the dataset folder itself; choose another --out")
    args.ann = args.images = ""
    failed = False
    for source in _sources(args):
        result = convert_split(source, args.out, images=args.image_files)
        print(f"{source.split}: {source.layout} -> {result.ann_file}: {result.images} images, "
              f"{result.annotations} objects, {result.classes} classes")
        errors = [i.message for i in result.issues if i.severity == "error"]
        _list("skipped", errors, args.all)
        _list("warning", [i.message for i in result.issues if i.severity == "warning"], args.all)
        failed |= bool(errors)
    print("done, with records left out (see above)" if failed else "done")
    return 1 if failed else 0
