"""`predict`'s outputs: detections of streamed images and video frames, drawn and written as they come.

    OUT/<name>.png + OUT/<name>.json     an image: boxes drawn; its detections
    OUT/<name>.mp4 + OUT/<name>.json     a video or webcam: every frame drawn; one JSON with a list of frames

The model is any callable with `Predictor.__call__`'s contract (uint8 [3, H, W] images -> per image `boxes`,
`scores`, `labels`), so another runtime can use the same outputs. Only `batch_size` decoded images are held at a
time, and a video's JSON is written frame by frame: memory does not grow with the number of inputs or frames.
Every path written is checked to lie inside OUT (a name that would leave it is a UserError, nothing written). An
image's files are written atomically; a video and its JSON grow under hidden `.partial` names and take their own
names when closed, at the end or on Ctrl-C / SIGTERM, so a file under its final name is always complete."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from ..data.sources import Item, Skipped, VideoStream
from ..errors import UserError
from ..fileio import atomic_write, atomic_write_text
from ..visualize import draw_detections

Detect = Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]]


@dataclass
class PredictSummary:
    """What a run wrote, and the one-line messages of the inputs it skipped."""

    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    """Ctrl-C or SIGTERM stopped the run: an open video and its JSON were closed where it stopped (both stay
    readable); the images of the unfinished batch were dropped."""


def write_predictions(detect: Detect, names: dict[int, str], items: Iterable[Item | Skipped], out: Path,
                      threshold: float, batch_size: int = 4) -> PredictSummary:
    """Run `detect` over `items` (`data.sources.iter_items`) `batch_size` at a time and write the outputs."""
    summary = PredictSummary()
    chunk: list[Item] = []
    video: _VideoOutput | None = None

    def flush() -> None:
        nonlocal video
        results = detect([item.image for item in chunk])
        for item, res in zip(chunk, results, strict=True):
            dets = detections_json(res, threshold, names)
            drawn = draw_detections(item.image, res["boxes"], res["scores"], res["labels"], names, threshold)
            summary.detections += len(dets)
            if item.video is None:
                _write_image(out, item, drawn, dets, threshold)
                summary.images += 1
                continue
            if video is None or video.stream is not item.video:
                if video is not None:
                    video.close()
                video = _VideoOutput(out, item, threshold)
                summary.videos += 1
            video.write(item, drawn, dets)
            summary.frames += 1
        chunk.clear()

    try:
        with _sigterm_as_interrupt():
            for item in items:
                if isinstance(item, Skipped):
                    summary.failed.append(item.message)
                    continue
                chunk.append(item)
                if len(chunk) == batch_size:
                    flush()
            if chunk:
                flush()
    except KeyboardInterrupt:  # the way to end a webcam (or a run told to stop): close what is open, report
        summary.interrupted = True
    finally:
        if video is not None:
            video.close()
    return summary


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a supervisor, `kill`, a container stopping) ends the run as Ctrl-C does: open outputs are closed,
    not left half-written. Only in the main thread (signal handlers cannot be set elsewhere)."""
    def handler(signum, frame) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _write_image(out: Path, item: Item, drawn: torch.Tensor, dets: list[dict], threshold: float) -> None:
    from PIL import Image

    png, record_path = _output_path(out, item, ".png"), _output_path(out, item, ".json")
    picture = Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy())
    atomic_write(png, lambda tmp: picture.save(tmp, format="PNG"))
    record = image_json(item.origin, item.image.shape[-2], item.image.shape[-1], threshold, dets)
    atomic_write_text(record_path, json.dumps(record, indent=1))


def _output_path(out: Path, item: Item, suffix: str) -> Path:
    """`out/<name><suffix>`, refused (UserError) unless it lies inside `out`, through `..` and symlinks: a drawing
    must never replace a file elsewhere, such as an input (`data.sources` makes names safe; this is the last check)."""
    path = out / (item.name + suffix)
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(out)):
        raise UserError(f"{item.origin}: output {path} would be written outside {out}; refused")
    return path


class _VideoOutput:
    """One video's drawn frames (`<name>.mp4`) and its JSON, `{"file", "width", "height", "fps", "threshold",
    "frames": [{"frame", "time", "detections"}, ...]}`, written one frame at a time."""

    def __init__(self, out: Path, first: Item, threshold: float) -> None:
        from ..data.video import VideoWriter

        assert first.video is not None
        self.stream: VideoStream = first.video
        self.video, self.record = _output_path(out, first, ".mp4"), _output_path(out, first, ".json")
        self.video.parent.mkdir(parents=True, exist_ok=True)
        self.writer = VideoWriter(_partial(self.video), self.stream.fps)
        head = {"file": first.origin, "height": int(first.image.shape[-2]), "width": int(first.image.shape[-1]),
                "fps": round(self.stream.fps, 3), "threshold": threshold}
        self.json: IO[str] = _partial(self.record).open("w")
        self.json.write(json.dumps(head)[:-1] + ', "frames": [')
        self.count = 0

    def write(self, item: Item, drawn: torch.Tensor, dets: list[dict]) -> None:
        self.writer.write(drawn.permute(1, 2, 0).contiguous().numpy())
        time = None if item.time is None else round(item.time, 3)
        self.json.write(("," if self.count else "") + "\n"
                        + json.dumps({"frame": item.frame, "time": time, "detections": dets}))
        self.count += 1

    def close(self) -> None:
        """Finish both files and give them their names (the video is playable and the JSON valid only now)."""
        self.writer.close()
        self.json.write("\n]}\n")
        self.json.close()
        if self.count:  # no frame: no video file was started
            os.replace(_partial(self.video), self.video)
        os.replace(_partial(self.record), self.record)


def _partial(path: Path) -> Path:
    """The hidden name a streamed output grows under (same suffix: the video container is chosen by it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def detections_json(result: dict[str, torch.Tensor], threshold: float, names: dict[int, str]) -> list[dict]:
    """One image's detections at or above `threshold` as `predict` writes them (and `serve` answers them): box
    xyxy in the image's pixels, score, category_id, category; in the result's order (highest score first)."""
    keep = result["scores"] >= threshold
    out = []
    for box, score, label in zip(result["boxes"][keep], result["scores"][keep], result["labels"][keep],
                                 strict=True):
        cat = int(label)
        out.append({"box": [round(float(v), 2) for v in box], "score": round(float(score), 4), "category_id": cat,
                    "category": names.get(cat, str(cat))})
    return out


def image_json(file: str, height: int, width: int, threshold: float, detections: list[dict]) -> dict[str, Any]:
    """The JSON of one image (`predict`'s OUT/<name>.json, `serve`'s answer)."""
    return {"file": file, "height": int(height), "width": int(width), "threshold": threshold,
            "detections": detections}
