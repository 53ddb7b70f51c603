"""Plots the notebooks share. Each function draws on a new or given Axes and
returns the Figure, so notebooks can save or test it; none calls ``plt.show``.
"""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data.render import SPECTROGRAM_HOP
from .glossary import PIPELINE_EDGES


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def show_images(images, titles=(), ncols: int = 8, scale: float = 1.4):
    """A grid of images (N, 3, S, S), float in [0, 1] or uint8."""
    images = _np(images)
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = images[i].transpose(1, 2, 0)
            ax.imshow(img if img.dtype == np.uint8 else np.clip(img, 0, 1), interpolation="nearest")
            if i < len(titles):
                ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def plot_audio(waves, specs, titles, sample_rate: int, hop: int = SPECTROGRAM_HOP):
    """Waveforms (N, T) above their log-mel spectrograms (N, M, F), on one colour scale."""
    waves, specs = _np(waves), _np(specs)
    vmin, vmax = np.percentile(specs, [1, 99.5])  # shared, so loud and quiet clips compare
    n = len(waves)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 4.4), squeeze=False)
    t_ms = np.arange(waves.shape[1]) / sample_rate * 1000
    for i in range(n):
        axes[0, i].plot(t_ms, waves[i], lw=0.6)
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[0, i].set_xlabel("time (ms)")
        axes[1, i].imshow(specs[i], origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax)
        axes[1, i].set_xlabel(f"frame ({1000 * hop / sample_rate:g} ms hop)")
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("mel band")
    fig.tight_layout()
    return fig


def plot_bayes_table(table: dict, chance: float | None = None, ax=None):
    """Horizontal bars: exact Bayes accuracy of every non-empty modality subset."""
    items = [(" + ".join(k), v) for k, v in table.items() if k]
    items.sort(key=lambda kv: kv[1])
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.2))
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    if chance is not None:
        ax.axvline(chance, color="grey", ls="--", lw=1, label=f"no input (prior) {chance:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("Bayes-optimal accuracy (exact)")
    ax.set_title("Every added modality raises the ceiling")
    fig.tight_layout()
    return fig


def plot_accuracy_bars(values: dict[str, float], highlight: str, title: str, ax=None):
    """Horizontal bars of accuracies (models and limits), the ``highlight`` one in colour."""
    if highlight not in values:
        raise ValueError(f"highlight {highlight!r} is not one of {list(values)}")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 0.5 + 0.5 * len(values)))
    bars = ax.barh(list(values), list(values.values()),
                   color=["tab:blue" if k == highlight else "0.6" for k in values])
    ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("accuracy (fraction of scenes)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_confusion(matrix, class_names, title: str = "Confusion matrix (rows: true class)", ax=None):
    """Row-normalised confusion matrix with counts in the cells."""
    matrix = _np(matrix)
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    for i in ticks:
        for j in ticks:
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    return fig


def plot_history(history, bayes: dict[str, float] | None = None, title: str | None = None):
    """Training loss and dev accuracy per epoch, with Bayes limits as lines."""
    epochs = np.arange(1, len(history.train_loss) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, history.train_loss, marker="o")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (cross-entropy)")
    a.set_title("Training loss")
    b.plot(epochs, history.dev_accuracy, marker="o", label="model (dev)")
    for (name, value), style in zip((bayes or {}).items(), itertools.cycle(("--", ":", "-."))):
        b.axhline(value, ls=style, color="grey", label=f"Bayes, {name}: {value:.3f}")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.set_ylim(0, 1.02)
    b.set_title(title or "Dev accuracy against the Bayes limits", fontsize=9)
    b.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# Node positions of the course map (x, y), chapter numbers beside the boxes.
_MAP_LAYOUT = {
    "multimodal data": ((0.0, 1.0), "01"),
    "cross-modal fusion": ((1.5, 1.6), "03-05"),
    "joint training": ((3.0, 1.6), "07"),
    "task adaptation": ((4.5, 1.6), "08"),
    "pretraining": ((2.25, 0.2), "06"),
    "cross-modal model": ((6.0, 1.0), "02, 09"),
    "inference": ((7.5, 1.0), "09+"),
}


def plot_course_map():
    """The article's pipeline (its §2 diagram) redrawn, with the chapters that teach each step."""
    fig, ax = plt.subplots(figsize=(10, 3.2))
    boxes = {}
    for name, ((x, y), chapters) in _MAP_LAYOUT.items():
        boxes[name] = ax.text(x, y, f"{name}\n(ch. {chapters})", ha="center", va="center", fontsize=8.5,
                              bbox=dict(boxstyle="round,pad=0.5", fc="#e8f0fb", ec="#3a6ea5"))
    for src, dst in PIPELINE_EDGES:  # arrows clipped at the box outlines
        ax.annotate("", xy=_MAP_LAYOUT[dst][0], xytext=_MAP_LAYOUT[src][0],
                    arrowprops=dict(arrowstyle="-|>", color="0.4", lw=1.2, shrinkA=3, shrinkB=3,
                                    patchA=boxes[src].get_bbox_patch(), patchB=boxes[dst].get_bbox_patch()))
    ax.set_xlim(-0.8, 8.3)
    ax.set_ylim(-0.3, 2.1)
    ax.axis("off")
    ax.set_title("The course map: the article's pipeline, stage by stage")
    fig.tight_layout()
    return fig
