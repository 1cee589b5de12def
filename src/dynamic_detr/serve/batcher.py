"""Requests that arrive together go through the model as one batch: a bounded queue and one model thread.

The server's event loop hands each decoded image to `Batcher.submit` and awaits the `Future` it returns; it never
runs the model itself, so it keeps accepting and answering (health checks, 503s, errors) while a batch runs. The
model thread takes the first waiting job, then gathers more for at most `gather_ms` (or until `max_batch`): every
job that is waiting when a batch ends goes into the next one at once, so under load batches fill without waiting,
and a lone request waits only the gather window. Jobs carry a key (`None` for the plain model, tile options for
tiled ones); one batch holds jobs of one key, a job of another key waits for the next batch.

The queue is bounded (`queue_size` jobs waiting): `submit` raises `QueueFull` at once rather than blocking, which
the server answers with 503. `close` refuses new jobs, lets the thread finish every queued one, and joins it: a
SIGTERM drains what was accepted."""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

Detections = list[dict[str, torch.Tensor]]
RunBatch = Callable[[Hashable, list[torch.Tensor]], Detections]
"""(key, uint8 [3, H, W] images) -> per image `boxes`, `scores`, `labels`: `Predictor.__call__` behind a key."""


class QueueFull(Exception):
    """The queue holds `queue_size` jobs: the caller should answer 503 and the client retry later."""


class Closed(Exception):
    """The batcher is shutting down and takes no new jobs."""


@dataclass
class _Job:
    image: torch.Tensor
    key: Hashable
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the model thread has done: how many batches of each size, and the images they held."""

    sizes: collections.Counter = field(default_factory=collections.Counter)
    images: int = 0
    failed_batches: int = 0


class Batcher:
    """One model thread fed by a bounded queue; see the module docstring."""

    def __init__(self, run: RunBatch, max_batch: int = 8, gather_ms: float = 5.0, queue_size: int = 32) -> None:
        if max_batch < 1 or queue_size < 1 or gather_ms < 0:
            raise ValueError(f"max_batch {max_batch} and queue_size {queue_size} must be >= 1, "
                             f"gather_ms {gather_ms} >= 0")
        self.run = run
        self.max_batch = max_batch
        self.gather = gather_ms / 1000.0
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._held: collections.deque[_Job] = collections.deque()  # taken from the queue, of another key
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name="dynamic-detr-model", daemon=True)
        self.stats = BatchStats()

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def waiting(self) -> int:
        """Jobs accepted and not yet in a batch."""
        return self._queue.qsize() + len(self._held)

    def submit(self, image: torch.Tensor, key: Hashable = None) -> Future:
        """Queue one image; its Future resolves to its detections (or the model's exception). Raises QueueFull
        when `queue_size` jobs wait, Closed once `close` was called. Cancelling the Future before its batch
        starts drops the job (a request that timed out costs no model time)."""
        if self._closing.is_set():
            raise Closed("the server is shutting down")
        job = _Job(image, key)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._queue.maxsize} requests are waiting for the model") from None
        return job.future

    def close(self, timeout: float | None = None) -> bool:
        """Take no new jobs, finish the queued ones, stop the thread. Returns whether it stopped in `timeout`."""
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ the model thread
    def _next(self, timeout: float | None) -> _Job | None:
        """The oldest job held back or queued, waiting up to `timeout` (None: block, 0: don't wait)."""
        if self._held:
            return self._held.popleft()
        try:
            return self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` and the jobs of its key that are waiting or arrive within the gather window, up to
        `max_batch`; jobs of another key are held for a later batch, in their order."""
        batch, other = [first], []
        deadline = time.monotonic() + self.gather
        held, self._held = self._held, collections.deque()
        while held and len(batch) < self.max_batch:
            job = held.popleft()
            (batch if job.key == first.key else other).append(job)
        other.extend(held)
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            (batch if job.key == first.key else other).append(job)
        self._held.extend(other)
        return batch

    def _work(self) -> None:
        while True:
            first = self._next(timeout=0.05)
            if first is None:
                if self._closing.is_set() and self._queue.empty() and not self._held:
                    return
                continue
            jobs = [j for j in self._gather(first) if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            results = self.run(jobs[0].key, [j.image for j in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"the model returned {len(results)} results for {len(jobs)} images")
        except Exception as e:  # the server answers 500 for these jobs and goes on with the next batch
            self.stats.failed_batches += 1
            traceback.print_exc(file=sys.stderr)
            for job in jobs:
                job.future.set_exception(e)
            return
        self.stats.sizes[len(jobs)] += 1
        self.stats.images += len(jobs)
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)
