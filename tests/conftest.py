"""Fixtures for the whole suite: free TCP ports for torchrun; torch's deterministic mode put back after each test;
one CPU share per pytest-xdist worker, idle OpenMP threads that sleep, the longest files handed out first; a tiny
COCO dataset writer and a small synthetic dataset."""

from __future__ import annotations

import os
import socket

# Before torch loads its OpenMP runtime (here, or in a pytest-xdist worker, which inherits the environment): an
# OpenMP thread waiting for work sleeps instead of spinning. The tests that need 2 threads (the overfits, whose
# bounds were set at 2; the 1,000-image predict) run beside the other worker's process, 3 busy threads on the
# 2-core machine, where a spinning thread takes the core its partner needs: the fp32 overfit took 120 s beside
# one single-threaded process instead of 43 s alone, 71 s with passive waiting (same weights, same AP;
# 2026-12-07). A value set by the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from builders import write_coco
from dynamic_detr.data.synthetic import generate

# The files that take longest, longest first (seconds of their tests in a full run of `make test` on the 2-core
# machine with nothing else running, 2026-12-07): a pytest-xdist worker gets whole files (--dist loadfile) in
# collection order (the Makefile's --no-loadscope-reorder keeps it), so these start first and the short files
# fill in around them, instead of a long one starting last and running alone at the end. The other files follow
# in their usual order.
LONGEST_FIRST = (
    "train/test_overfit.py",  # 255 s: three 192-step fits, two at 2 threads
    "export/test_export_onnx.py",  # 208: every preset exported, paper_r50's ResNet-50 among them
    "train/test_faults.py",  # 124: training subprocesses killed and resumed
    "benchmarks/test_bench_convergence.py",  # 116: every contender of the benchmark trained
    "test_distributed.py",  # 91: torchrun runs
    "export/test_onnx_runner.py",  # 73: a model trained, graphs exported and evaluated
    "predict/test_predict_load.py",  # 63: 1,000 images through predict, twice
    "benchmarks/test_bench_speed.py",  # 47
    "train/test_trainer.py",  # 46
    "benchmarks/test_bench_dataset_memory.py",  # 22
    "cli/test_cli_e2e.py",  # 22
    "benchmarks/test_bench_export_ap.py",  # 22
    "benchmarks/test_bench_finetune.py",  # 21
)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), each worker and the processes its tests start get the
    cores divided by the number of workers as threads: 2 workers x 1 thread fill 2 cores, where 2 x 2 threads
    would contend. Without xdist nothing changes."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 0:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, picked by the OS (bind to port 0), not a fixed one
    that another run on the same machine (another checkout's tests, a real torchrun job) may hold."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a pytest-xdist worker (whose collection the controller distributes): the files of `LONGEST_FIRST`
    first, in its order; each file's tests stay together and in their order. A run without xdist keeps the
    usual order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    here = Path(__file__).parent
    rank = {here / name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path, len(rank)))


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()` -> a port nothing listens on now, for torchrun's --master-port / --rdzv-endpoint. Call it
    once per launch, right before it: the port is released when it returns, so the window in which another
    process could take it is short, but not zero."""
    return _free_port


@pytest.fixture(scope="session")
def _deterministic_mode_at_start() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.fixture(autouse=True)
def _restore_deterministic_mode(_deterministic_mode_at_start: tuple[bool, bool]) -> Iterator[None]:
    """A Trainer with train.deterministic (the tests' tiny configs) turns torch's deterministic mode on for the
    whole process and leaves it on: put it back after each test, so that no test runs in another mode depending
    on which tests ran before it. (A module fixture that trains sets it for its first test only.)"""
    yield
    enabled, warn_only = _deterministic_mode_at_start
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.fixture
def local_http() -> Iterator[Callable[[dict[str, tuple[int, str, bytes]]], str]]:
    """`local_http({path: (status, content type, body)})` -> the base URL of an HTTP server on 127.0.0.1 (a free
    port, a daemon thread, stopped after the test) answering those paths and 404 for any other. Tests that read
    URLs use it and nothing else: no other address is ever contacted."""
    import http.server
    import threading

    servers: list[http.server.ThreadingHTTPServer] = []

    def start(routes: dict[str, tuple[int, str, bytes]]) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold the thread longer

            def do_GET(self) -> None:
                status, ctype, body = routes.get(self.path, (404, "text/plain", b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def coco_writer(tmp_path: Path) -> Callable[..., Path]:
    """`coco_writer(images=..., annotations=..., categories=...)` -> dataset root in a fresh tmp dir."""
    counter = iter(range(1000))

    def make(**kw: Any) -> Path:
        return write_coco(tmp_path / f"ds{next(counter)}", **kw)

    return make


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (12 train / 4 val images at 320 px, seed 0), generated once per session."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, train=12, val=4, image_size=320, seed=0)
    return root
