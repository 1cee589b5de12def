"""Reading images as upright 8-bit RGB, whatever the file holds, with one-line errors naming the file.

EXIF orientation is applied (COCO boxes are in the upright frame); grayscale, palette, CMYK and RGBA
(alpha dropped) become RGB; 16-bit and 32-bit integer images are scaled to 8 bits by their bit depth.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import tv_tensors

from ..errors import DatasetError

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


class ImageReadError(DatasetError):
    """An image file is missing, unreadable or does not decode."""


@dataclass(frozen=True)
class ImageProbe:
    """What the header says: size in the upright (EXIF-applied) frame, PIL mode, EXIF orientation."""

    width: int
    height: int
    mode: str
    format: str | None
    orientation: int


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if "truncated" in msg.lower():
        return "truncated file"
    if isinstance(e, UnidentifiedImageError):
        return "not an image file, or an unsupported format"
    if isinstance(e, zlib.error):
        return f"corrupt compressed data ({msg})"
    return msg.splitlines()[0][:200]


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError(f"{path}: cannot read image (permission denied)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({_reason(e)})") from None


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not make a readable image unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def probe_image(path: Path, decode: bool = True) -> ImageProbe:
    """Header read (size, mode, EXIF orientation); with `decode`, also decode the whole stream to prove it is
    intact (JPEGs are decoded at 1/8 scale: every byte is still read, at a fraction of the cost)."""
    path = Path(path)
    with _open(path) as img:
        orientation = _orientation(img)
        w, h = img.size
        mode, fmt = img.mode, img.format
        if decode:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if fmt == "JPEG":
                        img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                    img.load()
            except _DECODE_ERRORS as e:
                raise ImageReadError(f"{path}: cannot decode image ({_reason(e)})") from None
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return ImageProbe(width=w, height=h, mode=mode, format=fmt, orientation=orientation)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """[H, W, 3] uint8 from any PIL mode."""
    if img.mode == "RGB":
        return np.array(img)  # a writable copy (torch.from_numpy warns on read-only arrays)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            peak = 1.0 if a.size and np.nanmax(a) <= 1.0 else 255.0
        elif img.mode == "I" and (a.size == 0 or a.max() <= 255):
            peak = 255.0  # 8-bit values stored in a 32-bit mode
        elif img.mode == "I" and a.max() > 65535:
            peak = float(2**32 - 1)
        else:
            peak = 65535.0
        g = np.clip(np.nan_to_num(a) * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    return np.array(img.convert("RGB"))


def read_image(path: Path) -> tv_tensors.Image:
    """The upright image as `tv_tensors.Image` uint8 [3, H, W]. Raises ImageReadError naming the file."""
    path = Path(path)
    with _open(path) as img:
        return _decode(img, str(path))


def decode_image_bytes(data: bytes, name: str) -> tv_tensors.Image:
    """`read_image` for an image held in memory (e.g. downloaded); `name` (its URL) goes into the messages."""
    try:
        img = Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{name}: cannot decode image ({_reason(e)})") from None
    with img:
        return _decode(img, name)


def _decode(img: Image.Image, name: str) -> tv_tensors.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-with-transparency notes
            img.load()
            upright = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
            arr = _to_rgb_array(upright)
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{name}: cannot decode image ({_reason(e)})") from None
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    return tv_tensors.Image(t)
