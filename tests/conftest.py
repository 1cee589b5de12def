"""Fixtures for the whole suite: free TCP ports for torchrun."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, picked by the OS (bind to port 0), not a fixed one
    that another run on the same machine (another checkout's tests, a real torchrun job) may hold."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()` -> a port nothing listens on now, for torchrun's --master-port / --rdzv-endpoint. Call it
    once per launch, right before it: the port is released when it returns, so the window in which another
    process could take it is short, but not zero."""
    return _free_port
