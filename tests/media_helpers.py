"""Small synthetic media for the tests of `predict`'s sources: PNG bytes and a few-frame video."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def png_bytes(size: tuple[int, int] = (24, 16), color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (64, 48), fps: int = 10) -> None:
    """A red square moving over grey, `frames` frames of `size` (w, h), written with PyAV directly (MPEG-4 Part
    2: every FFmpeg build has its encoder). Skips the test without PyAV (the `video` extra)."""
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            rgb = np.full((size[1], size[0], 3), 120, dtype=np.uint8)
            rgb[10:26, 4 + 6 * i:20 + 6 * i] = (220, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
