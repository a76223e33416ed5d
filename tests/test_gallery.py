"""Galleries: tiles land where their regions say, captions fit, boxes are drawn."""

import numpy as np
from PIL import Image

from engine.view.gallery import BOX, Tile, draw_boxes, render_gallery
from engine.view.display import Display
from engine.view.render import compose


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
    np.testing.assert_array_equal(compose(Display(rgb=rgb, boxes=[(10, 20, 30, 40)])), boxed)
