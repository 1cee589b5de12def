"""AP of exported graphs against the PyTorch model they come from, on one dataset split.

Contenders, same weights, same val images, batch 4, COCO AP from pycocotools:
* PyTorch: the checkpoint as `dynamic-detr eval` runs it (eval resize with the aspect kept, padded batches), and
  at batch 1 (each image padded only to the size divisibility: how much the backbone's border effect moves AP);
* letterbox, default canvas: what `dynamic-detr export` writes (eval resize, then top-left on a square canvas of
  the eval max size, padding-aware), run by `export/onnx_runner.py` as `eval --checkpoint model.onnx` does;
* letterbox, smaller canvas: the earlier default export size (eval short side x min(eval max size, 4/3 of it));
  images that do not fit after the eval resize are shrunk to fit;
* stretched: the earlier export, each image resized to that fixed size regardless of its aspect ratio.

    .venv/bin/python benchmarks/export_ap.py --checkpoint RUN --data DIR --out benchmarks/results/export_ap.json
    .venv/bin/python benchmarks/export_ap.py --quick     # smoke run (the test suite calls it): random cpu_tiny

docs/benchmarks.md has the measured figures and the commands that trained the model they are for.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from dynamic_detr.api import save_pretrained

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm")


class StretchWrapper(nn.Module):
    """The earlier export: (images stretched to H x W, orig_sizes) -> boxes, scores, labels; no padding."""

    def __init__(self, model: nn.Module, top_k: int = 100) -> None:
        super().__init__()
        self.model, self.top_k = model, top_k

    def forward(self, images: Tensor, orig_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.postprocess_batched(self.model(images), orig_sizes, self.top_k)


class StretchedOnnx:
    """A stretched graph on onnxruntime, with the inference interface `evaluate/inference.py` calls."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def eval(self) -> StretchedOnnx:
        return self

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> dict[str, Tensor]:
        return {"images": images}

    def postprocess(self, outputs: dict, orig_sizes: Tensor, top_k: int = 100) -> list[dict[str, Tensor]]:
        feed = {"images": outputs["images"].float().cpu().numpy(), "orig_sizes": orig_sizes.cpu().numpy()}
        boxes, scores, labels = self.session.run(None, feed)
        return [{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(c)}
                for b, s, c in zip(boxes, scores, labels, strict=True)]


def export_stretched(model: nn.Module, path: Path, size: tuple[int, int]) -> None:
    from dynamic_detr.export.onnx_export import DEFORM_CONV_OPSET, prepare_model, register_deform_conv_symbolic

    register_deform_conv_symbolic(DEFORM_CONV_OPSET)
    wrapper = StretchWrapper(prepare_model(model, portable=False)).eval()
    names = ["images", "orig_sizes", "boxes", "scores", "labels"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (torch.rand(1, 3, *size), torch.tensor([list(size)])), str(path),
                          opset_version=DEFORM_CONV_OPSET, dynamo=False, input_names=names[:2],
                          output_names=names[2:], dynamic_axes={n: {0: "batch"} for n in names})


def run(checkpoint: Path, data: Path, batch: int, workers: int) -> dict:
    from dynamic_detr.cli.export import default_image_size
    from dynamic_detr.data.coco import CocoDetection
    from dynamic_detr.data.collate import build_loader
    from dynamic_detr.data.sampler import SeededDataset
    from dynamic_detr.data.transforms import build_transforms
    from dynamic_detr.evaluate.inference import evaluate_model
    from dynamic_detr.export.onnx_export import export_onnx
    from dynamic_detr.export.onnx_runner import load_onnx
    from dynamic_detr.model.loading import load_model

    device = torch.device("cpu")
    model, cfg = load_model(checkpoint, device)
    dataset = CocoDetection(data, cfg.data.val_split)
    names = dict(zip(dataset.category_ids, dataset.class_names, strict=True))
    gt = dataset.coco_gt()
    d = cfg.data

    def ap(detector, transform, batch: int = batch) -> dict:
        loader = build_loader(SeededDataset(dataset, transform), batch, train=False, num_workers=workers,
                              size_divisibility=d.size_divisibility)
        metrics, _ = evaluate_model(detector, loader, gt, names, device)
        return {k: round(metrics[k], 2) for k in AP_KEYS}

    eval_tf = build_transforms(d, train=False)
    square = default_image_size(d.eval_max_size, d.size_divisibility)
    small = (d.eval_short_side, min(d.eval_max_size, d.eval_short_side * 4 // 3))
    rows = [{"variant": "PyTorch checkpoint (eval)", "input": "eval resize, padded batch", **ap(model, eval_tf)},
            {"variant": "PyTorch checkpoint (eval), batch 1", "input": "eval resize, padded to a multiple of "
             f"{d.size_divisibility}", **ap(model, eval_tf, batch=1)}]
    with tempfile.TemporaryDirectory() as tmp:
        for size, what in ((square, "default canvas"), (small, "smaller canvas, shrunk to fit")):
            path = Path(tmp) / f"letterbox_{size[0]}x{size[1]}.onnx"
            export_onnx(model, path, size, dynamic_batch=True)
            rows.append({"variant": f"ONNX letterbox {size[0]}x{size[1]} ({what})",
                         "input": "eval resize, top-left on the canvas", **ap(load_onnx(path)[0], eval_tf)})
        path = Path(tmp) / "stretched.onnx"
        export_stretched(model, path, small)
        stretch_tf = v2.Compose([v2.Resize(list(small), antialias=True), v2.ToDtype(torch.float32, scale=True)])
        rows.append({"variant": f"ONNX stretched {small[0]}x{small[1]} (the earlier export)",
                     "input": "resized to the canvas, aspect not kept", **ap(StretchedOnnx(path), stretch_tf)})
    base = rows[0]["AP"]
    for r in rows:
        r["AP_vs_pytorch"] = round(r["AP"] - base, 2)
    return {"checkpoint": str(checkpoint), "data": str(data), "split": cfg.data.val_split, "images": len(dataset),
            "preset": cfg.name, "eval_short_side": d.eval_short_side, "eval_max_size": d.eval_max_size,
            "batch": batch, "date": time.strftime("%Y-%m-%d"), "results": rows}


def markdown(res: dict) -> str:
    lines = [f"{res['preset']} ({res['checkpoint']}), {res['images']} {res['split']} images of {res['data']}, "
             f"eval resize {res['eval_short_side']} / {res['eval_max_size']}, batch {res['batch']}, {res['date']}",
             "", "| variant | input | " + " | ".join(AP_KEYS) + " | AP vs PyTorch |",
             "|---|---|" + "---|" * (len(AP_KEYS) + 1)]
    lines += [f"| {r['variant']} | {r['input']} | " + " | ".join(f"{r[k]:.1f}" for k in AP_KEYS)
              + f" | {r['AP_vs_pytorch']:+.2f} |" for r in res["results"]]
    return "\n".join(lines)


def quick_setup(root: Path) -> tuple[Path, Path]:
    """A random-weights cpu_tiny model for 4 synthetic val images (128 px): (checkpoint folder, data)."""
    from dynamic_detr.config import get_preset
    from dynamic_detr.data.coco import CocoDetection
    from dynamic_detr.data.synthetic import generate
    from dynamic_detr.model import DynamicDETR

    data = root / "data"
    generate(data, train=1, val=4, image_size=128, seed=0)
    dataset = CocoDetection(data, "val")
    cfg = get_preset("cpu_tiny")
    cfg.model.backbone.weights = None
    cfg.model.num_classes = len(dataset.category_ids)
    cfg.model.category_ids, cfg.model.class_names = list(dataset.category_ids), list(dataset.class_names)
    cfg.data.val_split = "val"
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model).eval()
    model.run_config = cfg
    save_pretrained(model, root / "model")
    return root / "model", data


def model_and_data(parser: argparse.ArgumentParser, args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """`--checkpoint` and `--data`, or with `--quick` a random cpu_tiny model and 4 images written under `tmp`."""
    if args.quick:
        return quick_setup(tmp)
    if args.checkpoint is None or args.data is None:
        parser.error("--checkpoint and --data are required (or --quick)")
    return args.checkpoint, args.data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a trained model (run folder, .pt, ...)")
    p.add_argument("--data", type=Path, help="COCO dataset folder (its val split is used)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", type=Path, help="results JSON")
    p.add_argument("--quick", action="store_true", help="random cpu_tiny on 4 synthetic images (smoke test)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(*model_and_data(p, args, Path(tmp)), args.batch, args.workers)
    print(markdown(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
