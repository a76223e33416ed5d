"""Bars and scatters drawn without a window: the pictures the CLI's --out writes."""

from __future__ import annotations

import numpy as np

from engine.view.display import Bars, Scatter
from engine.view.plots import BAR, PALETTE, bar_picture, group_order, scatter_picture
from engine.view.render import render


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def where(picture: np.ndarray, colour) -> np.ndarray:
    """(y, x) of every pixel of exactly ``colour``."""
    return np.argwhere((picture == np.array(colour, np.uint8)).all(axis=2))


def test_groups_are_ordered_numbers_first_then_names():
    assert group_order(["10", "cat", "2", "10", "apple"]) == ["2", "10", "apple", "cat"]


def test_scatter_places_each_point_where_its_coordinates_say_in_its_groups_colour():
    points = Scatter(xy=np.array([[0.0, 0.0], [10.0, 5.0], [5.0, 2.5]]), paths=["a", "b", "c"],
                    groups=["cat", "dog", "cat"], title="t-SNE")
    picture = scatter_picture(points, width=400, height=300)
    cat, dog = where(picture, rgb(PALETTE[0])), where(picture, rgb(PALETTE[1]))
    legend_x = dog[:, 1].max()  # the legend's dots are the rightmost, beyond the plot's frame
    plot_cat, plot_dog = cat[cat[:, 1] < legend_x - 12], dog[dog[:, 1] < legend_x - 12]
    assert len(cat) > len(plot_cat) and len(dog) > len(plot_dog)  # the legend names both groups
    low_left, middle = plot_cat[plot_cat[:, 0] > 200], plot_cat[plot_cat[:, 0] <= 200]
    assert low_left[:, 1].mean() < 40  # (0, 0): bottom left
    assert abs(middle[:, 0].mean() - 0.5 * (32 + 284)) < 12  # (5, 2.5): half way up
    assert plot_dog[:, 0].mean() < 60 and plot_dog[:, 1].mean() > 250  # (10, 5): top right


def test_bars_rise_and_fall_from_one_zero_line_in_proportion():
    picture = bar_picture(np.array([2.0, -1.0, 1.0]), "activation", width=300, height=200)
    bars = where(picture, BAR)
    columns = [bars[(bars[:, 1] >= x0) & (bars[:, 1] < x0 + 70)] for x0 in (64, 137, 210)]
    tops = [c[:, 0].min() for c in columns]
    bottoms = [c[:, 0].max() for c in columns]
    zero = bottoms[0]
    assert tops[1] >= zero - 1 and bottoms[2] == zero  # the negative bar hangs below the line
    heights = [zero - tops[0], bottoms[1] - zero, zero - tops[2]]
    assert abs(heights[0] / heights[2] - 2) < 0.1 and abs(heights[0] / heights[1] - 2) < 0.1


def test_bars_and_scatters_are_rendered_as_these_pictures():
    values = np.arange(5, dtype=np.float32)
    bars = render(Bars(values, legend="logit"))
    points = Scatter(np.zeros((2, 2)), ["a", "b"], ["0", "1"])
    scatter = render(points)
    assert bars.ndim == scatter.ndim == 3 and bars.dtype == scatter.dtype == np.uint8
    np.testing.assert_array_equal(bars, bar_picture(values, "logit"))
    np.testing.assert_array_equal(scatter, scatter_picture(points))
