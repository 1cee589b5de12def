"""`dynamic-detr explain`: pictures of what a trained model does on one image (predict/explain.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .predict import _positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "explain", help="draw the decoder's coarse-to-fine boxes and the encoder's attention on one image",
        description="Run a trained model on IMAGE and write to OUT: stages.png (each top detection's box at "
                    "every decoder stage, pale yellow = initial box to dark red = final), scale_attention.png "
                    "(per encoder block and level, the scale attention weight of the finer / same / coarser "
                    "neighbour), sampling_block<b>.png (where the 9 taps of each level's deformable conv land "
                    "around the top detections' centres; P3 red, P4 orange, P5 yellow, P6 green, P7 blue), "
                    "dyrelu.png (DyReLU's mean slopes per level) and explain.json (all the numbers). The encoder "
                    "pictures are skipped for a model without the dynamic encoder.")
    p.add_argument("image", type=Path, metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, type=Path, help="run folder, .pt checkpoint or .safetensors")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; not the image's folder)")
    p.add_argument("--top", type=_positive_int, default=5, metavar="N",
                   help="detections whose decoder path is drawn (default: 5)")
    p.add_argument("--points", type=int, default=3, metavar="N",
                   help="of those, how many get their deformable sampling points drawn (default: 3)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.image_io import read_image
    from ..data.validate import aspect_problem
    from ..errors import UserError
    from ..model.loading import load_model
    from ..predict.explain import explain_image, save_explanation
    from ..predict.predictor import check_output_folder
    from .common import resolve_device

    device = resolve_device(args.device)
    if not args.image.is_file():
        raise UserError(f"{args.image}: no such file")
    if args.points < 0:
        raise UserError(f"--points must be >= 0, got {args.points}")
    check_output_folder([args.image], args.out)
    image = torch.Tensor.as_subclass(read_image(args.image), torch.Tensor)
    problem = aspect_problem(int(image.shape[-1]), int(image.shape[-2]))
    if problem:
        raise UserError(f"{args.image}: {problem}")
    model, cfg = load_model(args.checkpoint, device)
    ex = explain_image(model, cfg, image, device, top=args.top, points=args.points)
    written = save_explanation(ex, args.out)
    for q, c, s in zip(ex.queries, ex.labels, ex.scores, strict=True):
        print(f"query {int(q)}: {ex.names.get(int(c), str(int(c)))} {float(s):.3f}")
    if ex.scale_weights.shape[0] == 0:
        print("the model has no dynamic encoder blocks: only the decoder path is drawn")
    elif not ex.gates.isnan().all():  # out = x + g * block(x): how much of each block the pyramid gets
        for b, row in enumerate(ex.gates.tolist(), start=1):
            print(f"encoder block {b} gate: " + ", ".join(f"{name} {g:+.3f}" for name, g in
                                                         zip(ex.level_names, row, strict=True) if g == g))
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0
