"""`dynamic-detr serve`: an HTTP JSON API and a web page for a trained model (docs/serve.md)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from .common import add_decoder_stages_arg


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP: a JSON API and a web page",
                       description="Serve a trained model: POST /v1/detect takes an image (multipart file part "
                                   "'image', or the raw body) and answers the JSON `predict` writes for an image; "
                                   "GET /v1/model describes the model, GET /health answers ok, and / is a web page "
                                   "that draws an image's detections. Requests that arrive together run as one "
                                   "batch; past --queue-size requests in flight the server answers 503 with "
                                   "Retry-After. Nothing is written to disk. SIGTERM lets the requests in flight "
                                   "finish and exits 0. Needs the serve extra: pip install 'dynamic-detr[serve]'.")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="run folder, .pt checkpoint, model folder, .safetensors or an exported .onnx")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to "
                        "the network, without authentication)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0: any free port)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--max-batch", type=int, default=8, help="most images in one forward pass (default: 8)")
    p.add_argument("--gather-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests after its first (default: 5 ms)")
    p.add_argument("--queue-size", type=int, default=32,
                   help="most detect requests in flight; one more is answered 503 (default: 32)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds for an upload (408 past it) and again for its answer (504) (default: 30)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body, in MB (default: 20)")
    p.add_argument("--max-megapixels", type=float, default=40.0,
                   help="largest image decoded, width x height in millions (default: 40)")
    add_decoder_stages_arg(p)
    p.add_argument("--access-log", action="store_true", help="print a line per request (uvicorn's access log)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    missing = [m for m in ("starlette", "uvicorn", "python_multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"serve needs {', '.join(missing)}, not installed: pip install 'dynamic-detr[serve]'")

    from ..export.onnx_runner import is_onnx
    from ..serve.app import ServeOptions
    from ..serve.server import load_service, serve
    from .common import check_decoder_stages, resolve_device

    options = ServeOptions(host=args.host, port=args.port, max_batch=args.max_batch, gather_ms=args.gather_ms,
                           queue_size=args.queue_size, timeout=args.timeout, max_upload_mb=args.max_upload_mb,
                           max_megapixels=args.max_megapixels, access_log=args.access_log).check()
    device = resolve_device(args.device)
    stages = check_decoder_stages(args, is_onnx(args.checkpoint))
    service = load_service(args.checkpoint, device, stages)
    info = service.info
    banner = f"{args.checkpoint} ({info['runtime']}, {info['preset']}, {len(info['classes'])} classes): "
    return serve(service, options, banner)
