"""A `POST /v1/detect` request read and checked: the image bytes within the upload limit, and its fields.

Two forms, the same fields:

    multipart/form-data       the image as a file part named `image`; fields as form fields or query parameters
    image/* or application/octet-stream     the body is the image; fields as query parameters

Fields: `threshold` (a score in [0, 1], default 0.3 like `predict`), `tile` (tile side in pixels: run the image as
overlapping tiles), `tile_overlap` (a fraction, default 0.2) and `tile_full_image` (also run the whole image:
true / false). Anything else (an unknown field, a value of the wrong type, a field given twice, two images, no
image) is a `RequestError` with a 4xx status and a one-line message.

The body is counted as it arrives and refused (413) as soon as it passes the limit (at once when its
Content-Length says so): a 2 GB upload is never held in memory. Nothing is written to disk: the multipart file
part is kept in memory (the limit bounds it), where Starlette's parser would spill parts over 1 MB to a
temporary file."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from ..predict.tiling import TileOptions

DEFAULT_THRESHOLD = 0.3
FIELDS = ("threshold", "tile", "tile_overlap", "tile_full_image")
MAX_FIELD_BYTES = 1024
"""A form field's value is a number or a word: more is refused (Starlette's parser counts it as it reads)."""
DRAIN_BYTES = 64 * 2**20
"""A body over the limit by at most this much is read to its end (and dropped) before the 413: clients that send
their whole body before reading an answer (urllib, requests) then read the 413 instead of a reset connection. A
larger one is answered at once and its connection closed."""


class RequestError(Exception):
    """A request the server refuses: HTTP `status` (4xx, or 503 / 504) and a one-line message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = " ".join(str(message).split())[:500]  # one line, whatever the cause said
        self.headers = headers or {}
        super().__init__(self.message)


@dataclass(frozen=True)
class DetectRequest:
    """A checked request: the image's bytes (not decoded yet), the name it came with, the options."""

    data: bytes
    filename: str
    threshold: float = DEFAULT_THRESHOLD
    tile: TileOptions | None = None
    """Tile options, not checked yet (`TileOptions.check`): None runs the image whole."""


async def read_detect_request(request: Request, max_bytes: int) -> DetectRequest:
    """Read and check the request (module docstring). Raises RequestError."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        if int(declared) - max_bytes <= DRAIN_BYTES:
            await _discard(request.stream(), DRAIN_BYTES + max_bytes)
        raise _too_large(max_bytes, f"Content-Length {int(declared)}")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, str] = {}
    _add_fields(fields, request.query_params.multi_items(), "query parameter")
    if ctype == "multipart/form-data":
        data, filename = await _read_multipart(request, max_bytes, fields)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data, filename = await _read_body(request, max_bytes), "upload"
    else:
        raise RequestError(415, f"Content-Type {ctype or '(none)'!r}: send the image as a multipart/form-data "
                                "file part named 'image', or as the body with Content-Type image/* or "
                                "application/octet-stream")
    if not data:
        raise RequestError(400, "the image is empty (0 bytes)")
    return DetectRequest(data, filename, **parse_fields(fields))


def parse_fields(fields: dict[str, str]) -> dict:
    """Field texts -> `DetectRequest` keyword arguments, each value checked. Raises RequestError (400)."""
    threshold = _number(fields, "threshold", float, DEFAULT_THRESHOLD)
    if not 0.0 <= threshold <= 1.0:
        raise RequestError(400, f"threshold {threshold:g}: must be a score between 0 and 1")
    tile = None
    if "tile" in fields:
        size = _number(fields, "tile", int, 0)
        tile = TileOptions(int(size), overlap=_number(fields, "tile_overlap", float, TileOptions.overlap),
                           full_image=_boolean(fields, "tile_full_image", TileOptions.full_image))
    elif "tile_overlap" in fields or "tile_full_image" in fields:
        raise RequestError(400, "tile_overlap and tile_full_image need tile (the tile side in pixels)")
    return {"threshold": threshold, "tile": tile}


# ------------------------------------------------------------------------------------------------ the body
async def _limited(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, stopped with 413 as soon as more than `max_bytes` arrived."""
    seen = 0
    stream = request.stream()
    async for chunk in stream:
        seen += len(chunk)
        if seen > max_bytes:
            await _discard(stream, DRAIN_BYTES)
            raise _too_large(max_bytes, "the body")
        yield chunk


async def discard_body(request: Request, budget: int = DRAIN_BYTES) -> None:
    """Read and drop a request's body, up to `budget` bytes: before an answer that refuses it (503), so that a
    client that sends its whole body before reading reads the answer instead of a reset connection."""
    with contextlib.suppress(ClientDisconnect):
        await _discard(request.stream(), budget)


async def _discard(stream: AsyncIterator[bytes], budget: int) -> None:
    """Read and drop the rest of the body, up to `budget` bytes (`DRAIN_BYTES`)."""
    async for chunk in stream:
        budget -= len(chunk)
        if budget < 0:
            return


async def _read_body(request: Request, max_bytes: int) -> bytes:
    return b"".join([chunk async for chunk in _limited(request, max_bytes)])


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with its file parts never spilled to disk: the spool holds up to the upload
    limit in memory, and the body stream stops at that limit, so the spool never rolls over to a file."""

    def __init__(self, request: Request, max_bytes: int) -> None:
        super().__init__(request.headers, _limited(request, max_bytes), max_files=1, max_fields=len(FIELDS),
                         max_part_size=MAX_FIELD_BYTES)
        self.spool_max_size = max_bytes + 1


async def _read_multipart(request: Request, max_bytes: int, fields: dict[str, str]) -> tuple[bytes, str]:
    try:
        form = await _InMemoryParser(request, max_bytes).parse()
    except MultiPartException as e:
        raise RequestError(400, f"malformed multipart/form-data: {e.message}") from None
    try:
        image: UploadFile | None = None
        texts = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "image":
                    raise RequestError(400, f"file part {_short(name)!r}: the image goes in a file part named "
                                            "'image', the fields as values")
                image = value
            else:
                texts.append((name, value))
        _add_fields(fields, texts, "form field")
        if image is None:
            raise RequestError(400, "no image: send it as a file part named 'image'")
        data = await image.read()
        return data, _safe_name(image.filename or "upload")
    finally:
        await form.close()


# ------------------------------------------------------------------------------------------------ fields
def _add_fields(fields: dict[str, str], items: list[tuple[str, str]], kind: str) -> None:
    for name, value in items:
        if name not in FIELDS:
            raise RequestError(400, f"unknown {kind} {_short(name)!r}: the fields are {', '.join(FIELDS)}")
        if name in fields:
            raise RequestError(400, f"{kind} {name!r} given twice")
        fields[name] = value


def _number(fields: dict[str, str], name: str, kind: type, default: float) -> float:
    if name not in fields:
        return default
    text = fields[name].strip()
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise RequestError(400, f"{name} {_short(text)!r}: expected {what}") from None
    if not math.isfinite(value):
        raise RequestError(400, f"{name} {_short(text)!r}: expected a finite number")
    return value


def _boolean(fields: dict[str, str], name: str, default: bool) -> bool:
    if name not in fields:
        return default
    text = fields[name].strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise RequestError(400, f"{name} {_short(text)!r}: expected true or false")


def _too_large(max_bytes: int, what: str) -> RequestError:
    return RequestError(413, f"{what} is over the upload limit of {max_bytes / 1e6:g} MB (--max-upload-mb)")


def _safe_name(name: str) -> str:
    """The client's file name as `file` in the answer: its last path part, at most 200 characters, one line."""
    return _short(name.replace("\\", "/").rsplit("/", 1)[-1], 200) or "upload"


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
