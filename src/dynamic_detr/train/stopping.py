"""Stopping a run: SIGINT / SIGTERM requests, the loader's workers dying of them, the time budget (early
stopping on the val AP: early_stopping.py).

A request stops the loop after the current step (or evaluation) and the trainer writes a checkpoint; a
distributed run shares the decision through `distributed.any_rank` at step boundaries.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from typing import Any

clock = time.perf_counter
"""The training-time clock (a module attribute so that tests can drive it)."""


class StopFlag:
    """SIGINT / SIGTERM ask the loop to stop after the current step (or evaluation) and write a checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._announced = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        # no I/O here: a print can land inside another write to the same stream (tqdm's bar) and raise
        # "reentrant call"; the loop reports the request (`announce`)
        if self.requested:
            if signum == signal.SIGINT:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            return  # repeated SIGTERMs (e.g. a supervisor and its child both forwarding one): keep stopping
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        self._quiet_worker_deaths()

    def announce(self) -> None:
        """Say once, outside the signal handler, that a stop was requested."""
        if self.requested and not self._announced:
            self._announced = True
            print(f"\n{self.signal_name or 'stop'}: stopping and saving a checkpoint (again to abort)",
                  file=sys.stderr, flush=True)

    def _quiet_worker_deaths(self) -> None:
        """A signal sent to the whole process group (Ctrl-C in a terminal, `kill -TERM -PGID`) also ends the
        DataLoader workers, and torch's SIGCHLD handler then raises "DataLoader worker ... is killed by signal"
        wherever the main process happens to be, e.g. halfway through writing the checkpoint. Once a stop is
        requested the workers' death is expected: swallow that error (the loader itself still reports it at
        its next batch, which `until_loader_dies` turns into the end of the epoch and `_evaluate` into a
        stop)."""
        sigchld = getattr(signal, "SIGCHLD", None)
        previous = signal.getsignal(sigchld) if sigchld is not None else None
        if not callable(previous):
            return

        def handler(signum, frame) -> None:
            with contextlib.suppress(RuntimeError):
                previous(signum, frame)

        with contextlib.suppress(ValueError):
            signal.signal(sigchld, handler)
            self._old.setdefault(sigchld, previous)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def until_loader_dies(iterator, stop: StopFlag):
    """Batches from `iterator`; if a DataLoader worker dies *because a stop was requested* (a signal sent to
    the whole process group, e.g. Ctrl-C or `kill -TERM -PGID`), end the epoch quietly so that the stop path
    writes its checkpoint. Any other failure propagates."""
    it = iter(iterator)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError:
            if stop.requested:
                return
            raise
        yield batch


class EvalInterrupted(Exception):
    """A stop request cut an evaluation short (its metrics would be partial: none are reported)."""


class StopAwareLoader:
    """The batches of `loader`, raising `EvalInterrupted` at the next one once a stop is requested."""

    def __init__(self, loader, stop: StopFlag) -> None:
        self.loader = loader
        self.stop = stop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.stop.requested:
                raise EvalInterrupted
            yield batch


def out_of_time(minutes: float | None, elapsed: float) -> bool:
    """Whether a run with a budget of `minutes` (None or 0: no budget) has used it after `elapsed` seconds."""
    return bool(minutes) and elapsed >= 60 * minutes
