"""What `predict` reads: image files, folders (recursive), globs, http(s) URLs, video files and webcams.

`resolve_sources` turns the command line's inputs into `Source`s (paths and names only, nothing decoded: a folder
of 100,000 images is 100,000 short strings), reporting inputs that name nothing; `iter_items` then decodes them
one at a time and yields an `Item` per image or video frame, or a `Skipped` naming the input and the problem, so
that memory holds one image (one frame) per item however many there are, and a bad input never stops the run.

Output names mirror the input: `a.jpg` -> `a`, a folder's `sub/b.png` -> `sub/b` (relative to the folder; a
glob's matches relative to the folder before its first wildcard), a URL -> the last part of its path, a video
`clip.mp4` -> `clip`, webcam 0 -> `webcam0`. A name never leaves the output folder (no `..`, no absolute part:
an input outside its glob's root gets its file name only). Names are made unique (`a`, `a_1`, ...) ignoring
letter case, so no two inputs write the same file on any file system."""

from __future__ import annotations

import glob
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from ..errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
URL_TIMEOUT_S = 30.0
"""Seconds to wait for a URL's server (to connect, then between reads)."""
URL_MAX_BYTES = 64 * 2**20
"""A URL's body is read into memory up to this size; a bigger one is reported and skipped."""
URL_DEADLINE_S = 120.0
"""Seconds a URL's whole download may take: a server that sends a byte now and then is skipped, not waited on."""
URL_MAX_STEM = 100
"""Characters of a URL's last path part kept for its output names (file systems refuse names over 255 bytes)."""

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Source:
    """One input to read. `kind`: "image" (a file), "url", "video" (a file) or "webcam" (`origin` its index)."""

    kind: str
    origin: str
    """The file, URL or webcam index as given; messages and the output JSON name it."""
    name: str
    """Output path relative to the output folder, without a suffix (`sub/b`)."""


@dataclass
class Item:
    """An image, or one frame of a video or webcam (`video` set: the same object for all frames of one source)."""

    name: str
    origin: str
    image: torch.Tensor
    """uint8 [3, H, W]."""
    video: VideoStream | None = None
    frame: int = 0
    time: float | None = None


@dataclass(eq=False)
class VideoStream:
    """What a video's outputs need besides its frames."""

    fps: float


@dataclass(frozen=True)
class Skipped:
    """An input (or the rest of a video) that could not be read: one line naming it and the problem."""

    message: str


@dataclass
class Sources:
    """The resolved inputs, the inputs that named nothing (messages), and the number of items `iter_items` will
    yield when it is known (None with a webcam or a video whose file does not say its frame count)."""

    sources: list[Source]
    missing: list[str]
    total: int | None

    def local_files(self) -> list[Path]:
        return [Path(s.origin) for s in self.sources if s.kind in ("image", "video")]


def resolve_sources(inputs: Iterable[str], out: Path | None = None) -> Sources:
    """Expand `inputs`. Folders are walked recursively (sorted; image files only; hidden entries and the output
    folder `out` are left out, so a second run never reads the first one's drawings); globs expand with `**`.
    A path that does not exist, a folder without images or a glob matching nothing is reported in `missing`.
    Video files are opened (header only) for their frame count: without PyAV that is a UserError."""
    sources: list[Source] = []
    missing: list[str] = []
    used: set[str] = set()
    skip = _resolved(out) if out is not None else None

    def add(kind: str, origin: str, name: str) -> None:
        sources.append(Source(kind, origin, unique_name(name, used)))

    for text in inputs:
        path = Path(text)
        if text.lower().startswith(("http://", "https://")):
            try:
                url_path = urllib.parse.urlsplit(text).path
            except ValueError as e:  # e.g. "Invalid IPv6 URL" for http://[oops/a.png
                missing.append(f"{text}: not a valid URL ({e})")
                continue
            if Path(url_path).suffix.lower() in VIDEO_SUFFIXES:
                missing.append(f"{text}: videos are read from files only: download it first")
            else:
                add("url", text, _url_stem(text))
        elif path.is_dir():
            found = list(_walk(path, None if _inside(path, skip) else skip))
            if not found:
                missing.append(f"{text}: no image files in this folder or its sub-folders")
            for p in found:
                add("image", str(p), _relative_name(p, path))
        elif path.exists():
            add("video" if path.suffix.lower() in VIDEO_SUFFIXES else "image", text, path.stem)
        elif _GLOB_CHARS.search(text):
            root = _glob_root(text)
            leave_out = None if _inside(root, skip) else skip  # inputs inside `out`: refused later, not hidden
            matches = sorted(p for p in map(Path, glob.iglob(text, recursive=True))
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
                             and not _inside(p, leave_out))
            if not matches:
                missing.append(f"{text}: the pattern matches no image or video file")
            for p in matches:
                add("video" if p.suffix.lower() in VIDEO_SUFFIXES else "image", str(p), _relative_name(p, root))
        elif text.isdigit():
            add("webcam", text, f"webcam{int(text)}")
        elif "://" in text:
            missing.append(f"{text}: unsupported URL scheme (http and https only)")
        else:
            missing.append(f"{text}: no such file or folder")
    total: int | None = 0
    for s in sources:
        count = _frame_count(s) if s.kind in ("video", "webcam") else 1
        total = None if total is None or count is None else total + count
    return Sources(sources, missing, total)


def iter_items(sources: Iterable[Source]) -> Iterator[Item | Skipped]:
    """Decode `sources` one at a time: an `Item` per image or frame, a `Skipped` per input that fails (a video
    that fails part-way yields its frames so far, then a `Skipped` for the rest)."""
    from .validate import aspect_problem

    for source in sources:
        if source.kind in ("video", "webcam"):
            yield from _frames(source)
            continue
        try:
            image = _read_url(source.origin) if source.kind == "url" else _read_file(Path(source.origin))
        except UserError as e:
            yield Skipped(str(e))
            continue
        except MemoryError:
            yield Skipped(f"{source.origin}: image too large to decode in memory")
            continue
        problem = aspect_problem(int(image.shape[-1]), int(image.shape[-2]))
        if problem:
            yield Skipped(f"{source.origin}: {problem}; skipped")
            continue
        yield Item(source.name, source.origin, image)


def _read_file(path: Path) -> torch.Tensor:
    from .image_io import read_image

    return torch.Tensor.as_subclass(read_image(path), torch.Tensor)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) URLs only (urllib's own handler also follows ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.URLError(f"redirected to {newurl}: only http(s) redirects are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_url(url: str) -> torch.Tensor:
    """Download `url` into memory (at most `URL_MAX_BYTES`, `URL_TIMEOUT_S` per wait, `URL_DEADLINE_S` in all)
    and decode it. Every failure is a UserError naming the URL (the caller skips it and goes on)."""
    from .image_io import decode_image_bytes

    request = urllib.request.Request(url, headers={"User-Agent": "dynamic-detr"})
    opener = urllib.request.build_opener(_HttpRedirectsOnly)
    deadline = time.monotonic() + URL_DEADLINE_S
    try:
        with opener.open(request, timeout=URL_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > URL_MAX_BYTES:
                raise UserError(f"{url}: {int(length)} bytes, over the {URL_MAX_BYTES}-byte limit for a URL")
            chunks, size = [], 0
            while chunk := response.read1(2**16):
                chunks.append(chunk)
                size += len(chunk)
                if size > URL_MAX_BYTES:
                    break
                if time.monotonic() > deadline:
                    raise UserError(f"{url}: the download took longer than {URL_DEADLINE_S:g} s")
            data = b"".join(chunks)
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise UserError(f"{url}: cannot download ({e.reason})") from None
    except TimeoutError:
        raise UserError(f"{url}: no answer within {URL_TIMEOUT_S:g} s") from None
    except http.client.HTTPException as e:  # a body cut short (IncompleteRead), a server not speaking HTTP
        raise UserError(f"{url}: broken HTTP answer ({type(e).__name__})") from None
    except (OSError, ValueError) as e:  # a connection reset, an invalid URL
        raise UserError(f"{url}: cannot download ({e})") from None
    if len(data) > URL_MAX_BYTES:
        raise UserError(f"{url}: more than the {URL_MAX_BYTES}-byte limit for a URL")
    return torch.Tensor.as_subclass(decode_image_bytes(data, url), torch.Tensor)


def _frames(source: Source) -> Iterator[Item | Skipped]:
    from .video import VideoReader, webcam_device

    try:
        if source.kind == "webcam":
            device, fmt = webcam_device(int(source.origin))
            reader = VideoReader(device, f"webcam {source.origin}", fmt)
        else:
            reader = VideoReader(source.origin, source.origin)
    except UserError as e:
        yield Skipped(str(e))
        return
    stream = VideoStream(reader.fps)
    index = 0
    try:
        for rgb, time in reader:
            image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
            yield Item(source.name, source.origin, image, stream, index, time)
            index += 1
    except UserError as e:
        yield Skipped(f"{e}; the rest of the video skipped")
        return
    if index == 0:
        yield Skipped(f"{source.origin}: no frames")


def _frame_count(source: Source) -> int | None:
    """Frames in a video file, from its header (None when it does not say, and for a webcam). Without PyAV a
    UserError: the run stops before the model loads, with the extra to install."""
    from .video import VideoReader, require_av

    if source.kind == "webcam":
        require_av(f"webcam {source.origin}")
        return None
    try:
        reader = VideoReader(source.origin, source.origin)
    except UserError as e:
        if "PyAV" in str(e):
            raise
        return 1  # reported when read
    reader.close()
    return reader.frames


def _walk(folder: Path, skip: Path | None) -> Iterator[Path]:
    """Image files under `folder`, sorted, a folder's own files before its sub-folders'; hidden entries and
    `skip` (the output folder) left out. Symlinked folders are not followed (no cycles)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(Path(root, d), skip))
        for f in sorted(files):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root, f)


def _glob_root(pattern: str) -> Path:
    """The folder before a pattern's first wildcard: `data/**/*.jpg` -> `data`."""
    parts = Path(pattern).parts
    fixed = parts[:next(i for i, p in enumerate(parts) if _GLOB_CHARS.search(p))]
    return Path(*fixed) if fixed else Path(".")


def _relative_name(path: Path, root: Path) -> str:
    """`root/sub/b.png` -> `sub/b` (forward slashes). Both are normalised first (`a/../b` -> `b`), and a path not
    under `root` then gets its file name only: a name never holds `..` or an absolute part, so its outputs stay
    inside the output folder (`data/*/../../x/a.png` -> `a`, not `sub/../../x/a`, which would draw over it)."""
    path, root = Path(os.path.normpath(path)), Path(os.path.normpath(root))
    rel = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    if ".." in rel.parts:  # root "." and a path above it
        rel = Path(path.name)
    return (PurePosixPath(*rel.parts[:-1]) / rel.stem).as_posix() if rel.parts[:-1] else rel.stem


def _url_stem(url: str) -> str:
    """The last part of a URL's path without its suffix, made safe as a file name; "url" when there is none."""
    last = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(r"[^\w.-]+", "_", Path(last).stem).strip("._")[:URL_MAX_STEM]
    return stem or "url"


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path | None) -> bool:
    """Whether `path` is `folder` or lies under it (both through symlinks)."""
    return folder is not None and _resolved(path).is_relative_to(folder)


def unique_name(name: str, used: set[str]) -> str:
    """`name`, or `name_1`, `name_2` ... if an earlier input took it (compared ignoring case: macOS and Windows
    file systems would make `A.png` and `a.png` one file)."""
    candidate, k = name, 1
    while candidate.casefold() in used:
        candidate = f"{name}_{k}"
        k += 1
    used.add(candidate.casefold())
    return candidate
