"""Galleries: tiles land where their regions say, captions fit, boxes are drawn."""

import numpy as np
from PIL import Image

from engine.view.gallery import BOX, Tile, _fit, caption_font_size, draw_boxes, render_gallery
from engine.view.display import Picture
from engine.view.render import render


def solid(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def test_each_region_covers_its_own_tile():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    rows = [("first", [Tile(solid(c), path=f"{i}.png", caption=f"tile {i}") for i, c in enumerate(colours[:2])]),
            ("second", [Tile(solid(c), path=f"{i + 2}.png") for i, c in enumerate(colours[2:])])]
    rgb, regions = render_gallery(rows, tile=32)
    assert [r.path for r in regions] == ["0.png", "1.png", "2.png", "3.png"]
    for region, colour in zip(regions, colours):
        centre = rgb[(region.top + region.bottom) // 2, (region.left + region.right) // 2]
        assert tuple(centre) == colour
        assert region.contains(region.left, region.top) and not region.contains(region.right, region.bottom)
    # Headers push the tiles right: both rows start at the same column.
    assert regions[0].left == regions[2].left > 0


def test_small_images_are_enlarged_crisply():
    digit = Image.fromarray((np.eye(8) * 255).astype(np.uint8)).convert("RGB")
    rgb, (region,) = render_gallery([("", [Tile(digit)])], tile=64)
    tile = rgb[region.top:region.bottom, region.left:region.right]
    assert set(np.unique(tile)) <= {0, 255}  # nearest-neighbour: no blurred grays


def test_boxes_are_drawn_on_export_and_on_the_picture():
    rgb = np.zeros((50, 60, 3), np.uint8)
    boxed = draw_boxes(rgb, [(10, 20, 30, 40)])
    assert tuple(boxed[10, 25]) == BOX and tuple(boxed[20, 30]) == (0, 0, 0)
    np.testing.assert_array_equal(render(Picture(rgb=rgb, boxes=[(10, 20, 30, 40)])), boxed)


def test_a_box_under_a_pixel_still_shows_as_one_pixel():
    """A small image's receptive field at an early layer can be narrower than a pixel."""
    rgb = np.zeros((64, 96, 3), np.uint8)
    boxed = draw_boxes(rgb, [(0.29, 0.29, 1.14, 1.14)])  # stem.conv at (1, 1) of a 96 x 64 photo
    assert np.argwhere(np.any(boxed != 0, axis=-1)).tolist() == [[0, 0]]
    assert tuple(boxed[0, 0]) == BOX
    # Zero size, and a sliver past the right edge: the pixel its centre falls in, inside the picture.
    assert np.argwhere(np.any(draw_boxes(rgb, [(10.0, 20.0, 10.0, 20.0)]) != 0, axis=-1)).tolist() == [[10, 20]]
    assert np.argwhere(np.any(draw_boxes(rgb, [(5.2, 95.8, 5.6, 96.3)]) != 0, axis=-1)).tolist() == [[5, 95]]


def test_inverted_boxes_draw_as_their_ordered_box():
    rgb = np.zeros((50, 60, 3), np.uint8)
    np.testing.assert_array_equal(draw_boxes(rgb, [(30, 40, 10, 20)]), draw_boxes(rgb, [(10, 20, 30, 40)]))


def test_boxes_without_a_place_in_the_picture_draw_nothing():
    rgb = np.full((50, 60, 3), 7, np.uint8)
    nan, inf = float("nan"), float("inf")
    for box in [(nan, 0, 10, 10), (0, 0, inf, 10), (-inf, -inf, inf, inf), (60, 70, 80, 90), (-20, -20, -5, -5),
                (None, 0, 10, 10)]:
        np.testing.assert_array_equal(draw_boxes(rgb, [box]), rgb, err_msg=str(box))


def test_a_box_far_past_the_picture_keeps_its_outer_edges_outside():
    """Only the edges inside are drawn (a receptive field that covers padding), however far out the rest is."""
    rgb = np.zeros((50, 60, 3), np.uint8)
    boxed = draw_boxes(rgb, [(10, 20, 1e12, 1e15)])
    assert tuple(boxed[10, 30]) == BOX and tuple(boxed[30, 20]) == BOX  # the top and left edges
    drawn = np.any(boxed != 0, axis=-1)
    assert np.flatnonzero(drawn[49]).tolist() == [20, 21]  # the left edge runs on; no bottom edge
    assert np.flatnonzero(drawn[:, 59]).tolist() == [10, 11]  # the top edge runs on; no right edge
    np.testing.assert_array_equal(boxed, draw_boxes(rgb, [(10, 20, 70, 80)]))


def _caption_ink(caption: str, tile: int = 72):
    """The rows and columns of the caption strip that carry text, and the tile's region."""
    rgb, (region,) = render_gallery([("", [Tile(solid((0, 0, 0), (tile, tile)), caption=caption)])], tile=tile)
    ink = rgb[region.bottom:].max(axis=-1) > 128
    return np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0)), region


def test_captions_are_drawn_at_a_size_read_at_100_percent():
    """Patches use the smallest tiles (72 px): their captions are still 13 px type, not 8."""
    rows, _columns, _region = _caption_ink("H")
    assert rows.max() - rows.min() + 1 >= 9  # the cap height
    rows, _columns, _region = _caption_ink("Hg")
    assert rows.max() - rows.min() + 1 >= 12  # cap to descender
    # A caption under a large tile grows with it.
    small, _c, _r = _caption_ink("H", tile=96)
    large, _c, _r = _caption_ink("H", tile=224)
    assert large.max() - large.min() > 1.5 * (small.max() - small.min())


def test_a_long_caption_is_shortened_to_its_tile_and_its_second_line_kept_whole():
    rows, columns, region = _caption_ink("a_very_long_dataset_image_name_indeed\n17.6")
    assert region.left <= columns.min() and columns.max() < region.right  # nothing spills into the next tile
    assert _fit("a_very_long_dataset_image_name_indeed", caption_font_size(72), 72).endswith("…")
    # The second line is the distance in full, below the first: two separate runs of ink.
    gaps = np.flatnonzero(np.diff(rows) > 1)
    assert len(gaps) == 1
    second_rows = rows[gaps[0] + 1:]
    alone_rows, alone_columns, _region = _caption_ink("17.6")
    assert len(second_rows) == len(alone_rows)
    rgb, _ = render_gallery([("", [Tile(solid((0, 0, 0), (72, 72)), caption="x\n17.6")])], tile=72)
    line_two = rgb[72 + 4 + second_rows.min():72 + 4 + second_rows.max() + 1].max(axis=-1) > 128
    assert np.array_equal(np.flatnonzero(line_two.any(axis=0)), alone_columns)
