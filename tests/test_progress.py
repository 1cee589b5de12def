"""progress.py: a bar on a terminal, plain lines elsewhere, nothing when disabled; items pass unchanged."""

from __future__ import annotations

import io

from dynamic_detr.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal_end_with_the_count() -> None:
    out = io.StringIO()
    assert list(progress(range(5), "eval", stream=out, every_s=0.0)) == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("eval: 5/5 (100%)")
    assert len(lines) == 6  # one per item at every_s=0, and the final one
    assert "\r" not in out.getvalue()


def test_unknown_total_counts_without_a_percentage() -> None:
    out = io.StringIO()
    assert list(progress(iter("abc"), "frames", stream=out, unit="frame")) == ["a", "b", "c"]
    assert out.getvalue().strip() == out.getvalue().strip().splitlines()[-1]  # only the final line
    assert out.getvalue().startswith("frames: 3 frame,")


def test_terminal_gets_a_tqdm_bar() -> None:
    out = _Tty()
    assert list(progress(range(3), "predict", stream=out)) == [0, 1, 2]
    assert "predict" in out.getvalue() and "\r" in out.getvalue()


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    assert list(progress(range(3), "eval", enabled=False, stream=out)) == [0, 1, 2]
    assert out.getvalue() == ""
