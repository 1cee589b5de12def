"""Fixtures for the whole suite: free TCP ports for torchrun; torch's deterministic mode put back after each test."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
import torch


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
