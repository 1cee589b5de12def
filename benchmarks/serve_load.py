"""Load test of `dynamic-detr serve`: throughput, latency, errors and the server's memory, on 127.0.0.1 only.

Starts the server as a user would (`dynamic-detr serve --port 0`, a subprocess) on `--checkpoint`, or on an
untrained model of `--preset` (cpu_demo) that it saves itself (latency does not depend on the weights), then:

1. `--warmup` requests (20) from as many clients as the largest round (8): the server's RSS after them is the
   memory baseline, taken once the model has run batches as large as the load test's (a batch of 8 holds more
   memory than a batch of 1, and the allocator keeps it: that is working set, not a leak);
2. for each `--concurrency` (1, then 8): that many clients, each sending `--requests` (50) requests back to back,
   each waiting for its answer: throughput (answers / s over the round), p50 / p99 latency, errors (answers other
   than 200), dropped (no answer: connection error or client timeout), the batch sizes the server ran;
3. every malformed request of the server tests (not an image, truncated PNG / JPEG, too large, unknown field,
   wrong type, extreme aspect ratio), each followed by a good one: all must be 4xx and 200;
4. SIGTERM: the server must exit 0.

The RSS (VmRSS of /proc/<pid>/status) is read after the warmup, after each round and at the end. Targets (issue 30):
0 errors and 0 dropped at concurrency 8, throughput at 8 >= 1.5x at 1, RSS after the 8-client round (400
requests) within 10% of after the first 20, every malformed request 4xx then a correct answer.

    .venv/bin/python benchmarks/serve_load.py                          # cpu_demo-size untrained model
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/demo/run
    .venv/bin/python benchmarks/serve_load.py --quick                  # smoke run (the test suite calls it)

Writes benchmarks/results/serve/load.json (or `--out`) and prints a table. Every request goes to 127.0.0.1; the
loops are bounded in count and time. Never run it while another job uses the cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from dynamic_detr.fileio import atomic_write_json

UPLOAD_MB = 2.0
"""The server's --max-upload-mb here: "too large" costs 2.5 MB to send, not 20."""


# ------------------------------------------------------------------------------------------------ the server
def save_untrained(preset: str, out: Path) -> Path:
    from dynamic_detr.api import save_pretrained
    from dynamic_detr.config import get_preset
    from dynamic_detr.model import DynamicDETR

    cfg = get_preset(preset)
    cfg.model.backbone.weights = None  # nothing to download: random weights time the same
    torch.manual_seed(0)
    model = DynamicDETR(cfg.model)
    model.run_config = cfg
    save_pretrained(model, out)
    return out


def start_server(checkpoint: Path, max_batch: int, queue_size: int, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "dynamic_detr.cli.main", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--max-batch", str(max_batch), "--queue-size", str(queue_size), "--max-upload-mb", str(UPLOAD_MB)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if "serving on http://" not in line:
        proc.kill()
        sys.exit(f"the server did not start: {line!r}\n{log.read_text()[-3000:]}")
    return proc, line.split("serving on ")[1].split("/ ")[0]


def stop_server(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (the server drains its requests and exits 0), a kill past `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for process {pid}")


# ------------------------------------------------------------------------------------------------ requests
def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def test_images(width: int, height: int, n: int = 4) -> list[bytes]:
    """`n` different PNGs: a noisy background with a few squares and discs (the synthetic data's look)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        img = Image.fromarray(rng.integers(90, 150, size=(height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            side = int(rng.integers(min(width, height) // 8, min(width, height) // 3))
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape([x, y, x + side, y + side], fill=(220, 30, 30) if shape == draw.rectangle else (30, 30, 220))
        images.append(encode(img))
    return images


def post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int | None, float]:
    """(HTTP status or None when no answer came, seconds)."""
    request = urllib.request.Request(f"{url}/v1/detect", data=body, headers={"Content-Type": content_type})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    except OSError:  # refused, reset, timed out: dropped
        status = None
    return status, time.perf_counter() - start


def form(fields: dict[str, str], data: bytes, filename: str = "image.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def run_round(url: str, images: list[bytes], clients: int, per_client: int, timeout: float,
              total: int | None = None) -> dict[str, Any]:
    """`clients` threads, each sending `per_client` requests (multipart, as the page and curl -F send them) one
    after the other; with `total`, that many requests shared out among the clients instead."""
    bodies = [form({"threshold": "0.3"}, img) for img in images]
    results: list[tuple[int | None, float]] = []
    lock = threading.Lock()
    counts = [per_client] * clients if total is None else [total // clients + (k < total % clients)
                                                           for k in range(clients)]

    def client(k: int) -> None:
        for i in range(counts[k]):
            body, ctype = bodies[(k + i) % len(bodies)]
            outcome = post(url, body, ctype, timeout)
            with lock:
                results.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    ok = [s for st, s in results if st == 200]
    lat = sorted(s for st, s in results if st is not None)
    return {"concurrency": clients, "requests": len(results), "ok": len(ok),
            "errors": sum(1 for st, _ in results if st not in (200, None)),
            "dropped": sum(1 for st, _ in results if st is None), "seconds": round(wall, 3),
            "throughput_rps": round(len(ok) / wall, 2),
            "p50_ms": round(1000 * _percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(1000 * _percentile(lat, 99), 1) if lat else None,
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None}


def _percentile(sorted_values: list[float], q: float) -> float:
    return float(np.percentile(np.array(sorted_values), q, method="linear"))


def malformed_round(url: str, good: bytes, timeout: float) -> list[dict[str, Any]]:
    """Each malformed request of the server tests, then a good one: their statuses."""
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    cases = {
        "not an image": form({}, b"this is text, not an image", "notes.txt"),
        "truncated PNG": form({}, encode(noise)[:-200], "cut.png"),
        "truncated JPEG": form({}, encode(noise, "JPEG")[:-300], "cut.jpg"),
        "too large": form({}, bytes(int(UPLOAD_MB * 1e6) + 500_000)),
        "unknown field": form({"colour": "red"}, good),
        "wrong type": form({"threshold": "abc"}, good),
        "extreme aspect ratio": form({}, encode(Image.new("RGB", (202, 2)))),
    }
    rows = []
    for name, (body, ctype) in cases.items():
        bad, _ = post(url, body, ctype, timeout)
        after, _ = post(url, *form({}, good), timeout)
        rows.append({"request": name, "status": bad, "then": after,
                     "ok": bad is not None and 400 <= bad < 500 and after == 200})
    return rows


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
        return json.loads(r.read())


def batch_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


# ------------------------------------------------------------------------------------------------ the run
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="model to serve (default: an untrained --preset model)")
    p.add_argument("--preset", default="cpu_demo", help="the untrained model's preset (default: cpu_demo)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="clients per round (default: 1 8)")
    p.add_argument("--requests", type=int, default=50, help="requests per client per round (default: 50)")
    p.add_argument("--warmup", type=int, default=20,
                   help="requests before the first round, from the largest round's clients (default: 20)")
    p.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default: 8)")
    p.add_argument("--queue-size", type=int, default=32, help="the server's --queue-size (default: 32)")
    p.add_argument("--image-size", type=int, nargs=2, default=[320, 240], metavar=("W", "H"))
    p.add_argument("--timeout", type=float, default=120.0, help="a client's wait for one answer (s)")
    p.add_argument("--out", type=Path, default=common.RESULTS / "serve" / "load.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: cpu_tiny, concurrency 1 and 2 x 3 requests, 4 warmup, 96x72 images")
    args = p.parse_args()
    if args.quick:
        args.preset, args.concurrency, args.requests, args.warmup = "cpu_tiny", [1, 2], 3, 4
        args.image_size = [96, 72]

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or save_untrained(args.preset, Path(tmp) / f"untrained_{args.preset}")
        log = Path(tmp) / "server.log"
        proc, url = start_server(checkpoint, args.max_batch, args.queue_size, log)
        try:
            report = measure(args, url, proc.pid)
        finally:
            stop_server(proc, 120)
        report["sigterm_exit_code"] = proc.returncode
        report["server_log_tail"] = log.read_text()[-2000:]
    report["checkpoint"] = str(args.checkpoint) if args.checkpoint else f"untrained {args.preset} (saved by the run)"
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(table(report))
    print(f"written: {args.out}")


def measure(args: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    images = test_images(*args.image_size)
    model = json.loads(urllib.request.urlopen(f"{url}/v1/model", timeout=30).read())
    warm = run_round(url, images, min(max(args.concurrency), args.warmup), 0, args.timeout, total=args.warmup)
    if warm["ok"] != args.warmup:
        sys.exit(f"warmup: {warm['ok']} of {args.warmup} requests answered 200")
    rss = {f"after_first_{args.warmup}": rss_mb(pid)}
    rounds = []
    for clients in args.concurrency:
        before = health(url)["batches"]
        row = run_round(url, images, clients, args.requests, args.timeout)
        row["batches"] = batch_delta(before, health(url)["batches"])
        row["rss_mb_after"] = rss[f"after_{clients}_clients"] = rss_mb(pid)
        rounds.append(row)
    malformed = malformed_round(url, images[0], args.timeout)
    rss["end"] = rss_mb(pid)
    return {"machine": common.machine(torch.device("cpu")), "model": {k: model[k] for k in ("preset", "runtime")},
            "server": {"max_batch": args.max_batch, "queue_size": args.queue_size, "max_upload_mb": UPLOAD_MB},
            "image_size": args.image_size, "requests_per_client": args.requests, "warmup": args.warmup,
            "rounds": rounds, "rss_mb": rss, "malformed": malformed}


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the figures it was judged on (the last round is the most clients)."""
    rounds = report["rounds"]
    one = next((r for r in rounds if r["concurrency"] == 1), None)
    most = max(rounds, key=lambda r: r["concurrency"])
    rss = report["rss_mb"]
    first = next(v for k, v in rss.items() if k.startswith("after_first_"))
    after = rss[f"after_{most['concurrency']}_clients"]
    out: dict[str, Any] = {
        f"no_errors_or_drops_at_{most['concurrency']}": most["errors"] == 0 and most["dropped"] == 0,
        "rss_growth": round(after / first - 1, 3),
        "rss_within_10pct": after <= 1.1 * first,
        "malformed_all_4xx_then_200": all(m["ok"] for m in report["malformed"]),
        "sigterm_exit_0": report["sigterm_exit_code"] == 0,
    }
    if one is not None and most is not one:
        out["speedup"] = round(most["throughput_rps"] / one["throughput_rps"], 2)
        out["speedup_at_least_1.5"] = out["speedup"] >= 1.5
    return out


def table(report: dict[str, Any]) -> str:
    lines = [f"serve load test: {report['checkpoint']} ({report['model']['runtime']}), images "
             f"{report['image_size'][0]}x{report['image_size'][1]}, server --max-batch "
             f"{report['server']['max_batch']}",
             "| clients | requests | ok | errors | dropped | req/s | p50 ms | p99 ms | batches size: n | RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rounds"]:
        batches = ", ".join(f"{k}: {v}" for k, v in sorted(r["batches"].items(), key=lambda kv: int(kv[0])))
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['errors']} | {r['dropped']} | "
                     f"{r['throughput_rps']:.2f} | {common.fmt(r['p50_ms'])} | {common.fmt(r['p99_ms'])} | "
                     f"{batches} | {r['rss_mb_after']} |")
    lines.append("RSS MB: " + ", ".join(f"{k} {v}" for k, v in report["rss_mb"].items()))
    lines.append("malformed: " + ", ".join(f"{m['request']} {m['status']} then {m['then']}"
                                            for m in report["malformed"]))
    lines.append(f"SIGTERM exit code: {report['sigterm_exit_code']}")
    lines.append("targets: " + ", ".join(f"{k} {v}" for k, v in report["targets"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
