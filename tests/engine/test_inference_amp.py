"""bf16 autocast runs only where the CPU has native bf16: elsewhere oneDNN emulates it, many times slower than
float32, so "bf16" on such a CPU means float32 (engine.inference.effective_amp)."""

from __future__ import annotations

import pytest
import torch

from dynamic_detr.engine import inference

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_on_cpu_only_where_native(monkeypatch, fast: bool) -> None:
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: fast)
    assert inference.effective_amp(CPU, "bf16") == ("bf16" if fast else "none")
    a = torch.randn(8, 8)
    with inference.autocast(CPU, "bf16"):
        out = a @ a
    assert out.dtype == (torch.bfloat16 if fast else torch.float32)


def test_other_modes_and_devices_unchanged(monkeypatch) -> None:
    monkeypatch.setattr(inference, "cpu_has_fast_bf16", lambda: False)
    assert inference.effective_amp(CPU, "none") == "none"
    assert inference.effective_amp(CUDA, "bf16") == "bf16"  # CUDA's bf16 is native
    assert inference.effective_amp(CUDA, "fp16") == "fp16"


def test_the_check_answers() -> None:
    assert isinstance(inference.cpu_has_fast_bf16(), bool)
