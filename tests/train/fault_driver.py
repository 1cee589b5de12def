"""Run the CLI with a SIGKILL planted at an exact point (for tests/train/test_faults.py).

    FAULT=criterion:N   SIGKILL inside the N-th loss computation of this process (mid-step)
    FAULT=save:N        SIGKILL halfway through writing the N-th training checkpoint of this process: half the
                        bytes are in the temp file, the rename has not happened
    FAULT=saved:N       SIGKILL right after the N-th checkpoint file (last.pt or best.pt) of this process is
                        written whole (renamed into place)
    FAULT=eval:N        SIGKILL inside the N-th evaluation of this process
    (unset)             no fault

Usage: python fault_driver.py train --data ... (the arguments of `dynamic-detr`).
"""

from __future__ import annotations

import io
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _plant(kind: str, n: int) -> None:
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    if kind == "criterion":
        from dynamic_detr.objective.criterion import SetCriterion

        original = SetCriterion.forward

        def forward(self, outputs, targets):
            losses = original(self, outputs, targets)
            if due():
                _die()
            return losses

        SetCriterion.forward = forward
    elif kind == "save":
        import torch

        from dynamic_detr import checkpoint

        real_save = torch.save

        class _Torch:  # the checkpoint module's `torch`, with a save that dies halfway through the file
            def __getattr__(self, name):
                return getattr(torch, name)

            @staticmethod
            def save(obj, f, *args, **kwargs):
                if not due():
                    return real_save(obj, f, *args, **kwargs)
                buf = io.BytesIO()
                real_save(obj, buf, *args, **kwargs)
                data = buf.getvalue()
                with open(f, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                _die()

        checkpoint.torch = _Torch()
    elif kind == "saved":
        from dynamic_detr.train import state

        real_save_checkpoint = state.save_checkpoint

        def save_checkpoint(path, obj):
            real_save_checkpoint(path, obj)
            if due():
                _die()

        state.save_checkpoint = save_checkpoint
    elif kind == "eval":
        from dynamic_detr.train import validation

        original_eval = validation.evaluate_model

        def evaluate_model(model, loader, *args, **kwargs):
            if due():
                next(iter(loader))  # inside evaluation, with a batch loaded
                _die()
            return original_eval(model, loader, *args, **kwargs)

        validation.evaluate_model = evaluate_model
    else:
        raise SystemExit(f"unknown FAULT kind {kind!r}")


if __name__ == "__main__":
    fault = os.environ.get("FAULT")
    if fault:
        kind, n = fault.split(":")
        _plant(kind, int(n))
    from dynamic_detr.cli.main import main

    sys.exit(main(sys.argv[1:]))
