"""Fixtures for the data tests: a tiny COCO dataset writer and a small synthetic dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from data_helpers import write_coco

from dynamic_detr.data.synthetic import generate


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
