"""The one renderer of each kind of display: known small inputs, known pixels."""

from __future__ import annotations

import numpy as np
import pytest

from engine.view.colormaps import BACKGROUND, colormap_lut
from engine.view.display import KINDS, Bars, Gallery, MapOverPhoto, Picture, Region, ScalarMap, Scatter, TileGrid
from engine.view.gallery import BOX
from engine.view.plots import bar_picture, scatter_picture
from engine.view.render import RENDERERS, ColourScale, colour_scale, render, tile_grid
from engine.view.view_settings import ViewSettings

NAN = float("nan")


def one_of_each() -> dict[type, object]:
    photo = np.full((4, 6, 3), 90, np.uint8)
    values = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    return {
        Picture: Picture(rgb=photo),
        ScalarMap: ScalarMap(values, levels=(0.0, 1.0)),
        MapOverPhoto: MapOverPhoto(photo=photo, values=values, levels=(0.0, 1.0)),
        TileGrid: TileGrid(ScalarMap(tile_grid(values[None].repeat(2, 0), 1, 2)), shape=(1, 2), tile_size=(2, 3)),
        Gallery: Gallery(rgb=photo, regions=[Region(0, 0, 3, 3, "a.png")]),
        Bars: Bars(np.array([1.0, -2.0], np.float32), legend="logit"),
        Scatter: Scatter(np.array([[0.0, 0.0], [1.0, 1.0]]), ["a.png", "b.png"], ["0", "1"]),
    }


def test_every_kind_has_a_renderer_and_each_draws_rgb():
    assert set(RENDERERS) == set(KINDS)  # a kind added to Display without a renderer fails here
    samples = one_of_each()
    assert set(samples) == set(KINDS)
    for kind, display in samples.items():
        picture = render(display)
        assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3, kind


def test_what_is_no_display_is_refused_by_name():
    with pytest.raises(TypeError, match="ndarray is no kind of display: the kinds are Picture, ScalarMap"):
        render(np.zeros((2, 2, 3), np.uint8))


def test_a_map_goes_through_its_colormap_between_its_levels_and_nan_is_the_background():
    values = np.array([[0.0, 0.5], [1.0, NAN]], np.float32)
    lut = colormap_lut("viridis")
    drawn = render(ScalarMap(values, levels=(0.0, 1.0), colormap="viridis"))
    np.testing.assert_array_equal(drawn, [[lut[0], lut[128]], [lut[255], BACKGROUND]])
    # Values outside the levels take the end colours; the levels, not the values, set the scale.
    drawn = render(ScalarMap(np.array([[-4.0, 2.0, 5.0]], np.float32), levels=(2.0, 4.0), colormap="viridis"))
    np.testing.assert_array_equal(drawn, [[lut[0], lut[0], lut[255]]])
    # Without levels: the finite range. The view's colormap replaces the display's own.
    drawn = render(ScalarMap(np.array([[10.0, 20.0, np.inf]], np.float32), colormap="viridis"),
                   ViewSettings(colormap="gray"))
    np.testing.assert_array_equal(drawn, [[(0, 0, 0), (255, 255, 255), BACKGROUND]])


def test_a_map_over_the_photo_blends_by_the_views_opacity():
    photo = np.full((2, 2, 3), 200, np.uint8)
    overlay = MapOverPhoto(photo=photo, values=np.array([[0.0, 1.0], [1.0, NAN]], np.float32), levels=(0.0, 1.0),
                           colormap="gray")
    drawn = render(overlay, ViewSettings(overlay_opacity=0.25))
    # 0.75 x 200 + 0.25 x (0, 255, 255, the background 40), rounded
    np.testing.assert_array_equal(drawn[..., 0], [[150, 214], [214, 160]])
    np.testing.assert_array_equal(render(overlay, ViewSettings(overlay_opacity=0.0)), photo)
    opaque = render(overlay, ViewSettings(overlay_opacity=1.0, colormap="magma"))
    np.testing.assert_array_equal(opaque, render(ScalarMap(overlay.values, levels=(0.0, 1.0), colormap="magma")))


def test_a_map_over_the_photo_is_stretched_over_the_whole_photo():
    photo = np.zeros((30, 44, 3), np.uint8)
    values = np.array([[0.0, 1.0]], np.float32)  # left half dark, right half bright
    drawn = render(MapOverPhoto(photo=photo, values=values, levels=(0.0, 1.0), colormap="gray"),
                   ViewSettings(overlay_opacity=1.0))
    assert drawn.shape == photo.shape
    assert (drawn[:, :5] == 0).all() and (drawn[:, -5:] == 255).all()
    assert (np.diff(drawn[0, :, 0].astype(int)) >= 0).all()  # bilinear in between: never darker to the right


def test_the_blend_is_exactly_the_per_pixel_float_blend():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    values = rng.normal(size=(5, 7)).astype(np.float32)
    values[1, 2] = NAN
    overlay = MapOverPhoto(photo=photo, values=values, levels=(-1.0, 1.5), colormap="turbo")
    from engine.view.colormaps import apply_colormap
    from engine.view.render import overlay_map

    for opacity, colormap in ((0.6, None), (0.37, "blue-white-red"), (1.0, "gray")):
        coloured = apply_colormap(overlay_map(overlay), overlay.levels, colormap or overlay.colormap).astype(np.float32)
        expected = np.clip((1 - opacity) * photo.astype(np.float32) + opacity * coloured + 0.5, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(render(overlay, ViewSettings(colormap, opacity)), expected)


def test_a_grid_of_maps_shows_its_gaps_as_background():
    tiles = np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.full((2, 2), 0.5)]).astype(np.float32)
    grid = TileGrid(ScalarMap(tile_grid(tiles, 2, 2, gap=1), levels=(0.0, 1.0), colormap="gray"),
                    shape=(2, 2), tile_size=(2, 2), gap=1)
    drawn = render(grid)[..., 0]
    g = BACKGROUND[0]
    np.testing.assert_array_equal(drawn, [[0, 0, g, 255, 255],
                                          [0, 0, g, 255, 255],
                                          [g, g, g, g, g],
                                          [128, 128, g, g, g],  # the fourth cell is empty
                                          [128, 128, g, g, g]])
    assert colour_scale(grid, ViewSettings(colormap="magma")) == ColourScale((0.0, 1.0), "magma", "")


def test_a_grid_of_rgb_tiles_is_drawn_as_it_is_and_has_no_colour_scale():
    rgb = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    grid = TileGrid(Picture(rgb=rgb), shape=(1, 2), tile_size=(3, 2), gap=1)
    np.testing.assert_array_equal(render(grid, ViewSettings(colormap="turbo")), rgb)
    assert colour_scale(grid) is None


def test_boxes_are_drawn_on_pictures_maps_and_maps_over_the_photo():
    box = (2, 3, 8, 9)
    photo = np.zeros((12, 12, 3), np.uint8)
    values = np.zeros((12, 12), np.float32)
    for display in (Picture(rgb=photo, boxes=[box]), ScalarMap(values, levels=(0.0, 1.0), boxes=[box]),
                    MapOverPhoto(photo=photo, values=values, levels=(0.0, 1.0), boxes=[box])):
        drawn = render(display)
        assert tuple(drawn[2, 5]) == BOX and tuple(drawn[7, 3]) == BOX, type(display).__name__  # top and left edges
        assert tuple(drawn[5, 6]) != BOX and tuple(drawn[0, 0]) != BOX  # inside and outside stay
    assert not photo.any()  # drawn on a copy


def test_galleries_bars_and_scatters_are_their_pictures():
    mosaic = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(render(Gallery(rgb=mosaic), ViewSettings(colormap="turbo")), mosaic)
    bars = Bars(np.array([3.0, 1.0, -1.0]), legend="activation")
    np.testing.assert_array_equal(render(bars), bar_picture(bars.values, "activation"))
    scatter = Scatter(np.array([[0.0, 1.0], [2.0, 0.5]]), ["a", "b"], ["cat", "dog"], title="t-SNE")
    np.testing.assert_array_equal(render(scatter), scatter_picture(scatter))
    for display in (Gallery(rgb=mosaic), bars, scatter, Picture(rgb=mosaic)):
        assert colour_scale(display) is None


def test_the_colour_scale_is_the_one_the_renderer_uses():
    photo = np.zeros((2, 2, 3), np.uint8)
    overlay = MapOverPhoto(photo=photo, values=np.array([[1.0, 3.0], [NAN, 2.0]], np.float32), colormap="inferno",
                           legend="drop")
    assert colour_scale(overlay) == ColourScale((1.0, 3.0), "inferno", "drop")  # no levels: the finite range
    assert colour_scale(overlay, ViewSettings(colormap="turbo")).colormap == "turbo"
