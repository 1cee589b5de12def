"""Video and webcam frames in, annotated video out, through PyAV (the optional `video` extra).

PyAV is imported only here and only when a video is used, so that images need nothing more; without it a video
input is a one-line `UserError` saying what to install. Frames come out as uint8 RGB [H, W, 3] one at a time
(a video is never held in memory). Webcams are FFmpeg capture devices: v4l2 on Linux, avfoundation on macOS."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

VIDEO_EXTRA = "pip install 'dynamic-detr[video]'"
DEFAULT_FPS = 25.0
"""The frame rate written when the input does not say its own."""


def require_av(what: str) -> Any:
    """The `av` module, or a UserError naming `what` (the video or webcam) and the extra to install."""
    try:
        import av
    except ImportError:
        raise UserError(f"{what}: reading video needs PyAV, the optional video extra: {VIDEO_EXTRA}") from None
    return av


def _errors(av: Any) -> tuple[type[BaseException], ...]:
    return (av.FFmpegError, OSError, ValueError)


def _reason(e: BaseException) -> str:
    return (str(e).strip() or type(e).__name__).splitlines()[0][:200]


def webcam_device(index: int) -> tuple[str, str]:
    """FFmpeg's (input name, format) of webcam `index` on this platform; a UserError where none can exist."""
    if sys.platform.startswith("linux"):
        device = Path(f"/dev/video{index}")
        if not device.exists():
            raise UserError(f"webcam {index}: no camera ({device} does not exist)")
        return str(device), "v4l2"
    if sys.platform == "darwin":
        return str(index), "avfoundation"
    raise UserError(f"webcam {index}: webcams are read on Linux (v4l2) and macOS (avfoundation) only; "
                    f"record a video file and give its path")


class VideoReader:
    """Frames of a video file or webcam: `frames` (count, None when the file does not say or for a webcam),
    `fps`, and iteration over (uint8 [H, W, 3] RGB, time in s). Decoding errors are UserErrors naming `name`."""

    def __init__(self, source: str | Path, name: str, fmt: str | None = None) -> None:
        self.av = require_av(name)
        self.name = name
        try:
            self.container = self.av.open(str(source), format=fmt)
        except _errors(self.av) as e:
            raise UserError(f"{name}: cannot open video ({_reason(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise UserError(f"{name}: no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.frames = int(self.stream.frames) or None
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else DEFAULT_FPS

    def __iter__(self) -> Iterator[tuple[np.ndarray, float | None]]:
        index = 0
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="rgb24"), frame.time
                index += 1
        except _errors(self.av) as e:
            raise UserError(f"{self.name}: cannot decode frame {index} ({_reason(e)})") from None
        finally:
            self.close()

    def close(self) -> None:
        self.container.close()


class VideoWriter:
    """Frames (uint8 [H, W, 3] RGB, all of one size) to a video file: H.264 when this FFmpeg has an encoder for
    it, MPEG-4 Part 2 otherwise. Odd sides are padded by one black pixel (4:2:0 chroma needs even ones)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.av = require_av(str(path))
        self.path = path
        self.fps = Fraction(fps).limit_denominator(1001)
        self.container: Any = None
        self.stream: Any = None

    def _open(self, height: int, width: int) -> None:
        self.container = self.av.open(str(self.path), mode="w")
        codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
        self.stream = self.container.add_stream(codec, rate=self.fps)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray) -> None:
        if self.container is None:
            self._open(*rgb.shape[:2])
        h, w = rgb.shape[:2]
        if (h % 2, w % 2) != (0, 0):
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and write the file's trailer (a video is playable only after this)."""
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None
