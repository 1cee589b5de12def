"""onnxruntime vs PyTorch eager: inference latency on CPU for a preset at its eval size.

Times the exported graph (forward + top-k post-processing) in three runtimes, same weights, same input:
PyTorch eager (the encoder's `deform_impl=auto` kernel), onnxruntime on the native graph (`DeformConv`) and on
the portable graph (`GridSample` + `MatMul`). Median of `--reps` runs after `--warmup`; ratios are against
eager, measured in the same run. Random weights: latency does not depend on them.

`--compile` adds a fourth runtime: the same eager module under `torch.compile` (inductor, static shapes), with
its compile time counted twice: cold (an empty inductor cache, what a user's first run pays) and warm (compiled
again after `torch._dynamo.reset()`, the on-disk FX graph cache of the cold run hit, what later runs pay);
`compile_break_even_images` is how many images the cold compile takes to pay for itself at the measured
per-image saving.

    .venv/bin/python benchmarks/export_latency.py --preset cpu_small --out benchmarks/results/export_latency.json
    .venv/bin/python benchmarks/export_latency.py --preset cpu_small --compile   # + torch.compile (minutes)
    .venv/bin/python benchmarks/export_latency.py --quick        # smoke run (the test suite calls it)

Never run it while another job uses the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def median_ms(fn, warmup: int, reps: int) -> float:
    return common.median_seconds(fn, torch.device("cpu"), warmup, reps) * 1000


def compiled_runtime(eager: torch.nn.Module, images: torch.Tensor, sizes: torch.Tensor, cache: Path,
                     warmup: int, reps: int) -> tuple[float, dict[str, float]]:
    """Median ms of `torch.compile(eager)` and its compile times (s): cold in an empty inductor cache `cache`,
    then warm (dynamo reset, the cold run's FX graph cache hit); plus the largest output difference to eager."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)  # read at each compile: a cold cache for this run
    with torch.inference_mode():
        ref = eager(images, sizes, sizes)
    info: dict[str, float] = {}
    for key in ("compile_cold_s", "compile_warm_s"):
        torch._dynamo.reset()
        compiled = torch.compile(eager, dynamic=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = compiled(images, sizes, sizes)  # the first call compiles
        info[key] = round(time.perf_counter() - t0, 1)
    info["compile_max_abs_diff"] = max(float((a.float() - b.float()).abs().max())
                                       for a, b in zip(ref, out, strict=True))

    def fn():
        with torch.inference_mode():
            compiled(images, sizes, sizes)

    return median_ms(fn, warmup, reps), info


def run(preset: str, image_size: tuple[int, int] | None, batch: int, warmup: int, reps: int,
        compile_: bool = False) -> dict:
    import onnxruntime as ort

    from dynamic_detr.config import get_preset
    from dynamic_detr.export.onnx_export import ExportWrapper, export_onnx
    from dynamic_detr.model import DynamicDETR

    cfg = get_preset(preset)
    cfg.model.backbone.weights = None
    cfg.model.num_classes = 6
    h, w = image_size or (cfg.data.eval_short_side, cfg.data.eval_max_size)
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model).eval()
    images = torch.rand(batch, 3, h, w)
    sizes = torch.tensor([[h, w]] * batch, dtype=torch.int64)  # images filling the canvas: valid = whole
    eager = ExportWrapper(model, top_k=100).eval()  # the config's kernel (auto: bags on CPU), as users get

    def torch_fn():
        with torch.inference_mode():
            eager(images, sizes, sizes)

    rows = {"pytorch eager": median_ms(torch_fn, warmup, reps)}
    extra: dict[str, float] = {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    feed = {"images": images.numpy(), "valid_sizes": sizes.numpy(), "orig_sizes": sizes.numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, portable in (("onnxruntime native (DeformConv)", False), ("onnxruntime portable (GridSample)", True)):
            path = Path(tmp) / f"{portable}.onnx"
            export_onnx(model, path, (h, w), portable=portable, dynamic_batch=True)
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            rows[mode] = median_ms(lambda s=sess: s.run(None, feed), warmup, reps)
        if compile_:
            rows["torch.compile (inductor)"], extra = compiled_runtime(eager, images, sizes, Path(tmp) / "inductor",
                                                                       warmup, reps)
            saved_ms = (rows["pytorch eager"] - rows["torch.compile (inductor)"]) / batch
            extra["compile_break_even_images"] = (round(extra["compile_cold_s"] * 1000 / saved_ms) if saved_ms > 0
                                                  else None)
    base = rows["pytorch eager"]
    return {
        "preset": preset, "image_size": [h, w], "batch": batch, "warmup": warmup, "reps": reps,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "date": time.strftime("%Y-%m-%d"),
        "results": [{"runtime": k, "median_ms": round(v, 2), "speedup_vs_eager": round(base / v, 3)}
                    for k, v in rows.items()],
        **extra,
    }


def markdown(res: dict) -> str:
    lines = [f"{res['preset']}, {res['image_size'][0]}x{res['image_size'][1]}, batch {res['batch']}, "
             f"{res['threads']} threads, median of {res['reps']} after {res['warmup']} warm-up "
             f"(torch {res['torch']}, onnxruntime {res['onnxruntime']}, {res['date']})", "",
             "| runtime | median ms | speed-up vs eager |", "|---|---|---|"]
    lines += [f"| {r['runtime']} | {r['median_ms']:.1f} | {r['speedup_vs_eager']:.2f}x |" for r in res["results"]]
    if "compile_cold_s" in res:
        lines += ["", f"torch.compile: {res['compile_cold_s']:.1f} s cold (empty cache), {res['compile_warm_s']:.1f} s "
                  f"warm (cache hit); pays for its cold compile after {res['compile_break_even_images']} images; "
                  f"largest output difference to eager {res['compile_max_abs_diff']:.1e}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu_small")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="default: the preset's eval size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", type=Path, help="results JSON")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compiles twice: minutes on CPU)")
    p.add_argument("--quick", action="store_true", help="cpu_tiny at 96x128, 1 warm-up, 2 runs (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.image_size, args.warmup, args.reps = "cpu_tiny", (96, 128), 1, 2
    res = run(args.preset, tuple(args.image_size) if args.image_size else None, args.batch, args.warmup, args.reps,
              args.compile)
    print(markdown(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
