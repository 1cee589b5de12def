"""The error analysis figures (matplotlib, Agg backend): PR curves, confusion matrix, error breakdown."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .analysis import ConfusionMatrix

_LEGEND_MAX = 12  # classes named in the PR legend; beyond it only "all classes" is


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(path: Path, pr: dict[str, Any]) -> None:
    """One panel per IoU: a thin line per class, a thick black one for all classes; APs in the legend."""
    plt = _pyplot()
    panels = list(pr["precision"])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    recall = pr["recall"]
    for ax, key in zip(axes[0], panels, strict=True):
        curves, aps = pr["precision"][key], pr["ap"][key]
        classes = [n for n in curves if n != "all"]
        for name in classes:
            label = f"{name} {aps[name]:.1f}" if len(classes) <= _LEGEND_MAX else None
            ax.plot(recall, curves[name], linewidth=1, alpha=0.6, label=label)
        if "all" in curves:
            ax.plot(recall, curves["all"], color="black", linewidth=2.5, label=f"all classes {aps['all']:.1f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
               title=f"IoU {key} (AP in legend, area all, 100 dets)")
        ax.grid(alpha=0.3)
        if curves:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(path: Path, cm: ConfusionMatrix) -> None:
    """Heat map coloured by the fraction of each ground-truth row (the background row: of all false positives),
    with the counts written in the cells when there are at most 30 classes."""
    plt = _pyplot()
    n = len(cm.names)
    counts = cm.counts.astype(np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    side = min(30.0, max(5.0, 0.45 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), cm.names, rotation=90)
    ax.set_yticks(range(n), cm.names)
    ax.set_xlabel("predicted (background: missed object)")
    ax.set_ylabel("ground truth (background: false positive)")
    ax.set_title(f"confusion matrix: score >= {cm.score_threshold:g}, IoU >= {cm.iou_threshold:g}")
    if n <= 31:
        for i in range(n):
            for j in range(n):
                if i == n - 1 and j == n - 1:
                    continue
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if fractions[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_errors(path: Path, errors: dict[str, Any]) -> None:
    """Horizontal bars: dAP50 of each error type's oracle (TIDE's six), then TIDE's two special ones."""
    plt = _pyplot()
    rows = [(k, v, "tab:red") for k, v in errors["errors"].items()]
    rows += [(k, v, "tab:gray") for k, v in errors["special"].items()]
    labels = [f"{k.replace('_', ' ')} ({v['count']})" for k, v, _ in rows]
    values = [0.0 if math.isnan(v["dAP50"]) else v["dAP50"] for _, v, _ in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, values, color=[c for _, _, c in rows])
    ax.set_yticks(y, labels)
    for yi, v in zip(y, values, strict=True):
        ax.text(v, yi, f" {v:.1f}", va="center", fontsize=8)
    base = errors["AP50"]
    ax.set_xlabel("AP50 gained when fixed (dAP50); in brackets: how many")
    ax.set_title(f"error breakdown (TIDE-style): AP50 {base:.1f}" if not math.isnan(base)
                 else "error breakdown (TIDE-style)")
    ax.set_xlim(min([*values, 0.0]) * 1.15, max([*values, 1.0]) * 1.15)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
