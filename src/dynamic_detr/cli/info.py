"""`dynamic-detr info`: parameters and forward GFLOPs of each model component for a config."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .common import add_config_args, resolve_config

LABELS = {"backbone": "backbone+FPN", "encoder": "encoder", "dense_head": "dense head", "decoder": "decoder",
          "training_only": "train-only", "total": "total"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info", help="parameters and GFLOPs per model component",
        description="Build the model of a preset or config (no weights are read) and print its parameters "
                    "(all / trainable) and forward GFLOPs for one image, per component.")
    add_config_args(parser, default_preset="cpu_small")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input size (default: the config's eval size, data.eval_short_side x "
                             "data.eval_max_size, e.g. 800 1333 for paper_r50)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model.info import model_info

    cfg = resolve_config(args)
    h, w = args.image_size or (cfg.data.eval_short_side, cfg.data.eval_max_size)
    if min(h, w) < 32:
        raise UserError(f"--image-size must be at least 32x32, got {h}x{w}")
    info = model_info(cfg.model, (h, w))
    m = cfg.model
    print(f"{cfg.name}: R{m.backbone.depth}-FPN, {m.encoder.num_blocks if m.encoder.enabled else 0} encoder "
          f"blocks, {m.decoder.num_stages} decoder stages, {m.decoder.num_queries} queries, "
          f"d={m.hidden_dim}; 1 image of {h}x{w}")
    print(f"{'component':<14}{'params':>11}{'trainable':>12}{'GFLOPs':>10}")
    for key, label in LABELS.items():
        if key in ("dense_head", "training_only") and not info["params"][key]:
            continue
        gflops = f"{info['gflops'][key]:>10.2f}" if key in info["gflops"] else f"{'-':>10}"
        print(f"{label:<14}{info['params'][key] / 1e6:>9.2f} M{info['trainable'][key] / 1e6:>10.2f} M{gflops}")
    print("GFLOPs: forward, torch FlopCounterMode (multiply-add = 2 FLOPs), including deformable conv and "
          "RoIAlign (formulas in model/info.py)")
    return 0
