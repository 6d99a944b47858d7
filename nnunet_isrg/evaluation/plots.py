"""Figures: Dice (or NSD/HD95) against clicks, per method or for one fold, and per-attribute accuracy bars.

Matplotlib with the Agg backend (no display needed); every figure is written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..files import atomic_path

METRIC_LABELS = {"dice": "Dice", "nsd": "NSD @ 2 mm", "hd95": "HD95 (mm)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return Path(path)


def _finish(plt, fig, path: str | os.PathLike, suptitle: str | None = None) -> Path:
    """Title, layout, an atomic write and the figure closed (pyplot keeps every open figure alive)."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def _nan(values: Sequence) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def curve_from_summary(summary: Mapping, metric: str = "dice", max_click: int | None = None,
                       no_clicks: bool = False) -> dict:
    """One curve of :func:`plot_metric_vs_clicks` from a ``summarise_cases`` summary: the mean and std
    of ``metric`` at clicks 1..``max_click`` (default every click)."""
    per_click = summary["per_click"][metric][:max_click]
    return {"mean": summary["mean_per_click"][metric][:max_click], "std": [c["std"] for c in per_click],
            "no_clicks": no_clicks}


def plot_metric_vs_clicks(panels: Mapping[str, Mapping[str, dict]], out_png: str | os.PathLike,
                          metric: str = "dice", title: str | None = None) -> Path:
    """One panel per block (e.g. "validation", "zero-shot"), one curve per method.

    ``panels[block][method] = {"mean": [...], "std": [...], "no_clicks": bool}`` with one value per
    click (1..n). Methods that take no clicks are drawn as a dashed line at their (constant) value.
    """
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), dpi=120, squeeze=False)
    for ax, (block, curves) in zip(axes[0], panels.items()):
        n_max = 1
        for i, (method, c) in enumerate(curves.items()):
            mean, std = _nan(c["mean"]), _nan(c.get("std") or [0.0] * len(c["mean"]))
            x = np.arange(1, mean.size + 1)
            n_max = max(n_max, mean.size)
            style = dict(linestyle="--", marker=None) if c.get("no_clicks") else dict(linestyle="-", marker="o")
            line, = ax.plot(x, mean, label=method, color=f"C{i}", **style)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.12)
        ax.set_xlabel("clicks")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        if metric in ("dice", "nsd"):
            ax.set_ylim(0, 1)
        ax.set_xticks(np.arange(1, n_max + 1))
        ax.set_title(block)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if metric != "hd95" else "upper right")
    return _finish(plt, fig, out_png, title)


def plot_attribute_accuracy(accuracy: Mapping[str, Mapping[str, float | None]], out_png: str | os.PathLike,
                            majority_rate: Mapping[str, float | None] | None = None,
                            title: str | None = None) -> Path:
    """Grouped bars: per attribute (x) one bar per method; a black tick marks the majority-class rate.

    ``accuracy[method][attribute]`` in [0, 1] (None: not available, drawn as no bar).
    """
    plt = _pyplot()
    methods = list(accuracy)
    attributes = list(dict.fromkeys(a for m in methods for a in accuracy[m]))
    x = np.arange(len(attributes))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(attributes) + 2), 4.4), dpi=120)
    for i, m in enumerate(methods):
        vals = _nan([accuracy[m].get(a) for a in attributes])
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, label=m, color=f"C{i}")
    if majority_rate:
        rates = _nan([majority_rate.get(a) for a in attributes])
        ax.hlines(rates, x - 0.42, x + 0.42, colors="k", linestyles=":", label="majority-class rate")
    ax.set_xticks(x)
    ax.set_xticklabels(attributes)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    # below the axes: inside, the legend would hide bars near 1.0
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, len(methods) + 1),
              frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return _finish(plt, fig, out_png)



def plot_learning_curves(folds: Mapping[str, Mapping[str, Sequence[float]]], out_png: str | os.PathLike,
                         title: str | None = None) -> Path:
    """nnU-Net's training log per fold: losses (left) and the held-out pseudo Dice (right) per epoch.

    ``folds[fold] = {"train_loss": [...], "val_loss": [...], "pseudo_dice": [...]}``, one value per epoch."""
    plt = _pyplot()
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(10.4, 3.8), dpi=120)
    for i, (fold, c) in enumerate(folds.items()):
        x = np.arange(1, len(c["train_loss"]) + 1)
        loss_ax.plot(x, _nan(c["train_loss"]), color=f"C{i}", label=f"fold {fold}, training cases")
        loss_ax.plot(x, _nan(c["val_loss"]), color=f"C{i}", linestyle="--", label=f"fold {fold}, held-out cases")
        dice_ax.plot(x, _nan(c["pseudo_dice"]), color=f"C{i}", marker=".", label=f"fold {fold}")
    loss_ax.set_ylabel("loss")
    dice_ax.set_ylabel("pseudo Dice, held-out cases")
    dice_ax.set_ylim(0, 1)
    for ax in (loss_ax, dice_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return _finish(plt, fig, out_png, title)


__all__ = ["curve_from_summary", "plot_metric_vs_clicks", "plot_attribute_accuracy", "plot_learning_curves",
           "METRIC_LABELS"]
