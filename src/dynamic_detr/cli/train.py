"""`dynamic-detr train`: train on a COCO-format dataset."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import add_config_args, check_out_folder, resolve_config, resolve_device


def register(sub) -> None:
    p = sub.add_parser("train", help="train on a COCO-format dataset",
                       description="Train Dynamic DETR. --data DIR holds annotations/instances_<split>.json and "
                                   "<split>/ image folders (splits: data.train_split / data.val_split). A new "
                                   "run never writes into a folder that holds another run: it goes to RUN2, "
                                   "RUN3, ... unless --exist-ok.")
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    add_config_args(p, default_preset="cpu_small")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<config name>); when it already holds "
                                            "files, a new run goes to the first free OUT2, OUT3, ...")
    p.add_argument("--exist-ok", action="store_true",
                   help="train into --out even if it holds an earlier run: that run's files (results.csv, "
                        "tensorboard/, plots/, metrics.json, *.pt, weights/) are removed first")
    p.add_argument("--epochs", type=int, help="number of epochs (default: train.epochs of the config)")
    p.add_argument("--minutes", type=float, help="training time budget; stops at whichever budget ends first")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue the run in --out (or the given run folder / checkpoint) where it stopped, "
                        "with its own config: overrides may change only train.epochs, eval_every, "
                        "checkpoint_every, max_nonfinite_steps, patience, min_delta and data.num_workers")
    p.add_argument("--weights", type=Path, metavar="CKPT",
                   help="fine-tune: start from a trained model (run folder, .pt, .safetensors or a "
                        "save_pretrained folder); tensors whose name and shape fit are loaded, class heads for "
                        "another number of classes start fresh; a new run (epoch 0, fresh optimizer)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import process_group_scope
    from ..errors import UserError
    from ..train.rundir import fresh_run_dir
    from ..train.trainer import Trainer

    resume = args.resume is not False
    if args.weights is not None and resume:
        raise UserError("--weights starts a new run from trained weights, --resume continues a run: "
                        "give one of them")
    if args.exist_ok and resume:
        raise UserError("--exist-ok starts the run in --out over, --resume continues it: give one of them")
    resolve_device(args.device)  # checked here: the trainer takes the name
    cfg = resolve_config(args)
    out = args.out
    if out is None:
        out = Path(args.resume) if args.resume not in (False, True) else Path("runs") / cfg.name
        if out.suffix == ".pt":
            out = out.parent
    check_out_folder(out)
    if not resume and not args.exist_ok:
        # every process decides the same way: none writes before all have joined the process group
        free = fresh_run_dir(out)
        if free != out and os.environ.get("RANK", "0") == "0":
            print(f"{out} already holds files: this run goes to {free} (--exist-ok would overwrite the run in "
                  f"{out}, --resume continue it)", flush=True)
        out = free
    # on --resume the run's own config is used; its overrides may change only the budget and the like
    with process_group_scope():  # under torchrun: leave the process group at the end, also on an error
        trainer = Trainer(cfg, args.data, out, epochs=args.epochs, minutes=args.minutes, resume=args.resume,
                          device=args.device, overrides=list(args.overrides or []), weights=args.weights,
                          overwrite=args.exist_ok)
        result = trainer.fit()
    if trainer.dist.is_main:
        print(f"{result.status} after {result.epochs_done} epoch(s); run folder: {result.out}")
        if result.status == "interrupted":
            print(f"continue it with --out {result.out} --resume")
        if result.metrics:
            print(f"final AP {result.metrics['AP']:.2f}  AP50 {result.metrics['AP50']:.2f}  "
                  f"APs {result.metrics['APs']:.2f}  (metrics.json)")
    if result.status == "interrupted":
        return 130
    return 1 if result.status == "stopped: non-finite" else 0  # "stopped early" is a finished run
