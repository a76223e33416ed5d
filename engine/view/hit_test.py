"""Where a point of the canvas's picture falls: which tile of a grid, which cell of a map.

Pure geometry over a display's sizes, for the two kinds a click can land on (a
``TileGrid``, a ``MapOverPhoto``): picture coordinates (x to the right, y down, in
the picture's pixels, as the canvas reports a click) in, indices out. What a click then
does is the session's business (``Session.canvas_click``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.view.display import Display, MapOverPhoto, TileGrid


@dataclass(frozen=True)
class TileHit:
    """A point on a tile grid: the tile (row-major ``index``, ``row``, ``column``) and the
    position inside it in the tile's own pixels; ``y`` and ``x`` are None on the gap that
    separates a tile from its neighbours to the right and below."""

    index: int
    row: int
    column: int
    y: Optional[int]
    x: Optional[int]


def tile_at(display: Display, x: float, y: float) -> TileHit | None:
    """The tile under (x, y) of a tile grid; None off the grid or when ``display`` is no grid."""
    if not isinstance(display, TileGrid) or x < 0 or y < 0:
        return None
    rows, columns = display.shape
    tile_h, tile_w = display.tile_size
    pitch_h, pitch_w = tile_h + display.gap, tile_w + display.gap
    row, column = int(y // pitch_h), int(x // pitch_w)
    if not (row < rows and column < columns):
        return None
    inside_y, inside_x = int(y - row * pitch_h), int(x - column * pitch_w)
    on_tile = inside_y < tile_h and inside_x < tile_w
    return TileHit(index=row * columns + column, row=row, column=column,
                   y=inside_y if on_tile else None, x=inside_x if on_tile else None)


def map_cell_at(display: Display, x: float, y: float) -> tuple[int, int] | None:
    """The (row, column) of a scalar map drawn over a photo, under the photo's point (x, y).

    The map covers the whole photo whatever its own resolution (a 7x11 channel over a
    300x451 photo), so each axis scales on its own. None off the photo or for a display
    that is no map over a photo.
    """
    if not isinstance(display, MapOverPhoto):
        return None
    image_h, image_w = display.photo.shape[:2]
    grid_h, grid_w = display.values.shape[:2]
    if not (0 <= x < image_w and 0 <= y < image_h):
        return None
    return int(y * grid_h / image_h), int(x * grid_w / image_w)
