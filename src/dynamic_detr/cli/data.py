"""`dynamic-detr data synth | check | show`: generate the synthetic dataset, lint a COCO dataset, draw it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from .common import add_config_args, resolve_config

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
        "check", help="lint a COCO dataset and print a summary",
        description="Validate DIR/annotations/instances_<split>.json and decode every image of DIR/<split>/. "
                    "Exit code 0: clean (warnings allowed); 1: errors found; 2: not a usable dataset at all.")
    check.add_argument("--data", required=True, type=Path, metavar="DIR", help="dataset root")
    check.add_argument("--split", action="append", metavar="S",
                       help="split to check (repeatable; default: every annotations/instances_*.json)")
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
                    "boxes and class names; with --augment after the training augmentations, exactly as the "
                    "trainer applies them for train.seed = --seed (a crop or flip bug shows as boxes off "
                    "their objects). Also OUT/summary.png: objects per class, object sizes (sqrt area, COCO "
                    "boundaries 32 / 96 px), objects per image. The augmentation settings come from the "
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


def _synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import generate

    if args.train < 0 or args.val < 0:
        raise UserError(f"--train and --val must be >= 0, got {args.train} and {args.val}")
    if args.image_size < 32:
        raise UserError(f"--image-size must be >= 32, got {args.image_size}")
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


def _splits(root: Path) -> list[str]:
    ann_dir = root / "annotations"
    found = sorted(p.name[len("instances_"):-len(".json")] for p in ann_dir.glob("instances_*.json"))
    if not found:
        raise UserError(f"{ann_dir}: no instances_<split>.json files (expected a COCO layout: "
                        f"DIR/annotations/instances_<split>.json with images in DIR/<split>/)")
    return found


def _list(title: str, items: list[str], show_all: bool) -> None:
    shown = items if show_all else items[:MAX_LISTED]
    for line in shown:
        print(f"{title}: {line}")
    if len(items) > len(shown):
        print(f"{title}: ... and {len(items) - len(shown)} more (--all lists them)")


def _check(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    if not args.data.is_dir():
        raise UserError(f"{args.data}: dataset folder not found")
    splits = args.split or _splits(args.data)
    failed = False
    for split in splits:
        report = check_dataset(args.data, split, decode=not args.headers_only, workers=args.workers)
        print(report.summary())
        _list("error", report.errors, args.all)
        _list("warning", report.warnings, args.all)
        failed |= not report.ok
    print("FAILED: errors found (see above)" if failed else "OK")
    return 1 if failed else 0


def _show(args: argparse.Namespace) -> int:
    from ..data.coco import CocoDetection
    from ..data.show import dataset_stats, plot_summary, show_samples

    if args.n < 0:
        raise UserError(f"--n must be >= 0, got {args.n}")
    if not args.data.is_dir():
        raise UserError(f"{args.data}: dataset folder not found")
    cfg = resolve_config(args)
    split = args.split or cfg.data.train_split
    seed = cfg.train.seed if args.seed is None else args.seed
    dataset = CocoDetection(args.data, split)
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
