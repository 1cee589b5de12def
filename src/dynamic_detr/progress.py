"""Progress of a long loop: a tqdm bar on a terminal, plain lines otherwise (logs, CI, `nohup`).

A bar redrawn with `\\r` turns a log file into one unreadable line per refresh, so off a terminal the same
loop prints `desc: k/N (p%)` about every `every_s` seconds and once at the end. Only rank 0 of a distributed
run reports (the caller passes `enabled=False` elsewhere)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None, *, enabled: bool = True,
             tty: bool | None = None, every_s: float = 30.0, unit: str = "it",
             stream: TextIO | None = None) -> Iterator[T]:
    """Yield `items`, reporting progress on `stream` (default stderr). `tty` None: ask the stream.
    `total` None: `len(items)` when it has one (a count without a percentage otherwise)."""
    stream = stream or sys.stderr
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not enabled:
        yield from items
        return
    if tty is None:
        tty = bool(getattr(stream, "isatty", lambda: False)())
    if tty:
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, total=total, unit=unit, file=stream, dynamic_ncols=True, leave=False)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            print(_line(desc, done, total, now - start, unit), file=stream, flush=True)
    print(_line(desc, done, total, time.monotonic() - start, unit), file=stream, flush=True)


def _line(desc: str, done: int, total: int | None, seconds: float, unit: str) -> str:
    of = f"/{total} ({100 * done / total:.0f}%)" if total else ""
    return f"{desc}: {done}{of} {unit}, {seconds:.0f} s"
