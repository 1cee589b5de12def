"""`dynamic-detr serve` as a user runs it: a subprocess on 127.0.0.1 (a PyTorch model folder, an exported .onnx),
SIGTERM letting every request in flight finish before exiting 0, and its usage errors as one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from serve_helpers import get, png, post_image, wait_for

from builders import save_untrained_tiny
from dynamic_detr.cli.main import main

HERE = Path(__file__).resolve().parent
SLOW_SERVER = """
import sys
sys.path.insert(0, {helpers!r})
from serve_helpers import FakeDetector, fake_service
from dynamic_detr.serve.app import ServeOptions
from dynamic_detr.serve.server import serve
sys.exit(serve(fake_service(FakeDetector(delay=1.0)), ServeOptions(port=0, max_batch=2)))
"""


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server process; (process, base URL) once it prints where it serves."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()  # the banner: "... serving on http://127.0.0.1:PORT/ (page), ..."
    if "serving on http://" not in line:
        proc.kill()
        raise AssertionError(f"no banner: {line!r} {proc.communicate(timeout=30)}")
    return proc, line.split("serving on ")[1].split("/ ")[0]


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_tiny(tmp_path_factory.mktemp("serve_cli") / "tiny")


def test_sigterm_answers_every_request_in_flight_and_exits_0():
    """Five slow requests in flight (batches of 2, 1 s each) when SIGTERM arrives: the server stops listening,
    answers all five, and exits 0."""
    proc, url = _start(["-c", SLOW_SERVER.format(helpers=str(HERE))])
    try:
        with ThreadPoolExecutor(5) as pool:
            pending = [pool.submit(post_image, url, png(100 + i, 80)) for i in range(5)]
            wait_for(lambda: get(f"{url}/health").json()["in_flight"] == 5, what="5 requests in flight")
            proc.send_signal(signal.SIGTERM)
            port = int(url.rsplit(":", 1)[1])
            wait_for(lambda: _refused(port), what="the server to stop listening")
            assert not all(f.done() for f in pending)  # refused new connections while some were still served
            answers = [f.result(timeout=30) for f in pending]
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [a.status for a in answers] == [200] * 5
    assert [a.json()["width"] for a in answers] == [100, 101, 102, 103, 104]
    assert proc.returncode == 0, err
    assert "stopped: 5 detect request(s) answered" in err


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_cli_serves_a_model_folder(model_dir):
    proc, url = _start(["-m", "dynamic_detr.cli.main", "serve", "--checkpoint", str(model_dir), "--port", "0"])
    try:
        assert get(f"{url}/health").json()["status"] == "ok"
        assert get(f"{url}/v1/model").json()["preset"] == "cpu_tiny"
        answer = post_image(url, png(), threshold=0.0)
        assert answer.status == 200 and len(answer.json()["detections"]) > 0
    finally:
        code, err = _stop(proc)
    assert code == 0, err


@pytest.mark.slow  # an export, a predict and a server process: 16 s
def test_cli_serves_an_onnx_graph_as_predict_runs_it(model_dir, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    graph = tmp_path / "tiny.onnx"
    assert main(["export", "--checkpoint", str(model_dir), "--out", str(graph)]) == 0
    image = tmp_path / "in" / "noise.png"
    image.parent.mkdir()
    image.write_bytes(png(200, 150, seed=5))
    assert main(["predict", "--checkpoint", str(graph), "--out", str(tmp_path / "out"), "--threshold", "0.02",
                 str(image)]) == 0
    expected = json.loads((tmp_path / "out" / "noise.json").read_text())
    proc, url = _start(["-m", "dynamic_detr.cli.main", "serve", "--checkpoint", str(graph), "--port", "0"])
    try:
        info = get(f"{url}/v1/model").json()
        answer = post_image(url, image.read_bytes(), filename="noise.png", threshold=0.02)
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert info["runtime"] == "onnxruntime" and info["sizes"]["onnx_canvas"]
    assert answer.status == 200 and answer.json() == {**expected, "file": "noise.png"}


@pytest.mark.parametrize(("args", "words"), [
    (["--checkpoint", "no/such/run"], ["no/such/run"]),
    (["--max-batch", "0"], ["--max-batch must be at least 1"]),
    (["--max-upload-mb", "-1"], ["--max-upload-mb must be at least"]),
    (["--port", "70000"], ["--port must be at most 65535"]),
    (["--host", "192.0.2.1"], ["--host 192.0.2.1", "cannot listen"]),  # TEST-NET: no interface has it
], ids=["missing_checkpoint", "max_batch", "upload_limit", "port_range", "bad_host"])
def test_usage_errors_are_one_line(model_dir, capsys, args, words):
    argv = ["serve", "--checkpoint", str(model_dir), "--port", "0", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err


def test_port_in_use_is_one_line(model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(model_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--port {port}: cannot listen there" in err and "\n" not in err, err
