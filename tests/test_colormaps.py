"""The colour tables: the published 256-entry maps, the same in the engine and on the canvas."""

from __future__ import annotations

import numpy as np
import pytest

from engine.view.colormaps import COLORMAPS, TABLES, colormap_lut

# The engine's name for each map, and pyqtgraph's (whose files the engine's are copies of).
PYQTGRAPH_NAMES = {"viridis": "viridis", "inferno": "inferno", "magma": "magma", "turbo": "turbo",
                   "blue-white-red": "CET-D1"}


def test_the_colormaps_are_gray_and_the_exact_tables():
    assert COLORMAPS == ("gray", *PYQTGRAPH_NAMES)
    assert "jet" not in COLORMAPS and "coolwarm" not in COLORMAPS  # replaced by turbo and blue-white-red


@pytest.mark.parametrize("name", list(PYQTGRAPH_NAMES))
def test_each_table_equals_pyqtgraphs(name):
    import pyqtgraph as pg

    expected = pg.colormap.get(PYQTGRAPH_NAMES[name]).getLookupTable(nPts=256)
    lut = colormap_lut(name)
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    np.testing.assert_array_equal(lut, expected)


def test_gray_is_the_identity_ramp():
    np.testing.assert_array_equal(colormap_lut("gray"), np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def test_the_diverging_map_is_blue_below_light_at_zero_and_red_above():
    low, middle, high = colormap_lut("blue-white-red")[[0, 128, 255]].astype(int)
    assert low[2] > 2 * low[0] and high[0] > 20 * high[2]  # blue, red
    assert middle.min() > 225  # near white: zero stands out from both signs


def test_a_table_is_shared_and_cannot_be_changed_by_a_caller():
    lut = colormap_lut("viridis")
    assert colormap_lut("viridis") is lut
    with pytest.raises(ValueError):
        lut[0] = 0


def test_an_unknown_name_says_which_there_are():
    with pytest.raises(ValueError, match="unknown colormap 'jet': the colormaps are gray, viridis, inferno, magma, "
                                         "turbo, blue-white-red"):
        colormap_lut("jet")


def test_the_tables_travel_with_their_licences():
    names = {path.name for path in TABLES.iterdir()}
    assert {"LICENSE-CC0-1.0.txt", "LICENSE-CC-BY-4.0.txt", "LICENSE-Apache-2.0.txt", "README.md"} <= names


def test_the_canvas_colour_bar_uses_the_engines_tables(qtbot):
    from gui.canvas import Canvas, _pg_colormap

    for name in COLORMAPS:
        np.testing.assert_array_equal(_pg_colormap(name).getLookupTable(nPts=256), colormap_lut(name))
    canvas = Canvas()
    qtbot.addWidget(canvas)
    assert [canvas.colormap_box.itemText(i) for i in range(canvas.colormap_box.count())] == ["auto", *COLORMAPS]
