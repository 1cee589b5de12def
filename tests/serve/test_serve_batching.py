"""Batching and admission on a live server in front of a model stand-in (`FakeDetector`, which records its
batches and can be made slow or failing): requests that arrive together share a batch and each gets its own
answer; a full queue answers 503 with Retry-After at once; a request past its deadline is 504; a model error is
500; tiled requests never share a batch with whole ones. Then the `Batcher` alone: drain, cancel, keys."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import torch
from serve_helpers import FakeDetector, fake_service, get, live_server, png, post_image, post_raw, wait_for

from dynamic_detr.serve.batcher import Batcher, Closed, QueueFull


def test_requests_that_arrive_together_share_a_batch():
    """One request holds the model for 1.2 s; six more arrive meanwhile and go through as one batch of six,
    each answered with its own image's record (sizes differ per request)."""
    fake = FakeDetector(delay=1.2)
    with live_server(fake_service(fake), max_batch=8, gather_ms=5) as url, ThreadPoolExecutor(7) as pool:
        first = pool.submit(post_image, url, png(100, 80), threshold=0.0)
        wait_for(lambda: len(fake.calls) == 1, what="the first batch")
        sizes = [(60 + 10 * i, 50 + 5 * i) for i in range(6)]
        rest = [pool.submit(post_image, url, png(w, h, seed=i), threshold=0.0) for i, (w, h) in enumerate(sizes)]
        answers = [f.result() for f in rest]
        assert first.result().status == 200
        assert get(f"{url}/health").json()["batches"] == {"1": 1, "6": 1}
    assert fake.batch_sizes == [1, 6]
    for (w, h), answer in zip(sizes, answers, strict=True):
        record = answer.json()
        assert answer.status == 200 and (record["width"], record["height"]) == (w, h)
        assert [d["box"] for d in record["detections"]] == [[0.0, 0.0, w, h], [0.0, 0.0, w / 2, h / 2]]
        assert [d["category"] for d in record["detections"]] == ["square", "disc"]


def test_requests_sent_close_together_to_an_idle_model_are_gathered():
    """The model is idle: the first of two requests sent 0.1 s apart waits up to the gather window (here 1 s) for
    the second, and they share a batch."""
    fake = FakeDetector()
    with live_server(fake_service(fake), gather_ms=1000) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_image, url, png(seed=0))
        time.sleep(0.1)
        second = pool.submit(post_image, url, png(seed=1))
        assert [f.result().status for f in (first, second)] == [200, 200]
    assert fake.batch_sizes == [2]


def test_max_batch_bounds_a_batch():
    fake = FakeDetector(delay=1.0)
    with live_server(fake_service(fake), max_batch=3) as url, ThreadPoolExecutor(8) as pool:
        first = pool.submit(post_image, url, png())
        wait_for(lambda: len(fake.calls) == 1, what="the first batch")
        answers = [pool.submit(post_image, url, png()) for _ in range(7)]
        assert all(f.result().status == 200 for f in [first, *answers])
    assert fake.batch_sizes == [1, 3, 3, 1]


def test_full_queue_answers_503_with_retry_after_at_once():
    fake = FakeDetector(delay=1.5)
    with live_server(fake_service(fake), queue_size=2, max_batch=1) as url, ThreadPoolExecutor(2) as pool:
        busy = [pool.submit(post_image, url, png()) for _ in range(2)]
        wait_for(lambda: get(f"{url}/health").json()["in_flight"] == 2, what="2 requests in flight")
        start = time.monotonic()
        refused = post_image(url, png())
        assert time.monotonic() - start < 1.0  # answered, not queued behind the model (1.5 s a request)
        assert refused.status == 503 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["error"] and "--queue-size" in refused.json()["error"]
        big = post_raw(url, bytes(16 * 10**6))  # sent whole before urllib reads: it reads the 503, not a reset
        assert big.status == 503 and big.headers["retry-after"] == "1"
        assert [f.result().status for f in busy] == [200, 200]
        fake.delay = 0.0
        assert post_image(url, png()).status == 200  # served again once the queue has room


def test_request_past_its_deadline_is_504_and_the_server_goes_on():
    fake = FakeDetector(delay=1.5)
    with live_server(fake_service(fake), timeout=0.5, max_batch=1) as url:
        late = post_image(url, png())
        assert late.status == 504 and "--timeout" in late.json()["error"]
        fake.delay = 0.0
        wait_for(lambda: fake.finished == 1, what="the model to finish the late request's batch")
        assert post_image(url, png()).status == 200


def test_model_error_is_500_and_the_next_request_is_served():
    fake = FakeDetector(fail=RuntimeError("out of memory\nsecond line"))
    with live_server(fake_service(fake)) as url:
        failed = post_image(url, png())
        assert failed.status == 500
        assert failed.json()["error"] == "the model failed: RuntimeError: out of memory second line"
        assert post_image(url, png()).status == 200


def test_tiled_requests_never_share_a_batch_with_whole_ones():
    """Whole 160x120 images and 64-pixel tiles of 160x120 images arrive together: no model call holds both, and
    a tiled answer's boxes are in the image's pixels (the tiles' merged)."""
    fake = FakeDetector(delay=0.3)
    with live_server(fake_service(fake), max_batch=8) as url, ThreadPoolExecutor(6) as pool:
        first = pool.submit(post_image, url, png())
        wait_for(lambda: len(fake.calls) == 1, what="the first batch")
        whole = [pool.submit(post_image, url, png(), threshold=0.0) for _ in range(3)]
        tiled = [pool.submit(post_image, url, png(), threshold=0.0, tile=64, tile_overlap=0.25) for _ in range(2)]
        assert first.result().status == 200 and all(f.result().status == 200 for f in whole + tiled)
    for call in fake.calls:
        kinds = {"whole" if s == (120, 160) else "tile" for s in call}
        assert len(kinds) == 1, call
    assert any(s[0] <= 64 and s[1] <= 64 for call in fake.calls for s in call)
    boxes = [d["box"] for d in tiled[0].result().json()["detections"]]
    assert boxes and all(x1 <= 160 and y1 <= 120 for _, _, x1, y1 in boxes)
    assert any(x0 > 0 for x0, _, _, _ in boxes)  # offset by its tile's window


# ------------------------------------------------------------------------------------------------ the Batcher
def _image(w: int = 8) -> torch.Tensor:
    return torch.zeros(3, 4, w, dtype=torch.uint8)


def test_close_drains_every_queued_job():
    gate = threading.Event()
    fake = FakeDetector()

    def run(key, images):
        gate.wait(10)
        return fake(images)

    batcher = Batcher(run, max_batch=2, gather_ms=0, queue_size=10).start()
    futures = [batcher.submit(_image()) for _ in range(5)]
    closer = threading.Thread(target=batcher.close, args=(10,))
    closer.start()
    time.sleep(0.05)
    with pytest.raises(Closed):
        batcher.submit(_image())
    gate.set()
    closer.join(10)
    assert all(f.result(0)["scores"].tolist() == pytest.approx([0.9, 0.2]) for f in futures)
    assert sum(fake.batch_sizes) == 5 and batcher.stats.images == 5


def test_queue_full_and_cancelled_jobs():
    gate = threading.Event()
    seen: list[int] = []

    def run(key, images):
        gate.wait(10)
        seen.extend(int(i.shape[-1]) for i in images)
        return [{} for _ in images]

    batcher = Batcher(run, max_batch=1, gather_ms=0, queue_size=2).start()
    running = batcher.submit(_image(1))
    wait_for(lambda: running.running(), what="the first job to start")
    queued = [batcher.submit(_image(2)), batcher.submit(_image(3))]
    with pytest.raises(QueueFull):
        batcher.submit(_image(4))
    assert queued[0].cancel()  # a request that timed out before its batch: never run
    gate.set()
    batcher.close(10)
    assert seen == [1, 3]


def test_a_batch_holds_one_key_and_the_others_keep_their_order():
    gate, entered = threading.Event(), threading.Event()
    batches: list[tuple[object, list[int]]] = []

    def run(key, images):
        entered.set()
        gate.wait(10)
        batches.append((key, [int(i.shape[-1]) for i in images]))
        return [{} for _ in images]

    batcher = Batcher(run, max_batch=8, gather_ms=0, queue_size=20).start()
    batcher.submit(_image(0))
    assert entered.wait(10)  # the first batch runs: the next six wait together
    for w, key in [(1, "a"), (2, None), (3, "a"), (4, "b"), (5, None), (6, "a")]:
        batcher.submit(_image(w), key)
    gate.set()
    batcher.close(10)
    assert batches == [(None, [0]), ("a", [1, 3, 6]), (None, [2, 5]), ("b", [4])]


def test_a_client_gone_mid_upload_and_a_server_bug_leave_it_serving():
    """A client that closes its socket halfway through its body, and a route that fails (here /v1/model with an
    info that is no JSON): a one-line JSON 500 for the bug, and the next requests are served."""
    import socket

    service = fake_service(FakeDetector())
    service.info = {"checkpoint": object()}
    with live_server(service) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000"
                      b"\r\n\r\n" + png()[:1000])
        broken = get(f"{url}/v1/model")
        assert broken.status == 500 and broken.json() == {"error": "internal error: TypeError"}
        wait_for(lambda: get(f"{url}/health").json()["in_flight"] == 0, what="the broken upload to end")
        assert post_image(url, png()).status == 200
