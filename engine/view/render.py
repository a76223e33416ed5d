"""From displays to pictures: one renderer per kind of display, and the tile layout.

``render(display, view)`` is the one way a display becomes RGB pixels: the canvas shows
what it returns for every kind it draws as a picture, and export (the window's File >
Export, the command line's ``--out``, the animation's frames) writes what it returns, so
the window and the command line write the same pixels for the same result. Bars and
scatters are drawn here as the window's plots show them (``engine.view.plots``); the
window keeps its own interactive plots for those two, but exports this picture.

This module needs only numpy and Pillow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image

from engine.view.colormaps import BACKGROUND, apply_colormap, colormap_lut, colour_indices
from engine.view.display import Bars, Display, Gallery, MapOverPhoto, Picture, ScalarMap, Scatter, TileGrid
from engine.view.gallery import draw_boxes
from engine.view.plots import bar_picture, scatter_picture
from engine.view.view_settings import ViewSettings


def render(display: Display, view: ViewSettings | None = None) -> np.ndarray:
    """The H x W x 3 uint8 picture of ``display``, drawn with the user's ``view`` settings
    (a colormap replacing the display's own, the opacity of a map over the photo)."""
    renderer = RENDERERS.get(type(display))
    if renderer is None:
        raise TypeError(f"{type(display).__name__} is no kind of display: the kinds are "
                        f"{', '.join(kind.__name__ for kind in RENDERERS)}")
    return renderer(display, view or ViewSettings())


def _picture(picture: Picture, view: ViewSettings) -> np.ndarray:
    return draw_boxes(picture.rgb, picture.boxes)


def _scalar_map(scalar: ScalarMap, view: ViewSettings) -> np.ndarray:
    return draw_boxes(apply_colormap(scalar.values, scalar.levels, view.colormap or scalar.colormap), scalar.boxes)


def _map_over_photo(overlay: MapOverPhoto, view: ViewSettings) -> np.ndarray:
    """Each pixel (1 - opacity) x the photo + opacity x the map's colour, rounded.

    Both terms take few values per channel (256 photo levels; 256 map colours and the
    background, where the map has no value), so the blend is a table per channel, computed
    with the same float32 arithmetic a per-pixel blend would use (the pixels are identical)
    and looked up per pixel: a 12-megapixel photo blends in a fifth of a second instead of
    a second, which keeps the opacity slider live and leaves the engine's cores to the
    engine while a run streams its frames.
    """
    entries = _overlay_entries(overlay)
    colours = np.concatenate([colormap_lut(view.colormap or overlay.colormap).astype(np.float32),
                              np.array([BACKGROUND], dtype=np.float32)])
    keep, opacity = 1 - view.overlay_opacity, view.overlay_opacity
    photo_levels = np.arange(256, dtype=np.float32)[:, None]
    blended = np.empty_like(overlay.photo)
    index = np.empty(entries.shape, dtype=np.int32)
    for channel in range(3):
        table = np.clip(keep * photo_levels + opacity * colours[None, :, channel] + 0.5, 0, 255).astype(np.uint8)
        np.multiply(overlay.photo[..., channel], len(colours), out=index, dtype=np.int32)
        index += entries
        np.take(table.ravel(), index, out=blended[..., channel])
    return draw_boxes(blended, overlay.boxes)


@lru_cache(maxsize=1)
def _overlay_entries(overlay: MapOverPhoto) -> np.ndarray:
    """The map stretched over the photo as colour-table entries: 0..255 the colormap's, 256
    the background's where the map has no value.

    They depend on the display alone (not on the colormap or the opacity the user picks),
    so they are made once for the display on show: the canvas draws it again whenever the
    opacity or the colormap changes, and export draws it once more. A display is frozen
    and compares by identity, so it is its own key; only the newest is kept (4 bytes a
    photo pixel), never a trail of old ones.
    """
    indices, finite = colour_indices(overlay_map(overlay), overlay.levels)
    entries = indices.astype(np.int32)
    entries[~finite] = 256
    return entries


def _tile_grid(grid: TileGrid, view: ViewSettings) -> np.ndarray:
    return render(grid.tiles, view)


def _gallery(gallery: Gallery, view: ViewSettings) -> np.ndarray:
    return gallery.rgb


def _bars(bars: Bars, view: ViewSettings) -> np.ndarray:
    return bar_picture(bars.values, bars.legend)


def _scatter(scatter: Scatter, view: ViewSettings) -> np.ndarray:
    return scatter_picture(scatter)


RENDERERS: dict[type, Callable[[Display, ViewSettings], np.ndarray]] = {
    Picture: _picture,
    ScalarMap: _scalar_map,
    MapOverPhoto: _map_over_photo,
    TileGrid: _tile_grid,
    Gallery: _gallery,
    Bars: _bars,
    Scatter: _scatter,
}


@dataclass(frozen=True)
class ColourScale:
    """The colour bar beside a display drawn through a colormap."""

    levels: tuple[float, float]  # the values at the bar's ends
    colormap: str
    legend: str  # what the values mean


def colour_scale(display: Display, view: ViewSettings | None = None) -> ColourScale | None:
    """The colour scale ``render(display, view)`` draws with; None for the kinds drawn in
    their own colours (pictures, galleries, plots, RGB tiles)."""
    view = view or ViewSettings()
    if isinstance(display, TileGrid):
        return colour_scale(display.tiles, view)
    if isinstance(display, (ScalarMap, MapOverPhoto)):
        return ColourScale(levels=display.levels or finite_range(display.values),
                           colormap=view.colormap or display.colormap, legend=display.legend)
    return None


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """The smallest and largest finite values; (0, 1) when there are none (as ``apply_colormap``)."""
    values = np.asarray(values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def overlay_map(overlay: MapOverPhoto) -> np.ndarray:
    """The values of a map over the photo at the photo's size: what is drawn over each pixel."""
    height, width = overlay.photo.shape[:2]
    if overlay.values.shape == (height, width):
        return overlay.values
    return resize_map(overlay.values, (width, height))


def resize_map(values: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """Float HxW map to (width, height) for drawing over a picture."""
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(image.resize(size, resample), dtype=np.float32)


# -- laying tiles out --------------------------------------------------------------------------------
def normalise_tiles(tiles: np.ndarray, per_tile: bool) -> np.ndarray:
    """Min-max scale to 0..1, each tile on its own or all with one range (N x ... arrays)."""
    tiles = np.asarray(tiles, dtype=np.float32)
    axes = tuple(range(1, tiles.ndim)) if per_tile else None
    lo = tiles.min(axis=axes, keepdims=per_tile)
    hi = tiles.max(axis=axes, keepdims=per_tile)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (tiles - lo) / span


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    return math.ceil(count / columns), columns


def tile_grid(tiles: np.ndarray, rows: int, columns: int, gap: int = 1, fill=np.nan) -> np.ndarray:
    """Lay N tiles (N x h x w, or N x h x w x 3) out row-major in a rows x columns grid.

    Gaps and unused cells get ``fill`` (NaN draws as background through the colormap).
    Done with one reshape instead of a Python loop over tiles: a 1280-channel layer is
    laid out in a few milliseconds.
    """
    count, h, w = tiles.shape[:3]
    extra = tiles.shape[3:]
    cells = np.full((rows * columns, h + gap, w + gap, *extra), fill, dtype=np.float32 if np.isnan(fill) else tiles.dtype)
    cells[:count, :h, :w] = tiles
    grid = cells.reshape(rows, columns, h + gap, w + gap, *extra).swapaxes(1, 2)
    grid = grid.reshape(rows * (h + gap), columns * (w + gap), *extra)
    return grid[: rows * (h + gap) - gap, : columns * (w + gap) - gap]
