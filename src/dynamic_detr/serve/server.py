"""Loading the model into a `DetectionService` and running the application on uvicorn.

Shutdown: on SIGTERM (or Ctrl-C) uvicorn stops accepting connections, lets the requests in flight finish (their
jobs stay queued for the model thread, which keeps running), then runs the application's lifespan shutdown, which
drains the batcher and stops its thread. uvicorn then raises the signal again with the handler it found at start:
for SIGTERM that is `serve`'s own handler, so the process ends with code 0 (a clean, complete stop) instead of being
killed by its own signal."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from pathlib import Path

import torch

from ..errors import UserError
from .app import DetectionService, ServeOptions, build_app


def load_service(checkpoint: Path, device: torch.device, decoder_stages: int | None = None) -> DetectionService:
    """The model of `checkpoint` (run folder, .pt, .safetensors, model folder, or an exported .onnx run with
    onnxruntime), loaded as `predict` loads it, behind `predict.predictor.Predictor`; `decoder_stages` as
    `load_model`'s. Raises UserError."""
    from ..export.onnx_runner import is_onnx, load_onnx
    from ..model.loading import load_model
    from ..predict.predictor import Predictor

    onnx = is_onnx(checkpoint)
    model, cfg = load_onnx(checkpoint) if onnx else load_model(checkpoint, device, decoder_stages=decoder_stages)
    predictor = Predictor(model, cfg, device)
    m, d = cfg.model, cfg.data
    ids = list(m.category_ids) or list(range(m.num_classes))
    names = {cid: predictor.names.get(cid, str(cid)) for cid in ids}
    info = {"checkpoint": Path(checkpoint).name, "runtime": "onnxruntime" if onnx else "pytorch",
            "device": "cpu" if onnx else str(device), "preset": cfg.name,
            "classes": [{"id": cid, "name": name} for cid, name in names.items()],
            "sizes": {"eval_short_side": d.eval_short_side, "eval_max_size": d.eval_max_size,
                      "size_divisibility": d.size_divisibility}}
    if onnx:
        info["sizes"]["onnx_canvas"] = list(model.canvas)
    return DetectionService(predictor, names, info)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), or a one-line UserError (address in use, no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_server(service: DetectionService, options: ServeOptions):
    """(uvicorn.Server, its listening socket): `server.run(sockets=[sock])` serves until `server.should_exit`
    (set by SIGTERM / SIGINT in the main thread, or by a caller in another thread, as the tests do)."""
    import uvicorn

    app = build_app(service, options.check())
    sock = bind(options.host, options.port)
    config = uvicorn.Config(app, log_level="warning", access_log=options.access_log, lifespan="on",
                            timeout_graceful_shutdown=2 * options.timeout + 5)  # uploads + answers in flight
    return uvicorn.Server(config), sock


def serve(service: DetectionService, options: ServeOptions, banner: str = "") -> int:
    """Serve until SIGTERM (exit code 0, everything accepted answered) or Ctrl-C (KeyboardInterrupt)."""
    server, sock = build_server(service, options)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"{banner}serving on {url}/ (page), {url}/v1/detect (API); SIGTERM or Ctrl-C stops", flush=True)
    if not is_loopback(options.host):
        print(f"warning: --host {options.host} is reachable from other machines, and the server has no "
              "authentication", file=sys.stderr, flush=True)
    def stop(signum, frame) -> None:
        """SIGTERM before uvicorn took the signal over (it stops at once), or after its graceful shutdown (uvicorn
        raises the signal again): the process returns normally, with code 0."""
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0 if server.started else 1
