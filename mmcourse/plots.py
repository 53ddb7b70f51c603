"""Plots the notebooks share. Each function draws on a new or given Axes and
returns the Figure, so notebooks can save or test it; none calls ``plt.show``.
"""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np

from .data.render import SPECTROGRAM_HOP
from .metrics import as_numpy


def show_images(images, titles=(), ncols: int = 8, scale: float = 1.4):
    """A grid of images (N, 3, S, S), float in [0, 1] or uint8."""
    images = as_numpy(images)
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


SPECTROGRAM_LABEL = "log-mel energy (ln power)"   # what log_mel_spectrogram returns: natural log of mel-band power


def plot_audio(waves, specs, titles, sample_rate: int, hop: int = SPECTROGRAM_HOP):
    """Waveforms (N, T) above their log-mel spectrograms (N, M, F), on one colour scale with one colour bar."""
    waves, specs = as_numpy(waves), as_numpy(specs)
    vmin, vmax = np.percentile(specs, [1, 99.5])  # shared, so loud and quiet clips compare
    n = len(waves)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 0.8, 4.4), squeeze=False, layout="constrained")
    t_ms = np.arange(waves.shape[1]) / sample_rate * 1000
    for i in range(n):
        axes[0, i].plot(t_ms, waves[i], lw=0.6)
        axes[0, i].set_title(titles[i], fontsize=8)
        axes[0, i].set_xlabel("time (ms)")
        image = axes[1, i].imshow(specs[i], origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax)
        axes[1, i].set_xlabel(f"frame ({1000 * hop / sample_rate:g} ms hop)")
    axes[0, 0].set_ylabel("amplitude")
    axes[1, 0].set_ylabel("mel band")
    fig.colorbar(image, ax=axes[1, :].tolist(), label=SPECTROGRAM_LABEL)  # one bar: the scale is shared
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
    """Horizontal bars of accuracies (models and limits) on [0, 1], the ``highlight`` one in colour."""
    return plot_bars(values, "accuracy (fraction of scenes)", title, highlight=highlight, xlim=(0, 1.1), ax=ax)


def plot_confusion(matrix, class_names, title: str = "Confusion matrix (rows: true class)", ax=None):
    """Row-normalised confusion matrix with counts in the cells."""
    matrix = as_numpy(matrix)
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
    """Training loss and dev accuracy per evaluation against epochs, with Bayes limits as lines."""
    epochs = np.asarray(getattr(history, "epoch", None) or np.arange(1, len(history.train_loss) + 1))
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


# --- chapter 03 ---


def plot_sweep(x, panels: dict[str, dict[str, list]], xlabel: str, title: str,
               hlines: dict[str, dict[str, float]] | None = None, styles: dict[str, dict] | None = None,
               logx: bool = True):
    """Metrics against one hyper-parameter (e.g. a regularisation strength), one panel per metric.

    Args:
        x: the hyper-parameter values (K,).
        panels: per panel, keyed by its y-axis label, the curves ``{label: K values}``.
        xlabel: the x-axis label, with units.
        title: the figure title (state the finding).
        hlines: per panel label, reference levels ``{label: value}`` drawn as grey lines.
        styles: per curve label, keyword arguments for ``Axes.plot`` (colour, line style).
        logx: logarithmic x axis.
    """
    x = as_numpy(x)
    if not panels:
        raise ValueError("panels is empty: give at least one {y label: {curve label: values}}")
    unknown = set(hlines or {}) - set(panels)
    if unknown:
        raise ValueError(f"hlines names panels {sorted(unknown)} that are not in panels {list(panels)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.5), squeeze=False)
    for ax, (ylabel, curves) in zip(axes[0], panels.items()):
        for label, values in curves.items():
            values = as_numpy(values)
            if values.shape != x.shape:
                raise ValueError(f"curve {label!r} has shape {values.shape}, expected {x.shape} like x")
            ax.plot(x, values, marker="o", ms=3, label=label, **(styles or {}).get(label, {}))
        for (label, value), ls in zip((hlines or {}).get(ylabel, {}).items(), itertools.cycle((":", "--", "-."))):
            ax.axhline(value, color="grey", ls=ls, lw=1, label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- chapter 04 ---


def plot_accuracy_vs_cost(points: list[dict], xlabel: str, title: str,
                          ylabel: str = "gap to the Bayes limit (percentage points)",
                          hlines: dict[str, float] | None = None, ax=None):
    """One labelled marker per model: a gap (y) against a cost (x, log scale), coloured by group.

    Args:
        points: one dict per model with ``name`` (the marker's label), ``group`` (its colour, e.g. the
            modality), ``cost`` (> 0, e.g. FLOPs per sample), ``gap`` (e.g. Bayes limit minus accuracy, in
            the unit of ``ylabel``) and optionally ``err`` (half-length of an error bar on the gap).
        xlabel, title: axis label with units; a title that states the finding.
        hlines: reference levels ``{label: y}`` drawn as grey lines (e.g. the target).
    """
    if not points:
        raise ValueError("points is empty: give at least one {name, group, cost, gap}")
    missing = [sorted({"name", "group", "cost", "gap"} - set(p)) for p in points]
    if any(missing):
        raise ValueError(f"every point needs name, group, cost and gap; missing {next(m for m in missing if m)}")
    if any(p["cost"] <= 0 for p in points):
        raise ValueError("costs must be > 0 on a logarithmic axis")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7.5, 4.2))
    colours = dict(zip(dict.fromkeys(p["group"] for p in points), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for group, colour in colours.items():
        mine = [p for p in points if p["group"] == group]
        ax.errorbar([p["cost"] for p in mine], [p["gap"] for p in mine], yerr=[p.get("err", 0.0) for p in mine],
                    fmt="o", color=colour, ms=7, capsize=3, label=group)
    places = (((0, 8), "center"), ((0, -15), "center"), ((8, -3), "left"))   # above, below, right of the marker
    for rank, p in enumerate(sorted(points, key=lambda p: p["cost"])):       # neighbours in x take turns
        offset, align = places[rank % len(places)]
        ax.annotate(p["name"], (p["cost"], p["gap"]), textcoords="offset points", xytext=offset, ha=align,
                    fontsize=8)
    for (label, y), ls in zip((hlines or {}).items(), itertools.cycle(("--", ":", "-."))):
        ax.axhline(y, color="grey", ls=ls, lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_grouped_bars(values: dict[str, dict[str, float]], ylabel: str, title: str,
                      hlines: dict[str, float] | None = None, ax=None):
    """Grouped vertical bars: ``values[series][group]``, the groups on the x axis, one bar per series.

    Every series must give a value for the same groups, in the same order.
    """
    if not values:
        raise ValueError("values is empty: give at least one {series: {group: value}}")
    groups = list(next(iter(values.values())))
    for series, row in values.items():
        if list(row) != groups:
            raise ValueError(f"series {series!r} has groups {list(row)}, expected {groups}")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / len(values)
    x = np.arange(len(groups))
    for i, (series, row) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, list(row.values()), width, label=series)
    for (label, y), ls in zip((hlines or {}).items(), itertools.cycle(("--", ":", "-."))):
        ax.axhline(y, color="grey", ls=ls, lw=1, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))   # outside: bars stay visible
    fig.tight_layout()
    return fig


# --- chapter 05 ---


def plot_heatmap(values: dict[str, dict[str, float]], title: str, xlabel: str, ylabel: str = "",
                 reference: dict[str, float] | None = None, reference_label: str = "Bayes limit",
                 cbar_label: str | None = None, span: float = 0.5, ax=None):
    """A table of numbers as an annotated heatmap: ``values[row][column]``, rows top to bottom.

    Every row must give a value for the same columns, in the same order (e.g. rows are
    models, columns are test conditions). With a ``reference`` (column -> value, e.g. the
    Bayes limit of each condition) the reference is drawn as the first row and the colours
    show each value minus its column's reference, from -``span`` (red) to +``span`` (blue),
    so a cell far below its ceiling stands out; without one the colours show the values in [0, 1].
    The numbers written in the cells are always the values themselves.
    """
    if not values:
        raise ValueError("values is empty: give at least one {row: {column: value}}")
    columns = list(next(iter(values.values())))
    rows = {reference_label: reference, **values} if reference is not None else dict(values)
    for row, cells in rows.items():
        if list(cells) != columns:
            raise ValueError(f"row {row!r} has columns {list(cells)}, expected {columns}")
    grid = np.array([[cells[c] for c in columns] for cells in rows.values()], dtype=float)  # (rows, columns)
    if reference is not None:
        shade, cmap, vmin, vmax = grid - grid[:1], "RdBu", -span, span
    else:
        shade, cmap, vmin, vmax = grid, "viridis", 0.0, 1.0
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(1.3 * len(columns) + 2.5,
                                                                         0.38 * len(rows) + 1.4))
    im = ax.imshow(shade, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i, j in itertools.product(range(grid.shape[0]), range(grid.shape[1])):
        dark = abs(shade[i, j]) > 0.6 * span if reference is not None else shade[i, j] < 0.6
        ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    if reference is not None:
        ax.axhline(0.5, color="black", lw=1.5)
    ax.set_xticks(np.arange(len(columns)), columns, fontsize=8)
    ax.set_yticks(np.arange(len(rows)), list(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    label = cbar_label or (f"value - {reference_label.lower()}" if reference is not None else "value")
    fig.colorbar(im, ax=ax, fraction=0.046, label=label)
    fig.tight_layout()
    return fig


def plot_bars(values: dict[str, float], xlabel: str, title: str, highlight: str | None = None,
              reference: dict[str, float] | None = None, log: bool = False, fmt: str = "{:.3f}",
              xlim: tuple[float, float] | None = None, ax=None):
    """Horizontal bars with their values written beside them (any quantity: accuracy, parameters, latency).

    Args:
        values: bar label -> value, drawn bottom to top in this order.
        xlabel, title: the axis label with units; a title that states the finding.
        highlight: the label of the bar drawn in colour (the others grey); None: all in colour.
        reference: levels ``{label: x}`` drawn as vertical grey lines (e.g. a Bayes limit).
        log: logarithmic x axis (values must then be > 0).
        fmt: format of the value labels.
    """
    if not values:
        raise ValueError("values is empty: give at least one {label: value}")
    if highlight is not None and highlight not in values:
        raise ValueError(f"highlight {highlight!r} is not one of {list(values)}")
    if log and min(values.values()) <= 0:
        raise ValueError("values must be > 0 on a logarithmic axis")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 0.5 + 0.4 * len(values)))
    colours = ["tab:blue" if highlight in (None, k) else "0.6" for k in values]
    bars = ax.barh(list(values), list(values.values()), color=colours)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values.values()], padding=3, fontsize=7)
    for (label, x), ls in zip((reference or {}).items(), itertools.cycle(("--", ":", "-."))):
        ax.axvline(x, color="0.3", ls=ls, lw=1, label=label)
    if reference:  # above the axes, so that it never hides a bar or its value
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(values.values()) / 2, max(values.values()) * 8)   # room for the value labels
    if xlim is not None:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# --- chapter 06 ---


def plot_scatter_grid(points, colour_by: dict[str, tuple], xlabel: str, ylabel: str, title: str,
                      ncols: int | None = None, marker_size: float = 4.0, colours: dict[str, str] | None = None):
    """The same 2-D points once per panel, each panel coloured by one categorical variable.

    For example a PCA of embeddings, one panel per attribute, coloured by its value.

    Args:
        points: (N, 2) coordinates.
        colour_by: per panel title, ``(codes, names)``: codes (N,) ints indexing ``names``.
        xlabel, ylabel: axis labels; title: the figure title (state the finding).
        ncols: panels per row (default: all in one row).
        colours: fixed colours for some category names (e.g. ``{"none": "0.6"}``); the others follow the cycle.
    """
    xy = as_numpy(points)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"points must be (N, 2), got shape {xy.shape}")
    if not colour_by:
        raise ValueError("colour_by is empty: give at least one {panel title: (codes, names)}")
    ncols = ncols or len(colour_by)
    nrows = -(-len(colour_by) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(colour_by):]:
        ax.axis("off")
    for ax, (panel, (codes, names)) in zip(axes.flat, colour_by.items()):
        codes = as_numpy(codes)
        if codes.shape != xy.shape[:1]:
            raise ValueError(f"panel {panel!r}: codes have shape {codes.shape}, expected ({len(xy)},) like points")
        for c, name in enumerate(names):
            mine = codes == c
            ax.scatter(xy[mine, 0], xy[mine, 1], s=marker_size, alpha=0.6, label=name, linewidths=0,
                       color=(colours or {}).get(name, f"C{c}"))
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, markerscale=2.5, loc="best", handletextpad=0.1, borderpad=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- chapter 08 ---


def plot_label_efficiency(per_class, curves: dict[str, list], title: str, reference: dict[str, float] | None = None,
                          last_label: str | None = None, ylabel: str = "test accuracy", ax=None):
    """Accuracy against the number of labelled examples per class (log x), one curve per model.

    Args:
        per_class: (K,) labels per class of each point, > 0 (e.g. 1, 5, 10, 50, and the whole training set).
        curves: per curve label, its accuracies: (K,) values, or (K, S) values over S seeds; with
            seeds the line joins the means and every seed is drawn as a small dot.
        title: the figure title (state the finding).
        reference: levels ``{label: y}`` drawn as grey lines (e.g. the Bayes limit, chance).
        last_label: tick label of the last point instead of its number (e.g. ``"all (1000)"``).
        ylabel: the y-axis label.
    """
    x = np.asarray(as_numpy(per_class), dtype=float)
    if x.ndim != 1 or len(x) == 0 or (x <= 0).any():
        raise ValueError(f"per_class must be (K,) values > 0 on a logarithmic axis, got {x.tolist()}")
    if not curves:
        raise ValueError("curves is empty: give at least one {label: accuracies}")
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 3.8))
    for i, (label, values) in enumerate(curves.items()):
        y = np.asarray(as_numpy(values), dtype=float)
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != len(x):
            raise ValueError(f"curve {label!r} has shape {np.shape(values)}, expected ({len(x)},) or ({len(x)}, S)")
        colour = f"C{i}"
        ax.plot(x, np.nanmean(y, axis=1), marker="o", color=colour, label=label)
        if y.shape[1] > 1:
            ax.plot(np.repeat(x, y.shape[1]), y.ravel(), ".", color=colour, alpha=0.4, ms=4)
    for (label, value), ls in zip((reference or {}).items(), itertools.cycle(("--", ":", "-."))):
        ax.axhline(value, color="grey", ls=ls, lw=1, label=label)
    ax.set_xscale("log")
    ticks = [f"{v:g}" for v in x]
    if last_label is not None:
        ticks[-1] = last_label
    ax.set_xticks(x, ticks)
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("labelled examples per class (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
