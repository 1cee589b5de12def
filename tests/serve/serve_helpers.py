"""What the server tests share: a live server on 127.0.0.1 in a thread of the test process (`live_server`), an
HTTP client over real sockets (`post_image`, `get`, `raw_request`), a model stand-in that counts its batches
(`FakeDetector`), and test images as bytes."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from dynamic_detr.serve.app import DetectionService, ServeOptions
from dynamic_detr.serve.server import build_server

NAMES = {3: "square", 7: "disc"}


@contextlib.contextmanager
def live_server(service: DetectionService, **options: Any) -> Iterator[str]:
    """Serve `service` on 127.0.0.1, a port the OS picks, from a thread; yields the base URL. Stopped as SIGTERM
    stops it (uvicorn's graceful shutdown, then the lifespan's drain)."""
    server, sock = build_server(service, ServeOptions(host="127.0.0.1", port=0, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _send(request: urllib.request.Request, timeout: float) -> Answer:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def get(url: str, timeout: float = 30) -> Answer:
    return _send(urllib.request.Request(url), timeout)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: `fields` name -> text, `files` name -> (filename, bytes)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post_image(base: str, data: bytes, filename: str = "image.png", timeout: float = 60, **fields: Any) -> Answer:
    """POST /v1/detect as the page and `curl -F image=@FILE -F key=value` send it."""
    body, ctype = multipart({k: str(v) for k, v in fields.items()}, {"image": (filename, data)})
    request = urllib.request.Request(f"{base}/v1/detect", data=body, headers={"Content-Type": ctype})
    return _send(request, timeout)


def post_raw(base: str, data: bytes, content_type: str = "image/png", query: str = "",
             timeout: float = 60) -> Answer:
    """POST /v1/detect with the image as the body, fields as query parameters."""
    request = urllib.request.Request(f"{base}/v1/detect{query}", data=data, headers={"Content-Type": content_type})
    return _send(request, timeout)


def raw_request(base: str, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send `head` (request line and headers, without the blank line) and `body` on a socket, read the answer to
    the end (the server closes or Content-Length is reached): for what urllib will not send (a Content-Length
    the body does not have, a chunked body)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"the server closed without an answer: {data!r}"
            data += chunk
        head_bytes, rest = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def png(width: int = 160, height: int = 120, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A noise image of that size, encoded (PNG, or JPEG with fmt="JPEG")."""
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def flat_png(width: int, height: int) -> bytes:
    """A one-colour image: tiny as PNG whatever its size (for the pixel and aspect limits)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 90, 90)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class FakeDetector:
    """Stands in for `Predictor`: each image gets one box, its own extent [0, 0, w, h] with score 0.9 (category 3)
    and [0, 0, w / 2, h / 2] with score 0.2 (category 7), so an answer shows which image it was computed on.
    Records every call's image sizes (and counts the calls `finished`); sleeps `delay` seconds per call; raises
    `fail` once when set."""

    delay: float = 0.0
    fail: Exception | None = None
    calls: list[list[tuple[int, int]]] = field(default_factory=list)
    finished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with self.lock:
            self.calls.append([(int(i.shape[-2]), int(i.shape[-1])) for i in images])
        time.sleep(self.delay)
        self.finished += 1
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        out = []
        for img in images:
            h, w = img.shape[-2:]
            out.append({"boxes": torch.tensor([[0.0, 0.0, w, h], [0.0, 0.0, w / 2, h / 2]]),
                        "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([3, 7])})
        return out

    @property
    def batch_sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


def fake_service(detector: FakeDetector) -> DetectionService:
    info = {"checkpoint": "fake", "runtime": "fake", "device": "cpu", "preset": "none",
            "classes": [{"id": i, "name": n} for i, n in NAMES.items()], "sizes": {}}
    return DetectionService(detector, NAMES, info)


def wait_for(predicate, timeout: float = 20.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
