"""Fine-tuning a trained detector (`train --weights`) against training from scratch, on a task with other classes.

A model is trained on the synthetic shapes (6 classes). The target task is new images (another seed) where only
`--target-classes` of the shapes are annotated, so the class heads do not fit and start fresh while everything
else (backbone, encoder, dense head's box branch, decoder) is loaded. The same target training then runs twice,
from those weights and from random weights, with the same data order, and both are evaluated after every
epoch. Each run goes through the trainer as `dynamic-detr train` would (`train.trainer.Trainer`).

    .venv/bin/python benchmarks/finetune.py                  # about 30 min on 2 CPU cores
    .venv/bin/python benchmarks/finetune.py --quick          # smoke run (cpu_tiny, a few steps)

Writes OUT/finetune.json, OUT/finetune.md and OUT/finetune_ap.png; the source model stays in
WORK/finetune/source (a run folder: `dynamic-detr explain / eval / predict --checkpoint` take it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

import common
from dynamic_detr.data.synthetic import CLASSES, generate
from dynamic_detr.train.trainer import Trainer


def target_dataset(root: Path, train: int, val: int, image_size: int, classes: list[str], seed: int) -> Path:
    """New synthetic images with only `classes` annotated (the other shapes are background there)."""
    if (root / "annotations" / "instances_val.json").exists():
        return root
    generate(root, train=train, val=val, image_size=image_size, seed=seed)
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text())
        keep = {c["id"] for c in coco["categories"] if c["name"] in classes}
        coco["categories"] = [c for c in coco["categories"] if c["id"] in keep]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] in keep]
        path.write_text(json.dumps(coco))
    return root


class _Tee(io.TextIOBase):
    """stdout that is also kept: the trainer prints what `--weights` loaded."""

    def __init__(self, stream) -> None:
        self.stream, self.text = stream, io.StringIO()

    def write(self, s: str) -> int:
        self.text.write(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


def train(preset: str, overrides: list[str], data: Path, out: Path, epochs: int, weights: Path | None) -> str:
    """One run of the trainer; returns what it printed."""
    cfg = common.make_config(preset, overrides)
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        result = Trainer(cfg, data, out, epochs=epochs, weights=weights, overwrite=True, progress=False).fit()
    if result.status != "finished":
        raise SystemExit(f"{out}: training ended with status {result.status!r}")
    return tee.text.getvalue()


def history(run: Path) -> list[dict[str, Any]]:
    """Per-epoch AP (and loss) from the run's results.csv."""
    with (run / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))

    def num(v: str) -> float | None:
        return None if v in ("", "nan") else float(v)

    return [{"epoch": int(r["epoch"]), "loss": num(r["loss"]), "AP": num(r["AP"]), "AP50": num(r["AP50"]),
             "APs": num(r["APs"])} for r in rows]


def markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    ft, sc = report["results"]["finetuned"], report["results"]["scratch"]
    lines = [f"Setup: source = synthetic {s['source']} ({len(CLASSES)} classes), trained {s['source_epochs']} "
             f"epochs (val AP {common.fmt(s['source_AP'])}); target = new images {s['target']}, only "
             f"{', '.join(s['target_classes'])} annotated; preset `{s['preset']}` {' '.join(s['overrides'])}; "
             f"{report['machine']['cpu']}, {report['machine']['date']}.", "",
             "| epoch | fine-tuned AP | from scratch AP | fine-tuned loss | from scratch loss |",
             "|---|---|---|---|---|"]
    for a, b in zip(ft["history"], sc["history"], strict=True):
        lines.append(f"| {a['epoch']} | {common.fmt(a['AP'])} | {common.fmt(b['AP'])} | {common.fmt(a['loss'], 2)} "
                     f"| {common.fmt(b['loss'], 2)} |")
    lines += ["", f"Fine-tuning loaded {ft['loaded']} (the rest: the class heads, built for 6 classes)."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("finetuned", "fine-tuned from the 6-class model"), ("scratch", "from random weights")):
        h = report["results"][name]["history"]
        ax.plot([p["epoch"] for p in h], [p["AP"] or 0.0 for p in h], marker="o", label=label)
    ax.set_xlabel("epoch on the target task")
    ax.set_ylabel("COCO AP (target val)")
    ax.set_title(f"Fine-tuning on {len(report['setup']['target_classes'])} classes")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--image-size", type=int, default=160, help="long side of the synthetic images")
    p.add_argument("--source", type=int, nargs=2, default=[320, 80], metavar=("TRAIN", "VAL"))
    p.add_argument("--source-epochs", type=int, default=6)
    p.add_argument("--target", type=int, nargs=2, default=[120, 60], metavar=("TRAIN", "VAL"))
    p.add_argument("--target-epochs", type=int, default=5)
    p.add_argument("--target-classes", nargs="+", default=["star", "ring", "cross"], choices=CLASSES)
    p.add_argument("--work", type=Path, default=common.ROOT / "runs" / "bench")
    p.add_argument("--out", type=Path, default=common.RESULTS / "finetune")
    p.add_argument("--quick", action="store_true", help="smoke run: cpu_tiny, 8 images, 1 + 2 + 2 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.image_size, args.source, args.source_epochs = "cpu_tiny", 96, [8, 4], 1
        args.target, args.target_epochs = [8, 4], 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    work = args.work / ("finetune_quick" if args.quick else "finetune")
    overrides = [*common.sized_data_overrides(args.image_size), "train.eval_every=1", "data.num_workers=0"]
    # lr x0.1 for the last epoch of each run (the demo's and the benchmarks' curves jump at the drop)
    source_overrides = [*overrides, f"train.lr_drop_epochs=[{max(1, args.source_epochs - 1)}]"]
    target_overrides = [*overrides, f"train.lr_drop_epochs=[{max(1, args.target_epochs - 1)}]"]
    source_data = common.synthetic_data(work, *args.source, args.image_size, seed=0)
    target_data = target_dataset(work / f"target_{'_'.join(args.target_classes)}", *args.target, args.image_size,
                                 args.target_classes, seed=1)
    source = work / "source"
    if not (source / "metrics.json").exists():  # reused: the source model is the expensive part
        shutil.rmtree(source, ignore_errors=True)
        print(f"training the source model ({args.source_epochs} epochs) in {source}", flush=True)
        train(args.preset, source_overrides, source_data, source, args.source_epochs, None)
    source_ap = json.loads((source / "metrics.json").read_text()).get("AP")
    results: dict[str, Any] = {}
    for name, weights in (("finetuned", source), ("scratch", None)):
        print(f"target task, {name}", flush=True)
        printed = train(args.preset, target_overrides, target_data, work / name, args.target_epochs, weights)
        results[name] = {"history": history(work / name)}
        loaded = re.search(r"weights: loaded (\d+) of (\d+) tensors", printed)
        results[name]["loaded"] = f"{loaded[1]} of {loaded[2]} tensors" if loaded else None
    report = {"setup": {"preset": args.preset, "overrides": overrides, "source": f"{args.source[0]} train / "
                        f"{args.source[1]} val, {args.image_size} px", "source_epochs": args.source_epochs,
                        "source_AP": source_ap, "target": f"{args.target[0]} train / {args.target[1]} val",
                        "target_classes": args.target_classes, "target_epochs": args.target_epochs},
              "machine": common.machine(torch.device("cpu")), "results": results}
    md = markdown(report)
    common.write_results(args.out, "finetune", report, md)
    plot(report, args.out / "finetune_ap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
