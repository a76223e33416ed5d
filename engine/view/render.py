"""From arrays to pictures: tile grids, colormaps and the composite the canvas shows.

This module needs only numpy and Pillow, so the GUI can use it for export without the
heavy imports, and the CLI writes exactly the picture the canvas would show.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from engine.view.display import Display

# Colormaps as a few control points, interpolated to 256 entries (values from matplotlib's
# perceptually uniform maps, sampled at 9 points; the eye cannot tell the difference).
_CONTROL_POINTS = {
    "gray": [(0, 0, 0), (255, 255, 255)],
    "viridis": [(68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
                (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)],
    "inferno": [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
                (227, 89, 51), (249, 140, 10), (249, 201, 50), (252, 255, 164)],
    "magma": [(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
              (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)],
    "jet": [(0, 0, 128), (0, 0, 255), (0, 128, 255), (0, 255, 255), (128, 255, 128),
            (255, 255, 0), (255, 128, 0), (255, 0, 0), (128, 0, 0)],
    # Diverging, for signed values such as weights: blue below zero, red above.
    "coolwarm": [(59, 76, 192), (98, 130, 234), (141, 176, 254), (184, 208, 249), (221, 221, 221),
                 (245, 196, 173), (244, 154, 123), (222, 96, 77), (180, 4, 38)],
}
COLORMAPS = tuple(_CONTROL_POINTS)
BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)  # tile gaps and NaN cells


def colormap_lut(name: str) -> np.ndarray:
    """256x3 uint8 lookup table."""
    points = np.asarray(_CONTROL_POINTS[name], dtype=np.float64)
    positions = np.linspace(0, 1, len(points))
    samples = np.linspace(0, 1, 256)
    return np.stack([np.interp(samples, positions, points[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def apply_colormap(values: np.ndarray, levels: tuple[float, float] | None, name: str) -> np.ndarray:
    """Float HxW to uint8 HxWx3; NaN becomes the background colour."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    if levels is None:
        levels = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    lo, hi = levels
    scaled = (values - lo) / (hi - lo if hi > lo else 1.0)
    indices = np.clip(np.nan_to_num(scaled, nan=0.0) * 255 + 0.5, 0, 255).astype(np.uint8)
    rgb = colormap_lut(name)[indices]
    rgb[~finite] = BACKGROUND
    return rgb


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


def resize_map(values: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """Float HxW map to (width, height) for drawing over a picture."""
    image = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(image.resize(size, resample), dtype=np.float32)


def overlay_map(display: Display) -> np.ndarray:
    """The scalar map of an overlay at the picture's size (the canvas draws exactly this)."""
    height, width = display.rgb.shape[:2]
    if display.scalar.shape == (height, width):
        return display.scalar
    return resize_map(display.scalar, (width, height))


def compose(display: Display, opacity: float = 0.6, colormap: str | None = None) -> np.ndarray:
    """The RGB picture the canvas shows for a Display; bars and scatters are drawn as the
    window's plots show them (``engine.view.plots``), for exports without a window."""
    from engine.view.gallery import draw_boxes

    colormap = colormap or display.colormap
    if display.points is not None:
        from engine.view.plots import scatter_picture

        return scatter_picture(display.points)
    if display.bars is not None:
        from engine.view.plots import bar_picture

        return bar_picture(display.bars, display.legend)
    if display.scalar is None:
        if display.rgb is None:
            raise ValueError("nothing to draw")
        return draw_boxes(display.rgb, display.boxes)
    if display.rgb is None or not display.overlay:
        return apply_colormap(display.scalar, display.levels, colormap)
    coloured = apply_colormap(overlay_map(display), display.levels, colormap).astype(np.float32)
    mixed = (1 - opacity) * display.rgb.astype(np.float32) + opacity * coloured
    return draw_boxes(np.clip(mixed + 0.5, 0, 255).astype(np.uint8), display.boxes)
