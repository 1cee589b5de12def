"""bf16 autocast runs only where the CPU has native bf16: elsewhere oneDNN emulates it, many times slower than
float32, so "bf16" on such a CPU means float32 (evaluate.inference.effective_amp)."""

from __future__ import annotations

import pytest
import torch

from dynamic_detr.evaluate import inference

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


@pytest.mark.parametrize("answer, expected", [(1, True), (0, False), (AttributeError, False), (RuntimeError, False)])
def test_the_check_is_onednns_answer_and_false_without_onednn(monkeypatch, answer, expected) -> None:
    """oneDNN's answer as a bool; a build without oneDNN (no op, or one that raises) has no fast bf16."""

    def supported():
        if isinstance(answer, type):
            raise answer("no oneDNN")
        return answer

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", supported, raising=False)
    inference.cpu_has_fast_bf16.cache_clear()  # cached: asked once per process
    try:
        assert inference.cpu_has_fast_bf16() is expected
    finally:
        inference.cpu_has_fast_bf16.cache_clear()  # later tests get this machine's answer
