"""An uploaded image's bytes -> the uint8 [3, H, W] tensor the model takes, or a 4xx `RequestError`.

The header is read first, so that a refused image costs no decoding: bytes that are no image format Pillow
reads (415), more pixels than `max_pixels` (413: a small compressed file can decode to gigabytes), an aspect
ratio over `data.validate.MAX_ASPECT_RATIO`:1 (422, as `predict` and the datasets refuse it). Then the whole
image is decoded as `predict` reads URLs (`data.image_io.decode_image_bytes`: EXIF orientation applied, any mode
to RGB): a truncated or corrupt file is 422. Runs in a worker thread of the server, never on its event loop."""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image, UnidentifiedImageError

from ..data.image_io import ImageReadError, decode_image_bytes
from ..data.validate import aspect_problem
from .request import RequestError

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest image decoded (width x height): 40 megapixels (8000 x 5000), 120 MB as RGB."""


def decode_upload(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """The upright RGB image of `data`; raises RequestError (415 / 413 / 422) naming `name` and the problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: the pixel limit below decides
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except UnidentifiedImageError:
        raise RequestError(415, f"{name}: not an image (no format Pillow reads: PNG, JPEG, WebP, BMP, ...)") from None
    except Image.DecompressionBombError:
        raise RequestError(413, f"{name}: too many pixels (over Pillow's decompression-bomb limit)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise RequestError(422, f"{name}: cannot read the image header ({e})") from None
    if width * height > max_pixels:
        raise RequestError(413, f"{name}: a {width}x{height} image has {width * height / 1e6:.1f} megapixels, over "
                                f"the limit of {max_pixels / 1e6:g} (--max-megapixels)")
    problem = aspect_problem(width, height)  # an EXIF rotation swaps the sides, not the ratio
    if problem:
        raise RequestError(422, f"{name}: {problem}")
    try:
        image = decode_image_bytes(data, name)
    except ImageReadError as e:
        raise RequestError(422, str(e)) from None
    return image.as_subclass(torch.Tensor)
