"""data.sources: folders walked recursively, globs, URLs (a local server only), video files, webcams; every bad
input reported as one line while the others are read; items decoded lazily, one at a time."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from dynamic_detr.data import sources as sources_mod
from dynamic_detr.data.sources import Item, Skipped, iter_items, resolve_sources
from dynamic_detr.errors import UserError
from media_helpers import png_bytes, write_video


def _tree(root: Path) -> Path:
    """root/{b.png, a.jpg, notes.txt, .hidden.png, sub/{c.png, deeper/d.png}, .cache/e.png, out/old.png}."""
    for rel in ("b.png", "a.jpg", ".hidden.png", "sub/c.png", "sub/deeper/d.png", ".cache/e.png", "out/old.png"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6)).save(path)
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_is_walked_recursively_sorted_images_only(tmp_path):
    root = _tree(tmp_path / "data")
    found = resolve_sources([str(root)], out=root / "out")
    assert [s.name for s in found.sources] == ["a", "b", "sub/c", "sub/deeper/d"]  # no hidden, no output folder
    assert [s.origin for s in found.sources][2] == str(root / "sub" / "c.png")
    assert found.missing == [] and found.total == 4


def test_names_stay_unique_ignoring_case(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for path in (one / "x.png", two / "x.png", two / "X.jpg", one / "sub" / "y.png", two / "sub" / "y.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)
    names = [s.name for s in resolve_sources([str(one), str(two)]).sources]
    assert names == ["x", "sub/y", "X_1", "x_2", "sub/y_1"]
    assert len({n.casefold() for n in names}) == len(names)


def test_quoted_glob_expands_recursively_relative_to_its_folder(tmp_path):
    root = _tree(tmp_path / "data")
    found = resolve_sources([f"{root}/**/*.png"], out=root / "out")
    assert [s.name for s in found.sources] == ["b", "sub/c", "sub/deeper/d"]  # sorted paths; hidden left out
    nothing = resolve_sources([f"{root}/**/*.bmp"])
    assert nothing.sources == [] and nothing.missing == [f"{root}/**/*.bmp: the pattern matches no image or video "
                                                         "file"]


def test_names_never_leave_the_output_folder(tmp_path):
    """`data/*/../../x/*.png` matched x/a.png under the name `sub/../../x/a`: `predict --out pred` drew over it.
    Names are normalised; a match outside the glob's root gets its file name only."""
    for rel in ("data/sub/b.png", "data/other/c.png", "x/a.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    found = resolve_sources([f"{tmp_path}/data/*/../../x/*.png", f"{tmp_path}/data/sub/../other/*.png",
                             f"{tmp_path}/data/sub/.."])
    assert [s.name for s in found.sources] == ["a", "a_1", "c", "other/c", "sub/b"]  # x/a.png via sub and other
    assert sources_mod._relative_name(Path("../up/a.png"), Path(".")) == "a"
    assert sources_mod._relative_name(Path("/abs/a.png"), Path("elsewhere")) == "a"


def test_inputs_naming_nothing_are_reported(tmp_path):
    empty = tmp_path / "empty"
    (empty / "only" / "folders").mkdir(parents=True)
    found = resolve_sources([str(empty), str(tmp_path / "nope.jpg"), "ftp://example.invalid/a.png"])
    assert found.sources == []
    assert found.missing == [f"{empty}: no image files in this folder or its sub-folders",
                             f"{tmp_path / 'nope.jpg'}: no such file or folder",
                             "ftp://example.invalid/a.png: unsupported URL scheme (http and https only)"]


def test_items_are_decoded_one_at_a_time_and_bad_files_skipped(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.new("RGB", (1, 300)).save(folder / "c.png")
    reads: list[Path] = []
    real = sources_mod._read_file
    monkeypatch.setattr(sources_mod, "_read_file", lambda p: reads.append(p) or real(p))
    items = iter_items(resolve_sources([str(folder)]).sources)
    first = next(items)
    assert isinstance(first, Item) and first.name == "a" and tuple(first.image.shape) == (3, 16, 24)
    assert len(reads) == 1  # nothing read ahead
    rest = list(items)
    assert [type(x) for x in rest] == [Skipped, Skipped]
    assert rest[0].message.startswith(f"{folder / 'b.png'}: cannot decode image")
    assert rest[1].message == f"{folder / 'c.png'}: a 1x300 image: aspect ratio 300:1 exceeds the 100:1 limit; skipped"


def test_urls_from_a_local_server(local_http, monkeypatch):
    base = local_http({"/img/cat%20one.png": (200, "image/png", png_bytes((30, 20))),
                       "/page": (200, "text/html", b"<html>not an image</html>"),
                       "/big.png": (200, "image/png", png_bytes((64, 64), (1, 2, 3)) + b"\0" * 5000)})
    monkeypatch.setattr(sources_mod, "URL_MAX_BYTES", 4000)
    urls = [f"{base}/img/cat%20one.png", f"{base}/missing.png", f"{base}/page", f"{base}/big.png"]
    found = resolve_sources(urls)
    assert [s.kind for s in found.sources] == ["url"] * 4
    assert [s.name for s in found.sources] == ["cat_one", "missing", "page", "big"]
    items = list(iter_items(found.sources))
    assert isinstance(items[0], Item) and tuple(items[0].image.shape) == (3, 20, 30)
    assert items[0].origin == urls[0]
    assert [x.message for x in items[1:]] == [
        f"{base}/missing.png: HTTP 404 Not Found",
        f"{base}/page: cannot decode image (not an image file, or an unsupported format)",
        f"{base}/big.png: {len(png_bytes((64, 64), (1, 2, 3))) + 5000} bytes, over the 4000-byte limit for a URL"]


@pytest.fixture
def raw_http():
    """`raw_http(behaviours)` -> base URL of a TCP server on 127.0.0.1 that answers GET /<name> with the bytes
    `behaviours[name]` gives: a list of (bytes, seconds to wait after them), written as they are, HTTP or not."""
    import socket
    import threading

    servers = []

    def start(behaviours: dict[str, list[tuple[bytes, float]]]) -> str:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        stop = threading.Event()

        def answer(conn: socket.socket) -> None:
            with conn:
                request = conn.recv(4096).decode("latin-1")
                name = request.split(" ")[1].lstrip("/") if " " in request else ""
                for data, wait in behaviours.get(name, []):
                    if stop.is_set():
                        return
                    try:
                        conn.sendall(data)
                    except OSError:  # the client gave up
                        return
                    time.sleep(wait)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:  # closed at the end of the test
                    return
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        servers.append((listener, stop))
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    for listener, stop in servers:
        stop.set()
        listener.close()


def test_broken_servers_and_urls_are_skipped_one_line_each(raw_http, monkeypatch, tmp_path):
    """A chunked body cut short, a server that does not speak HTTP, a slow drip past the total deadline, a redirect
    to ftp, a URL urllib cannot parse and a 300-character last path part: each one skipped-input line (or a
    short name), and the next input still read; a chunked body (no Content-Length) over the size cap is cut at
    it. Before: tracebacks (IncompleteRead, BadStatusLine, ValueError),
    a run held as long as the drip lasted, the ftp redirect followed, and "File name too long" on saving."""
    png = png_bytes((30, 20))
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
    base = raw_http({
        "cut": [(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(png) + png[:10], 0.0)],
        "nohttp": [(b"SSH-2.0-OpenSSH_9.6\r\n", 0.0)],
        "drip": [(head + b"Content-Length: %d\r\n\r\n" % len(png), 0.0)] + [(png[i:i + 1], 0.2) for i in range(20)],
        "toftp": [(b"HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/x.png\r\nContent-Length: 0\r\n\r\n", 0.0)],
        "ok": [(head + b"Content-Length: %d\r\n\r\n" % len(png) + png, 0.0)],
        "big": [(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 4000 + b"\0" * 4000 + b"\r\n0\r\n\r\n",
                 0.0)],
    })
    monkeypatch.setattr(sources_mod, "URL_DEADLINE_S", 1.0)
    monkeypatch.setattr(sources_mod, "URL_MAX_BYTES", 3000)  # the png is 100-odd bytes
    long_name = "a" * 300
    urls = [f"{base}/cut", f"{base}/nohttp", f"{base}/drip", f"{base}/toftp", "http://[oops/a.png",
            f"{base}/{long_name}.png", f"{base}/ok", f"{base}/big"]
    found = resolve_sources(urls)
    assert found.missing == ["http://[oops/a.png: not a valid URL (Invalid IPv6 URL)"]
    assert [s.name for s in found.sources] == ["cut", "nohttp", "drip", "toftp", "a" * 100, "ok", "big"]
    started = time.monotonic()
    items = list(iter_items(found.sources))
    assert time.monotonic() - started < 3.5  # the drip alone would take 4 s
    messages = [x.message if isinstance(x, Skipped) else None for x in items]
    assert messages[0] == f"{base}/cut: broken HTTP answer (IncompleteRead)"
    assert messages[1] == f"{base}/nohttp: broken HTTP answer (BadStatusLine)"
    assert messages[2] == f"{base}/drip: the download took longer than 1 s"
    assert messages[3].startswith(f"{base}/toftp: cannot download (redirected to ftp://127.0.0.1/x.png: only")
    assert messages[4].startswith(f"{base}/{long_name}.png: ")  # nothing at that path: skipped, not a crash
    assert isinstance(items[5], Item) and tuple(items[5].image.shape) == (3, 20, 30)
    assert messages[6] == f"{base}/big: more than the 3000-byte limit for a URL"  # no Content-Length to check first


def test_a_url_of_a_video_is_reported():
    found = resolve_sources(["https://example.invalid/clip.mp4"])  # resolved only: nothing is contacted
    assert found.sources == [] and "download it first" in found.missing[0]


def test_video_frames_stream_with_their_index_and_time(tmp_path):
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames=5)
    found = resolve_sources([str(clip)])
    assert [(s.kind, s.name) for s in found.sources] == [("video", "clip")] and found.total == 5
    items = list(iter_items(found.sources))
    assert [x.frame for x in items] == [0, 1, 2, 3, 4]
    assert all(isinstance(x, Item) and x.video is items[0].video for x in items)
    assert items[0].video.fps == pytest.approx(10)
    assert tuple(items[0].image.shape) == (3, 48, 64)
    assert items[0].image[:, 18, 10].tolist()[0] > 150  # the red square is where it was drawn
    assert items[2].time == pytest.approx(0.2)


def test_a_file_that_is_no_video_is_reported(tmp_path):
    pytest.importorskip("av")
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all" * 10)
    (message,) = [x.message for x in iter_items(resolve_sources([str(fake)]).sources)]
    assert message.startswith(f"{fake}: cannot open video (") and "\n" not in message


def test_video_without_the_extra_says_what_to_install(tmp_path, monkeypatch):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 100)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(UserError, match=r"clip\.mp4: reading video needs PyAV, the optional video extra: "
                                        r"pip install 'dynamic-detr\[video\]'"):
        resolve_sources([str(clip)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="webcams here are /dev/video<N> (v4l2)")
def test_webcam_without_a_camera_is_a_clear_message():
    pytest.importorskip("av")
    found = resolve_sources(["99"])
    assert [(s.kind, s.name) for s in found.sources] == [("webcam", "webcam99")] and found.total is None
    assert [x.message for x in iter_items(found.sources)] == ["webcam 99: no camera (/dev/video99 does not exist)"]
