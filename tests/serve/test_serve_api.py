"""The HTTP API on a live server (127.0.0.1, real sockets) in front of a tiny untrained model: /health, /v1/model,
/v1/detect answering exactly what `predict` writes for the image, the page, and every malformed request answered
4xx with a one-line JSON error and followed by a correct answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import torch
from serve_helpers import flat_png, get, live_server, png, post_image, post_raw, raw_request

from builders import save_untrained_tiny
from dynamic_detr.data.validate import MAX_ASPECT_RATIO
from dynamic_detr.serve.server import load_service

MAX_UPLOAD_MB = 0.2  # a small limit, so that "too large" costs little to send
MAX_MEGAPIXELS = 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_tiny(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir: Path):
    service = load_service(model_dir, torch.device("cpu"))
    with live_server(service, max_upload_mb=MAX_UPLOAD_MB, max_megapixels=MAX_MEGAPIXELS) as url:
        yield url


def _assert_good(server: str) -> None:
    """A correct request after a bad one: answered 200 with the image's record."""
    answer = post_image(server, png(), threshold=0.0)
    assert answer.status == 200, answer.body
    assert (answer.json()["width"], answer.json()["height"]) == (160, 120)


def test_health_and_model(server):
    health = get(f"{server}/health").json()
    assert {k: health[k] for k in ("status", "in_flight", "waiting")} == {"status": "ok", "in_flight": 0, "waiting": 0}
    assert all(int(size) >= 1 and n >= 1 for size, n in health["batches"].items())
    info = get(f"{server}/v1/model").json()
    assert info["classes"] == [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]
    assert (info["runtime"], info["preset"], info["checkpoint"]) == ("pytorch", "cpu_tiny", "tiny")
    assert info["sizes"]["eval_short_side"] > 0 and info["limits"]["max_upload_bytes"] == 200_000
    assert info["limits"]["default_threshold"] == 0.3


def test_detect_answers_what_predict_writes(server, model_dir, tmp_path):
    """The record of an image is `predict`'s JSON for it, field for field (except `file`: the upload's name)."""
    from dynamic_detr.model.loading import load_model
    from dynamic_detr.predict.predictor import Predictor

    image = tmp_path / "in" / "shapes.png"
    image.parent.mkdir()
    image.write_bytes(png(200, 150, seed=3))
    model, cfg = load_model(model_dir)
    Predictor(model, cfg, torch.device("cpu")).predict_files([image], tmp_path / "out", threshold=0.02)
    expected = json.loads((tmp_path / "out" / "shapes.json").read_text())

    got = post_image(server, image.read_bytes(), filename="shapes.png", threshold=0.02)
    assert got.status == 200 and got.headers["content-type"] == "application/json"
    assert got.json() == {**expected, "file": "shapes.png"}
    assert got.json()["detections"], "threshold 0.02 keeps some boxes of the untrained model"
    raw = post_raw(server, image.read_bytes(), query="?threshold=0.02")  # the same as a raw body
    assert raw.json() == {**expected, "file": "upload"}


def test_default_threshold_and_tiles(server):
    everything = post_image(server, png(200, 150), threshold=0.0).json()
    default = post_image(server, png(200, 150)).json()
    assert default["threshold"] == 0.3
    assert default["detections"] == [d for d in everything["detections"] if d["score"] >= 0.3]
    tiled = post_image(server, png(200, 150), threshold=0.0, tile=64, tile_overlap=0.1, tile_full_image="true")
    assert tiled.status == 200, tiled.body
    boxes = [d["box"] for d in tiled.json()["detections"]]
    assert boxes and all(0 <= x0 <= x1 <= 200 and 0 <= y0 <= y1 <= 150 for x0, y0, x1, y1 in boxes)


def test_page(server):
    page = get(f"{server}/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    text = page.body.decode()
    assert 'id="canvas"' in text and 'id="threshold"' in text and 'id="detections"' in text
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text  # nothing from elsewhere


TRUNCATED_PNG = png()[:-200]
TRUNCATED_JPEG = png(fmt="JPEG")[:-300]
THIN = flat_png(MAX_ASPECT_RATIO * 2 + 2, 2)
HUGE = flat_png(1100, 1000)  # 1.1 megapixels, a few KB as PNG


@pytest.mark.parametrize(("send", "status", "words"), [
    (lambda s: post_image(s, b"this is text, not an image", filename="notes.txt"), 415, ["notes.txt", "not an image"]),
    (lambda s: post_image(s, TRUNCATED_PNG, filename="cut.png"), 422, ["cut.png", "truncated"]),
    (lambda s: post_image(s, TRUNCATED_JPEG, filename="cut.jpg"), 422, ["cut.jpg", "truncated"]),
    (lambda s: post_image(s, THIN, filename="thin.png"), 422, ["thin.png", "aspect ratio", "100:1"]),
    (lambda s: post_image(s, HUGE, filename="huge.png"), 413, ["huge.png", "megapixels"]),
    (lambda s: post_image(s, png(), colour="red"), 400, ["unknown form field 'colour'"]),
    (lambda s: post_raw(s, png(), query="?colour=red"), 400, ["unknown query parameter 'colour'"]),
    (lambda s: post_image(s, png(), threshold="abc"), 400, ["threshold 'abc'", "expected a number"]),
    (lambda s: post_image(s, png(), threshold="1.5"), 400, ["threshold 1.5", "between 0 and 1"]),
    (lambda s: post_image(s, png(), tile="big"), 400, ["tile 'big'", "integer"]),
    (lambda s: post_image(s, png(), tile=4), 400, ["tile size", "at least 16"]),
    (lambda s: post_image(s, png(), tile_overlap=0.5), 400, ["need tile"]),
    (lambda s: post_image(s, png(), tile=64, tile_full_image="maybe"), 400, ["tile_full_image", "true or false"]),
    (lambda s: post_image(s, b""), 400, ["empty"]),
    (lambda s: post_raw(s, png(), content_type="text/plain"), 415, ["text/plain", "multipart/form-data"]),
    (lambda s: post_image(s, bytes(int(MAX_UPLOAD_MB * 1e6) + 10)), 413, ["upload limit"]),
    (lambda s: get(f"{s}/v1/detect"), 405, ["Method Not Allowed"]),
    (lambda s: get(f"{s}/v2/nothing"), 404, ["Not Found"]),
], ids=["not_image", "truncated_png", "truncated_jpeg", "aspect_ratio", "megapixels", "unknown_field",
        "unknown_query", "wrong_type", "threshold_range", "tile_type", "tile_small", "tile_field_alone",
        "bool_type", "empty", "content_type", "too_large", "wrong_method", "unknown_path"])
def test_malformed_request_is_4xx_then_served(server, send, status, words):
    answer = send(server)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert b"\n" not in answer.body.strip()
    error = answer.json()["error"]
    assert list(answer.json()) == ["error"] and "\n" not in error
    for word in words:
        assert word in error, error
    _assert_good(server)


def test_too_large_is_refused_before_its_body_arrives(server):
    """A Content-Length over the limit is answered 413 on the headers alone: the server reads none of the 2 GB
    announced (the client sends a few bytes of it)."""
    head = (f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {2 * 10**9}")
    status, _, body = raw_request(server, head, b"\x89PNG" * 10, timeout=10)
    assert status == 413 and "Content-Length 2000000000" in json.loads(body)["error"]
    _assert_good(server)


def test_a_client_that_sends_its_whole_body_first_reads_the_413(server):
    """urllib writes all 8 MB before reading: the server reads them (and drops them) before it answers, so the
    client gets the 413, not a connection reset halfway through its upload."""
    answer = post_raw(server, bytes(8 * 10**6))
    assert answer.status == 413 and "upload limit" in answer.json()["error"]
    _assert_good(server)


def test_chunked_body_over_the_limit_is_refused(server):
    """Without a Content-Length the body is counted as it arrives: 413 once it passes the limit."""
    chunk = b"x" * 50_000
    chunks = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
    head = "POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked"
    status, _, body = raw_request(server, head, chunks, timeout=10)
    assert status == 413 and "the body is over the upload limit" in json.loads(body)["error"]
    _assert_good(server)


def test_multipart_errors(server):
    """Two images, no image, a field given twice, a malformed body: 400 each, then served."""
    from serve_helpers import multipart

    cases = [multipart({}, {"image": ("a.png", png()), "image2": ("b.png", png())}),
             multipart({"threshold": "0.5"}, {}),
             multipart({"threshold": "0.5"}, {"image": ("a.png", png())})]
    expected = ["malformed multipart", "no image", "given twice"]
    queries = ["", "", "?threshold=0.2"]
    for (body, ctype), words, query in zip(cases, expected, queries, strict=True):
        status, _, answer = raw_request(server, f"POST /v1/detect{query} HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                                f"{ctype}\r\nContent-Length: {len(body)}\r\nConnection: close", body)
        assert status == 400 and words in json.loads(answer)["error"], answer
        _assert_good(server)
    status, _, answer = raw_request(server, "POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                                            "form-data\r\nContent-Length: 3\r\nConnection: close", b"abc")
    assert status == 400 and "multipart" in json.loads(answer)["error"]
    _assert_good(server)
