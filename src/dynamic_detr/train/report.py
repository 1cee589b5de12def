"""The run folder's human-readable side: results.csv, TensorBoard events, plots.

Only rank 0 creates a `RunReport`. `results.csv` is rewritten whole (atomically) after every epoch, so it is
never half-written and a resumed run keeps its earlier rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate.metrics import AP_NAMES
from ..fileio import atomic_write_text


class RunReport:
    def __init__(self, out: Path, tensorboard: bool = True) -> None:
        self.out = out
        self.csv_path = out / "results.csv"
        self.plots = out / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = self._read_rows()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but never fail a run over it
                self._tb = None

    def _read_rows(self) -> list[dict[str, Any]]:
        if not self.csv_path.exists():
            return []
        with self.csv_path.open(newline="") as f:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def drop_after(self, epoch: int) -> None:
        """Forget the rows of epochs after `epoch` (a resumed run's checkpoint): written just before a kill that
        came before their checkpoint, the resumed run writes them again."""
        kept = [r for r in self.rows if not (isinstance(r.get("epoch"), int) and r["epoch"] > epoch)]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._write_csv()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._tb is not None:
            self._tb.add_scalar(tag, value, step)

    def add_epoch(self, row: dict[str, Any], plot: bool = True) -> None:
        """Replace any earlier row of the same epoch (a resumed run re-doing it), rewrite the CSV, and redraw
        the curves when `plot` (the trainer does at evaluated epochs)."""
        self.rows = [r for r in self.rows if r.get("epoch") != row["epoch"]] + [row]
        self._write_csv()
        for k, v in row.items():
            if isinstance(v, int | float) and k not in ("epoch", "step"):
                self.scalar(f"epoch/{k}", float(v), int(row["epoch"]))
        if self._tb is not None:
            self._tb.flush()
        if plot:
            self.plot_curves()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.csv_path, buf.getvalue())

    def plot_curves(self) -> None:
        """plots/loss.png (every total and final-stage loss term) and plots/ap.png (AP metrics per epoch)."""
        loss_keys = [k for k in ("loss", "loss_class", "loss_bbox", "loss_giou") if any(k in r for r in self.rows)]
        if loss_keys:
            _plot_epochs(self.plots / "loss.png", self.rows, loss_keys, "training loss (epoch mean)", log=True)
        ap_rows = [r for r in self.rows if isinstance(r.get("AP"), int | float)]
        if ap_rows:
            _plot_epochs(self.plots / "ap.png", ap_rows, AP_NAMES, "COCO AP (%)", log=False)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _num(v: str) -> Any:
    if v == "":
        return ""
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _plot_epochs(path: Path, rows: list[dict[str, Any]], keys: Sequence[str], ylabel: str, log: bool) -> None:
    """One line per key over the rows' epochs, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in keys:
        ax.plot([r["epoch"] for r in rows], [r.get(k, math.nan) for r in rows], marker="o", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v

