"""mmcourse.plots: every function returns a Figure with labelled axes and a title."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mmcourse.data.render import log_mel_spectrogram
from mmcourse.plots import (plot_accuracy_bars, plot_accuracy_vs_cost, plot_audio, plot_bars, plot_bayes_table,
                            plot_confusion, plot_grouped_bars, plot_heatmap, plot_history, plot_sweep, show_images)
from mmcourse.training import History


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_show_images_grid(small_dataset):
    fig = show_images(small_dataset.images[:5], titles=["a", "b", "c"], ncols=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 8                                        # 2 rows of 4
    assert sum(len(ax.images) for ax in fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes[:4]] == ["a", "b", "c", ""]


def test_show_images_accepts_floats_and_a_single_image(small_dataset):
    fig = show_images(small_dataset.images[:1].float() / 255)
    assert sum(len(ax.images) for ax in fig.axes) == 1


def test_plot_audio_labels(small_dataset):
    waves = small_dataset.audio[:2]
    fig = plot_audio(waves, log_mel_spectrogram(waves, 8000), ["metal", "wood"], sample_rate=8000)
    assert isinstance(fig, Figure) and len(fig.axes) == 5             # 2 x 2 panels and one colour bar
    top, bottom = fig.axes[0], fig.axes[2]
    assert top.get_xlabel() == "time (ms)" and top.get_ylabel() == "amplitude" and top.get_title() == "metal"
    assert bottom.get_xlabel() == "frame (8 ms hop)" and bottom.get_ylabel() == "mel band"
    np.testing.assert_allclose(top.lines[0].get_xdata()[-1], 1023 / 8000 * 1000)  # the time axis is in ms


def test_plot_audio_has_one_colour_bar_on_the_shared_scale(small_dataset):
    waves = small_dataset.audio[:3]
    specs = log_mel_spectrogram(waves, 8000)
    fig = plot_audio(waves, specs, ["a", "b", "c"], sample_rate=8000)
    colour_bar = fig.axes[-1]
    assert colour_bar.get_ylabel() == "log-mel energy (ln power)"
    low, high = fig.axes[3].images[0].get_clim()                      # the shared scale (tested above)
    np.testing.assert_allclose(colour_bar.get_ylim(), (low, high))    # the bar spans exactly that scale
    np.testing.assert_allclose((low, high), np.percentile(specs.numpy(), [1, 99.5]), rtol=1e-6)


def test_plot_bayes_table(world):
    from mmcourse.data.bayes import bayes_table

    table = bayes_table(world)
    fig = plot_bayes_table(table, chance=0.1)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Bayes-optimal accuracy (exact)" and ax.get_title()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 7 and labels[-1] == "audio + image + text"  # no empty subset; sorted, best last
    widths = [p.get_width() for p in ax.patches]
    assert widths == sorted(widths) and widths[-1] == pytest.approx(0.97, abs=1e-9)


def test_plot_accuracy_bars_highlights_one_bar():
    values = {"reference model": 0.62, "Bayes, image": 0.5, "Bayes, all": 0.97}
    fig = plot_accuracy_bars(values, highlight="reference model", title="The model beats the image limit")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "accuracy (fraction of scenes)"
    assert ax.get_title() == "The model beats the image limit"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(values)
    assert [p.get_width() for p in ax.patches] == list(values.values())
    colours = [p.get_facecolor() for p in ax.patches]
    assert colours[0] != colours[1] and colours[1] == colours[2]  # only the highlighted bar stands out


def test_plot_accuracy_bars_unknown_highlight():
    with pytest.raises(ValueError, match=r"highlight 'x' is not one of \['a', 'b'\]"):
        plot_accuracy_bars({"a": 0.1, "b": 0.2}, highlight="x", title="t")


def test_plot_confusion_on_given_axes():
    fig, ax = plt.subplots()
    matrix = np.array([[3, 1], [0, 4]])
    assert plot_confusion(matrix, ["a", "b"], ax=ax) is fig
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.texts] == ["3", "1", "4"]           # counts, zero cells left empty
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])  # rows sum to one


def test_plot_history():
    history = History(train_loss=[2.3, 1.9, 1.5], metrics={"dev_accuracy": [0.2, 0.4, 0.5]}, seconds=[1, 1, 1])
    fig = plot_history(history, bayes={"image": 0.5, "all": 0.97})
    loss, acc = fig.axes
    assert loss.get_xlabel() == "epoch" and loss.get_ylabel() == "training loss (cross-entropy)"
    assert acc.get_xlabel() == "epoch" and acc.get_ylabel() == "accuracy"
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [1, 2, 3])
    assert len(acc.lines) == 3  # the model plus two Bayes lines
    assert acc.get_title() == "Dev accuracy against the Bayes limits"
    assert plot_history(history, title="Text alone stalls at its limit").axes[1].get_title() == \
        "Text alone stalls at its limit"


def test_plot_history_puts_evaluations_inside_an_epoch_at_their_epoch():
    history = History(epoch=[0.5, 1.0, 1.5], train_loss=[2.3, 1.9, 1.5], metrics={"dev_accuracy": [0.2, 0.4, 0.5]})
    loss, acc = plot_history(history).axes
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [0.5, 1.0, 1.5])
    np.testing.assert_array_equal(acc.lines[0].get_xdata(), [0.5, 1.0, 1.5])


def test_plot_history_draws_every_bayes_limit():
    history = History(train_loss=[2.3, 1.9], metrics={"dev_accuracy": [0.2, 0.4]}, seconds=[1, 1])
    limits = {"image": 0.5, "text": 0.442, "image + text": 0.85, "all": 0.97}
    fig = plot_history(history, bayes=limits)
    assert len(fig.axes[1].lines) == 1 + len(limits)


def test_plots_accept_tensors():
    fig = plot_confusion(torch.tensor([[1, 0], [0, 1]]), ["a", "b"])
    assert isinstance(fig, Figure)


def test_plot_audio_shares_one_colour_scale_and_names_the_hop(small_dataset):
    waves = small_dataset.audio[:3]
    fig = plot_audio(waves, log_mel_spectrogram(waves, 8000), ["a", "b", "c"], sample_rate=8000)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 3 and len({im.get_clim() for im in images}) == 1
    assert fig.axes[-2].get_xlabel() == "frame (8 ms hop)"            # the last spectrogram; then the colour bar
    plt.close(fig)


def test_plot_sweep_panels_and_errors():
    fig = plot_sweep([1e-3, 1e-2, 1e-1], {"accuracy": {"a": [0.5, 0.6, 0.4]}, "loss": {"b": [1, 2, 3]}},
                     xlabel="lambda", title="t", hlines={"accuracy": {"Bayes": 0.85}})
    assert len(fig.axes) == 2 and fig.axes[0].get_xscale() == "log" and fig.axes[0].get_xlabel() == "lambda"
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["a", "Bayes"]
    with pytest.raises(ValueError, match="has shape"):
        plot_sweep([1, 2], {"y": {"a": [1, 2, 3]}}, "x", "t")
    with pytest.raises(ValueError, match="not in panels"):
        plot_sweep([1, 2], {"y": {"a": [1, 2]}}, "x", "t", hlines={"z": {"h": 1}})


def test_plot_accuracy_vs_cost_one_marker_per_point_and_log_x():
    points = [dict(name="a", group="text", cost=1e3, gap=0.5, err=0.2), dict(name="b", group="image", cost=1e6, gap=9.0),
              dict(name="c", group="image", cost=1e4, gap=-0.3)]
    fig = plot_accuracy_vs_cost(points, xlabel="FLOPs", title="t", hlines={"target": 3.0})
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_xscale() == "log" and ax.get_xlabel() == "FLOPs"
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["target", "text", "image"]
    plt.close(fig)


@pytest.mark.parametrize("bad, message", [([], "points is empty"), ([dict(name="a", group="g", cost=1.0)], "missing ['gap']"),
                                          ([dict(name="a", group="g", cost=0.0, gap=1.0)], "costs must be > 0")])
def test_plot_accuracy_vs_cost_rejects_bad_points(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plot_accuracy_vs_cost(bad, xlabel="x", title="t")


def test_plot_grouped_bars_draws_series_times_groups():
    fig = plot_grouped_bars({"cnn": {"circle": 1.0, "square": 0.9}, "mlp": {"circle": 0.7, "square": 0.6}},
                            ylabel="fraction", title="t", hlines={"Bayes": 1.0})
    ax = fig.axes[0]
    assert len(ax.patches) == 4 and [t.get_text() for t in ax.get_xticklabels()] == ["circle", "square"]
    plt.close(fig)


def test_plot_grouped_bars_needs_the_same_groups():
    with pytest.raises(ValueError, match="series 'b' has groups"):
        plot_grouped_bars({"a": {"x": 1.0}, "b": {"y": 1.0}}, ylabel="y", title="t")


def test_plot_heatmap_colours_the_distance_to_the_reference_and_writes_the_values():
    values = {"a": {"x": 0.9, "y": 0.2}, "b": {"x": 0.5, "y": 0.5}}
    fig = plot_heatmap(values, "t", "condition", reference={"x": 0.9, "y": 0.5}, span=0.5)
    ax = fig.axes[0]
    shade = ax.images[0].get_array()
    np.testing.assert_allclose(shade, [[0, 0], [0, -0.3], [-0.4, 0]], atol=1e-12)   # row 0: the reference itself
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Bayes limit", "a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["0.900", "0.500", "0.900", "0.200", "0.500", "0.500"])


def test_plot_heatmap_without_reference_shows_values_and_rejects_ragged_rows():
    fig = plot_heatmap({"a": {"x": 0.25}}, "t", "x")
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), [[0.25]])
    with pytest.raises(ValueError, match="row 'b' has columns"):
        plot_heatmap({"a": {"x": 1.0}, "b": {"y": 1.0}}, "t", "x")
    with pytest.raises(ValueError, match="row 'Bayes limit' has columns"):
        plot_heatmap({"a": {"x": 1.0}}, "t", "x", reference={"y": 1.0})


def test_plot_bars_labels_highlight_reference_and_log_axis():
    fig = plot_bars({"a": 10.0, "b": 1000.0}, "ms", "t", highlight="b", reference={"limit": 100.0}, log=True,
                    fmt="{:.0f}")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["10", "1000"]
    colours = [p.get_facecolor() for p in ax.patches]
    assert colours[0] != colours[1]                       # only the highlighted bar is in colour
    assert any(line.get_xdata()[0] == 100.0 for line in ax.lines)
    with pytest.raises(ValueError, match="highlight 'c'"):
        plot_bars({"a": 1.0}, "x", "t", highlight="c")
    with pytest.raises(ValueError, match="> 0 on a logarithmic axis"):
        plot_bars({"a": 0.0}, "x", "t", log=True)


# --- chapter 06 ---

from mmcourse.plots import plot_scatter_grid  # noqa: E402


def test_plot_scatter_grid_one_panel_per_variable_one_series_per_value():
    xy = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [3.0, 2.0]])
    fig = plot_scatter_grid(xy, {"size": ([0, 1, 0, 1], ("small", "large")), "colour": (np.array([0, 1, 2, 2]),
                            ("red", "green", "blue"))}, "PC 1", "PC 2", "t", ncols=2)
    assert isinstance(fig, Figure)
    size, colour = fig.axes[:2]
    assert size.get_title() == "size" and colour.get_xlabel() == "PC 1" and colour.get_ylabel() == "PC 2"
    assert [c.get_offsets().shape[0] for c in colour.collections] == [1, 1, 2]
    assert [t.get_text() for t in size.get_legend().get_texts()] == ["small", "large"]
    fig = plot_scatter_grid(xy, {"size": ([0, 1, 0, 1], ("small", "none"))}, "x", "y", "t", colours={"none": "0.6"})
    np.testing.assert_allclose(fig.axes[0].collections[1].get_facecolor()[0][:3], [0.6, 0.6, 0.6])
    with pytest.raises(ValueError, match=r"points must be \(N, 2\), got shape \(4, 3\)"):
        plot_scatter_grid(np.zeros((4, 3)), {"a": ([0] * 4, ("x",))}, "x", "y", "t")
    with pytest.raises(ValueError, match=r"panel 'a': codes have shape \(3,\), expected \(4,\)"):
        plot_scatter_grid(xy, {"a": ([0] * 3, ("x",))}, "x", "y", "t")


# --- chapter 08 ---

from mmcourse.plots import plot_label_efficiency  # noqa: E402


def test_plot_label_efficiency_means_over_seeds_log_x_and_a_named_last_tick():
    fig = plot_label_efficiency([1, 10, 100], {"pretrained": [[0.5, 0.7], [0.8, 0.8], [0.9, 0.9]],
                                               "scratch": [0.2, 0.4, 0.8]}, "t", reference={"Bayes": 0.95},
                                last_label="all")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "t" and "per class" in ax.get_xlabel()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.6, 0.8, 0.9])        # the mean over seeds
    assert len(ax.lines[1].get_xdata()) == 6                                      # every seed as a dot
    np.testing.assert_allclose(ax.lines[2].get_ydata(), [0.2, 0.4, 0.8])        # one seed: no dots
    assert ax.lines[-1].get_ydata()[0] == 0.95
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "all"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pretrained", "scratch", "Bayes"]
    with pytest.raises(ValueError, match=r"curve 'a' has shape \(2,\), expected \(3,\) or \(3, S\)"):
        plot_label_efficiency([1, 10, 100], {"a": [0.1, 0.2]}, "t")
    with pytest.raises(ValueError, match="values > 0"):
        plot_label_efficiency([0, 10], {"a": [0.1, 0.2]}, "t")
