"""The colour bar's ticks and clipping statement, and the exported picture built around it.

One source (``engine.view.colorbar``) serves the canvas and the export, so these are
checked here without a window; tests/test_export_pixels.py checks that the canvas's bar
carries the same ticks.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.attribution.maps import PERCENTILE, map_display
from engine.view.colorbar import MAX_TICKS, colour_bar, display_colour_bar, nice_ticks
from engine.view.colormaps import colormap_lut
from engine.view.display import Picture, ScalarMap
from engine.view.figure import ARROW, BAR_WIDTH, LINE, MARGIN, bar_column, compose
from engine.view.view_settings import ViewSettings


def is_nice(value: float, step_hint: float) -> bool:
    """1, 2 or 5 times a power of ten, or a multiple of one no coarser than the tick spacing."""
    if value == 0:
        return True
    for power in range(math.floor(math.log10(step_hint)) - 1, math.floor(math.log10(step_hint)) + 2):
        for mantissa in (1, 2, 5):
            step = mantissa * 10.0 ** power
            if abs(value / step - round(value / step)) < 1e-6:
                return True
    return False


@settings(max_examples=300, deadline=None)
@given(low=st.floats(-1e4, 1e4), span=st.floats(1e-6, 1e5), clipped_low=st.booleans(), clipped_high=st.booleans())
def test_at_most_six_nice_ticks_inside_the_range(low, span, clipped_low, clipped_high):
    high = low + span
    if span < 1e-4 * abs(low):  # ten significant digits apart: no map's scale, and past float64's exact steps
        return
    ticks = nice_ticks(low, high, clipped_low=clipped_low, clipped_high=clipped_high)
    values = [value for value, _label in ticks]
    labels = [label for _value, label in ticks]
    assert 2 <= len(ticks) <= MAX_TICKS
    assert values == sorted(values) and len(set(labels)) == len(labels)  # readable: no label twice
    assert all(low - 1e-9 * span <= v <= high + 1e-9 * span for v in values)
    interior = ticks[1 if clipped_low else 0: len(ticks) - (1 if clipped_high else 0)]
    assert all(is_nice(value, span / MAX_TICKS) for value, _label in interior)
    assert (labels[0].startswith("< ") and values[0] == low) == clipped_low
    assert (labels[-1].startswith("> ") and values[-1] == high) == clipped_high
    assert not any(label.startswith(("<", ">")) for label in labels[1:-1])


def test_a_saliency_scale_says_it_is_clipped_at_the_99th_percentile_and_quotes_the_max(chelsea):
    rng = np.random.default_rng(0)
    values = rng.pareto(2.0, size=(224, 224)).astype(np.float32) * 0.02  # heavy-tailed, as gradients are
    display = map_display(chelsea, values, signed=False, legend="|gradient|", note="")
    bar = display_colour_bar(display)
    top = float(np.percentile(np.abs(values), PERCENTILE))
    assert bar.levels == pytest.approx((0.0, top)) and bar.clipped_high and not bar.clipped_low
    assert bar.value_range[1] == pytest.approx(float(values.max()))
    assert bar.ticks[-1] == (pytest.approx(top), f"> {top:.3g}")
    assert "99th percentile" in bar.caption and f"max {float(values.max()):.3g}" in bar.caption
    assert len(bar.ticks) <= MAX_TICKS


def test_a_scale_that_holds_every_value_states_no_clipping():
    values = np.linspace(0.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    bar = colour_bar((0.0, 1.0), "gray", values=values)
    assert bar.caption == "" and not (bar.clipped_low or bar.clipped_high)
    assert [label for _v, label in bar.ticks] == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
    assert display_colour_bar(Picture(rgb=np.zeros((2, 2, 3), np.uint8))) is None  # its own colours: no bar


def test_a_signed_scale_clipped_at_both_ends_says_both():
    bar = colour_bar((-0.5, 0.5), "blue-white-red", values=np.array([-2.0, 0.0, 3.0]), clipped_at="x")
    assert bar.clipped_low and bar.clipped_high
    assert bar.ticks[0][1] == "< -0.5" and bar.ticks[-1][1] == "> 0.5"
    assert "max 3" in bar.caption and "min -2" in bar.caption and "(x)" in bar.caption


def bar_rows(figure: np.ndarray, bar, picture_width: int, body_height: int) -> np.ndarray:
    """The middle column of the bar's colours in a composed figure, top to bottom."""
    top = MARGIN + LINE + (ARROW if bar.clipped_high else 0)
    bottom = body_height - MARGIN - LINE - (ARROW if bar.clipped_low else 0)
    return figure[top:bottom, picture_width + MARGIN + BAR_WIDTH // 2]


def test_the_composed_figure_keeps_the_picture_and_its_bar_follows_the_colormap():
    picture = (np.random.default_rng(1).random((300, 451, 3)) * 255).astype(np.uint8)
    bar = colour_bar((0.0, 0.14), "inferno", "|gradient|", values=np.array([0.0, 0.63]), clipped_at="p99")
    figure = compose(picture, bar, ["Saliency · target tabby (281)"])
    assert figure.shape[0] > 300 and figure.shape[1] > 451  # the caption below, the bar beside
    np.testing.assert_array_equal(figure[:300, :451], picture)  # pixel for pixel what the canvas shows
    column = bar_rows(figure, bar, 451, 300)
    np.testing.assert_array_equal(column, bar_column(bar, len(column)))
    lut = colormap_lut("inferno").astype(int)
    assert (column[0] == lut[-1]).all() and (column[-1] == lut[0]).all()  # high at the top, low at the bottom
    # Every row is a colormap entry, and the entries fall from top to bottom.
    entries = [int(np.argmin(np.abs(lut - row.astype(int)).sum(axis=1))) for row in column]
    assert all(np.abs(lut[e] - row.astype(int)).sum() == 0 for e, row in zip(entries, column))
    assert entries == sorted(entries, reverse=True)


def test_a_small_picture_still_gets_a_readable_bar_and_caption():
    bar = colour_bar((0.0, 1.0), "viridis", values=np.array([0.0, 1.0]))
    figure = compose(np.zeros((20, 30, 3), np.uint8), bar, ["a caption long enough to need wrapping " * 4])
    assert figure.shape[0] >= 160 and figure.shape[1] >= 360


def test_the_session_exports_the_bar_and_caption_by_default_and_records_them(bundled, chelsea_path, tmp_path):
    from engine.app.session import Session
    from engine.core.jobs import CancelToken, drive

    session = Session()
    session.model = bundled
    session.open_image(chelsea_path)
    shown = session.show(drive(session.start("gradcam", {"target": "tabby"}, CancelToken())))
    view = ViewSettings(colormap="viridis")
    png, sidecar_path = session.export(picture=tmp_path / "cam.png", view=view)
    exported = np.asarray(Image.open(png))
    bare = session.picture(view)
    assert exported.shape[0] > bare.shape[0] and exported.shape[1] > bare.shape[1]
    np.testing.assert_array_equal(exported[:bare.shape[0], :bare.shape[1]], bare)
    bar = display_colour_bar(shown.display, view)
    column = bar_rows(exported, bar, bare.shape[1], max(bare.shape[0], 160 + 2 * MARGIN + 2 * LINE))
    np.testing.assert_array_equal(column, bar_column(bar, len(column)))
    assert bar.colormap == "viridis"
    sidecar = json.loads(sidecar_path.read_text())
    caption = sidecar["caption"][0]
    assert "Grad-CAM" in caption and "target tabby (281)" in caption and f"layer {shown.provenance.layer}" in caption
    assert sidecar["colour_bar"]["ticks"] == [label for _v, label in bar.ticks] and sidecar["view"]["annotated"]
    # Turned off: the bare picture, as the canvas draws it.
    png, sidecar_path = session.export(picture=tmp_path / "bare.png", view=view, annotated=False)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), bare)
    assert json.loads(sidecar_path.read_text())["view"]["annotated"] is False


def test_the_command_lines_no_annotate_flag_writes_the_bare_picture(capsys, tmp_path, chelsea_path, bundled):
    from engine.app.cli import main

    annotated, bare = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["run", "saliency", "--image", chelsea_path, "--target", "tabby", "--out", str(annotated)]) == 0
    assert main(["run", "saliency", "--image", chelsea_path, "--target", "tabby", "--no-annotate", "--out", str(bare)]) == 0
    capsys.readouterr()
    with Image.open(annotated) as a, Image.open(bare) as b:
        assert b.size == (451, 300) and a.size[0] > 451 and a.size[1] > 300


def test_a_tile_grid_gets_the_bar_of_its_tiles():
    tiles = ScalarMap(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), levels=(0.0, 1.0), colormap="gray")
    from engine.view.display import TileGrid

    bar = display_colour_bar(TileGrid(tiles=tiles, shape=(2, 2), tile_size=(2, 2)))
    assert bar is not None and bar.colormap == "gray" and bar.caption == ""
