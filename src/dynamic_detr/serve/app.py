"""The HTTP application: routes, admission, answers. Starlette (ASGI), run by uvicorn (`serve/server.py`).

    GET  /            the web page (`page.html`): drop or pick an image, see its boxes, a threshold slider
    GET  /health      {"status": "ok", "in_flight": n, "waiting": n, "batches": {batch size: how many run}}
    GET  /v1/model    classes, eval sizes, preset, runtime, and the server's limits
    POST /v1/detect   an image (`serve/request.py`) -> `predict`'s JSON of one image

A detect request counts as in flight from its arrival to its answer; with `queue_size` in flight, one more is
answered 503 with Retry-After, its body dropped as it arrives, never decoded nor queued, so memory stays bounded
(`queue_size` x (upload limit + decoded image)) and no request waits forever. Each phase has a deadline: the
upload (408), then decoding and the model (504). Every error is JSON `{"error": "<one line>"}` with a 4xx / 5xx
status, and the server goes on."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import UserError
from ..predict.tiling import TiledPredictor, TileOptions
from ..predict.writer import detections_json, image_json
from .batcher import Batcher, Closed, Detections, QueueFull
from .decode import DEFAULT_MAX_PIXELS, decode_upload
from .request import DEFAULT_THRESHOLD, FIELDS, RequestError, discard_body, read_detect_request

RETRY_AFTER_S = 1
"""What a 503 tells the client to wait before trying again (seconds): about one batch of the model."""


@dataclass
class ServeOptions:
    """The server's settings (`dynamic-detr serve`'s flags)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8
    """Most images in one forward pass."""
    gather_ms: float = 5.0
    """How long the model thread waits for more requests after the first of a batch."""
    queue_size: int = 32
    """Most detect requests in flight (reading, waiting, in the model); one more is answered 503."""
    timeout: float = 30.0
    """Seconds a request may take to upload, and again to be decoded and answered (408 / 504 past them)."""
    max_upload_mb: float = 20.0
    max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6
    access_log: bool = False

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)

    def check(self) -> ServeOptions:
        """Raise UserError naming the flag of a value out of range."""
        for flag, value, low in (("--max-batch", self.max_batch, 1), ("--queue-size", self.queue_size, 1),
                                 ("--gather-ms", self.gather_ms, 0), ("--timeout", self.timeout, 0.001),
                                 ("--max-upload-mb", self.max_upload_mb, 0.001),
                                 ("--max-megapixels", self.max_megapixels, 0.001), ("--port", self.port, 0)):
            if not value >= low:
                raise UserError(f"{flag} must be at least {low}, got {value}")
        if self.port > 65535:
            raise UserError(f"--port must be at most 65535, got {self.port}")
        return self


class DetectionService:
    """The model behind the server: runs a batch of images for the `Batcher`, whole with `detect`, or tiled
    (`predict.tiling.TiledPredictor` over `detect`) when a request asks for tiles; describes itself for
    /v1/model.

    `detect` is anything with `Predictor.__call__`'s contract (uint8 [3, H, W] images -> per image `boxes`,
    `scores`, `labels`); `names` maps category ids to class names; `info` is what /v1/model reports."""

    def __init__(self, detect: Callable[[list[torch.Tensor]], Detections], names: dict[int, str],
                 info: dict[str, Any]) -> None:
        self.detect = detect
        self.names = names
        self.info = info

    @staticmethod
    def batch_key(tile: TileOptions | None) -> Hashable:
        """A request's batch key: None (whole images) or its tile options, checked (RequestError 400). Only
        requests of one key share a batch: tiled ones never run with whole ones."""
        if tile is not None:
            try:
                tile.check()
            except UserError as e:
                raise RequestError(400, str(e)) from None
        return tile

    def run(self, key: Hashable, images: list[torch.Tensor]) -> Detections:
        if key is None:
            return self.detect(images)
        assert isinstance(key, TileOptions)
        return TiledPredictor(self.detect, key)(images)


def build_app(service: DetectionService, options: ServeOptions) -> Starlette:
    """The Starlette application; its lifespan starts the model thread and, at shutdown (after uvicorn has let
    the requests in flight finish), drains and stops it."""
    batcher = Batcher(service.run, options.max_batch, options.gather_ms, options.queue_size)
    state = {"in_flight": 0, "answered": 0}
    page_html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html)

    async def health(request: Request) -> Response:
        sizes = dict(batcher.stats.sizes)  # one C-level copy: the model thread may be counting a batch
        return JSONResponse({"status": "ok", "in_flight": state["in_flight"], "waiting": batcher.waiting,
                             "batches": {str(size): n for size, n in sorted(sizes.items())}})

    async def model_info(request: Request) -> Response:
        limits = {"max_upload_bytes": options.max_bytes, "max_megapixels": options.max_megapixels,
                  "max_batch": options.max_batch, "queue_size": options.queue_size, "timeout_s": options.timeout,
                  "default_threshold": DEFAULT_THRESHOLD, "fields": list(FIELDS)}
        return JSONResponse({**service.info, "limits": limits})

    async def detect(request: Request) -> Response:
        if state["in_flight"] >= options.queue_size:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(options.timeout):
                    await discard_body(request, options.max_bytes)  # dropped as it arrives, never decoded
            raise RequestError(503, f"busy: {options.queue_size} requests in flight (--queue-size); retry later",
                               {"Retry-After": str(RETRY_AFTER_S)})
        state["in_flight"] += 1
        try:
            return JSONResponse(await _detect(request))
        finally:
            state["in_flight"] -= 1
            state["answered"] += 1

    async def _detect(request: Request) -> dict[str, Any]:
        try:
            async with asyncio.timeout(options.timeout):
                req = await read_detect_request(request, options.max_bytes)
        except TimeoutError:
            raise RequestError(408, f"the upload did not finish within {options.timeout:g} s (--timeout)") from None
        except ClientDisconnect:  # nobody reads this answer; it keeps the traceback out of the log
            raise RequestError(400, "the client disconnected during the upload") from None
        key, filename, threshold = service.batch_key(req.tile), req.filename, req.threshold
        deadline = asyncio.get_running_loop().time() + options.timeout  # decoding and the model, together
        try:
            async with asyncio.timeout_at(deadline):
                image = await run_in_threadpool(decode_upload, req.data, filename, int(options.max_megapixels * 1e6))
        except TimeoutError:
            raise RequestError(504, f"decoding took over {options.timeout:g} s (--timeout)") from None
        del req  # the upload's bytes are not kept while the image waits for the model
        return await _answer(image, key, filename, threshold, deadline)

    async def _answer(image: torch.Tensor, key: Hashable, filename: str, threshold: float,
                      deadline: float) -> dict[str, Any]:
        try:
            future = batcher.submit(image, key)
        except QueueFull as e:
            raise RequestError(503, f"busy: {e}; retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None
        except Closed as e:
            raise RequestError(503, str(e), {"Retry-After": str(RETRY_AFTER_S)}) from None
        try:
            async with asyncio.timeout_at(deadline):
                result = await asyncio.wrap_future(future)  # cancelled on timeout: a job not started is dropped
        except TimeoutError:
            raise RequestError(504, f"no answer from the model within {options.timeout:g} s (--timeout); "
                                    f"{batcher.waiting} request(s) waiting") from None
        except Exception as e:  # the model failed on this batch (the batcher printed the traceback)
            raise RequestError(500, f"the model failed: {type(e).__name__}: {e}") from None
        return image_record(result, filename, image.shape[-2], image.shape[-1], threshold, service.names)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        yield
        stopped = await run_in_threadpool(batcher.close, options.timeout)
        sizes = ", ".join(f"{n} x {size}" for size, n in sorted(batcher.stats.sizes.items()))
        print(f"stopped: {state['answered']} detect request(s) answered, batches: {sizes or 'none'}"
              + ("" if stopped else "; the model thread was still busy"), file=sys.stderr, flush=True)

    routes = [Route("/", page), Route("/health", health), Route("/v1/model", model_info),
              Route("/v1/detect", detect, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={RequestError: _request_error, HTTPException: _http_error,
                                        Exception: _server_error})
    app.state.batcher = batcher
    return app


def image_record(result: dict[str, torch.Tensor], filename: str, height: int, width: int, threshold: float,
                 names: dict[int, str]) -> dict[str, Any]:
    """The JSON `predict` writes for one image (`predict/writer.py`): file, height, width, threshold, detections
    (box xyxy in the image's pixels, score, category_id, category), highest score first."""
    return image_json(filename, height, width, threshold, detections_json(result, threshold, names))


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: still one line of JSON for the client (Starlette re-raises it after, for the log)."""
    return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, 500)


async def _http_error(request: Request, exc: Exception) -> Response:
    """The router's own errors (404 unknown path, 405 wrong method) as JSON too."""
    assert isinstance(exc, HTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)
