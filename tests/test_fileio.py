"""Atomic writes: files get the umask's mode, like any other new file (mkstemp alone would make them 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dynamic_detr.fileio import atomic_write, atomic_write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        atomic_write(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"\0"))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    for name in ("a.csv", "b.bin", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert (tmp_path / "a.csv").read_text() == "x\n"
