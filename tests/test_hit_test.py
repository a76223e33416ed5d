"""Where a click lands on a tile grid or a map over a photo: pure geometry, no model, no Qt."""

from __future__ import annotations

import numpy as np
import pytest

from engine.view.display import MapOverPhoto, Picture, ScalarMap, TileGrid
from engine.view.hit_test import TileHit, map_cell_at, tile_at


def grid(rows=3, columns=4, tile=(10, 20), gap=1) -> TileGrid:
    height = rows * (tile[0] + gap) - gap
    width = columns * (tile[1] + gap) - gap
    return TileGrid(ScalarMap(np.zeros((height, width), np.float32)), shape=(rows, columns), tile_size=tile, gap=gap)


@pytest.mark.parametrize("x, y, expected", [
    (0, 0, TileHit(0, 0, 0, 0, 0)),
    (19.9, 9.9, TileHit(0, 0, 0, 9, 19)),  # the last pixel of the first tile
    (21, 0, TileHit(1, 0, 1, 0, 0)),  # the first pixel of the second
    (2 * 21 + 5, 11 + 3, TileHit(4 + 2, 1, 2, 3, 5)),  # row 1, column 2: tile 6
    (3 * 21 + 19, 2 * 11 + 9, TileHit(11, 2, 3, 9, 19)),  # the last pixel of the last tile
])
def test_a_point_on_a_tile(x, y, expected):
    assert tile_at(grid(), x, y) == expected


def test_the_gaps_belong_to_a_tile_without_a_position():
    assert tile_at(grid(), 20.5, 3) == TileHit(0, 0, 0, None, None)  # the gap right of tile 0
    assert tile_at(grid(), 3, 10.5) == TileHit(0, 0, 0, None, None)  # the gap below it


@pytest.mark.parametrize("x, y", [(-0.5, 3), (3, -0.5), (4 * 21, 3), (3, 3 * 11), (1e9, 1e9)])
def test_off_the_grid_is_no_tile(x, y):
    assert tile_at(grid(), x, y) is None


def test_a_grid_without_gaps():
    assert tile_at(grid(gap=0), 40, 10) == TileHit(6, 1, 2, 0, 0)


def test_a_display_that_is_no_grid_has_no_tiles():
    assert tile_at(Picture(rgb=np.zeros((5, 5, 3), np.uint8)), 1, 1) is None
    assert tile_at(map_over_photo(), 1, 1) is None


def map_over_photo(grid_shape=(7, 11), photo=(300, 451)) -> MapOverPhoto:
    return MapOverPhoto(photo=np.zeros((*photo, 3), np.uint8), values=np.zeros(grid_shape, np.float32))


@pytest.mark.parametrize("x, y, expected", [
    (0, 0, (0, 0)),
    (450.9, 299.9, (6, 10)),
    (451 / 11 * 3 + 1, 300 / 7 * 4 + 1, (4, 3)),
    (451 / 11 * 3 - 0.01, 300 / 7 * 4 - 0.01, (3, 2)),
])
def test_a_point_of_the_photo_falls_in_the_map_cell_drawn_there(x, y, expected):
    assert map_cell_at(map_over_photo(), x, y) == expected


@pytest.mark.parametrize("x, y", [(-1, 0), (0, -1), (451, 0), (0, 300)])
def test_off_the_photo_is_no_cell(x, y):
    assert map_cell_at(map_over_photo(), x, y) is None


def test_only_a_map_over_a_photo_has_cells():
    plain = map_over_photo()
    assert map_cell_at(ScalarMap(plain.values), 1, 1) is None  # the same map, not over the photo
    assert map_cell_at(Picture(rgb=plain.photo), 1, 1) is None  # the photo alone
    assert map_cell_at(grid(), 1, 1) is None
