"""``filters``: the weights of a convolution layer, as pictures.

A first layer (3 input channels) shows one RGB tile per filter. Deeper layers show a
grid of grayscale tiles, one row per output channel and one tile per input channel,
exactly as the lecture draws a 20x16x7x7 layer; big layers are paged.
"""

from __future__ import annotations

import numpy as np

from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result
from engine.view.colormaps import BACKGROUND
from engine.view.display import Picture, ScalarMap, TileGrid
from engine.anatomy.layers import conv_layers, find_module, nearest_conv
from engine.view.render import grid_shape, normalise_tiles, tile_grid
from engine.methods.params import MethodSpec, Param

MAX_ROWS = 64
MAX_COLUMNS = 64


def run(ctx, p):
    model = ctx.model.module
    scale, page = p.scale, p.page
    if p.layer == "first":
        convs = conv_layers(model)
        if not convs:
            raise MethodInputError("this model has no convolution layers, so it has no filters to show")
        path = convs[0]
    else:
        path = nearest_conv(model, ctx.resolve_layer(p.layer))
    p.record(layer=path)
    conv = find_module(model, path)
    weight = conv.weight.detach().float().cpu().numpy()  # out x in/groups x kh x kw
    out_channels, in_per_group, kh, kw = weight.shape
    yield Progress(0.5, f"{path}: {out_channels}x{in_per_group}x{kh}x{kw}")

    per_tile = scale == "tile" or (scale == "auto" and kh * kw > 1)
    if in_per_group == 3:
        tiles = normalise_tiles(weight.transpose(0, 2, 3, 1), per_tile=True)  # N x kh x kw x 3
        rows, columns = grid_shape(out_channels)
        gap = 1
        grid = tile_grid(tiles, rows, columns, gap=gap, fill=np.nan)
        rgb = (np.where(np.isnan(grid), 0.0, grid) * 255 + 0.5).astype(np.uint8)
        rgb[np.isnan(grid).any(axis=2)] = BACKGROUND
        picture = Picture(rgb=rgb, note=f"{out_channels} filters of {kh}x{kw}, RGB, each scaled to its own range")
        display = TileGrid(picture, shape=(rows, columns), tile_size=(kh, kw), gap=gap)
    elif in_per_group == 1:
        # Depthwise: each output channel has one kernel; lay them out as a square grid.
        tiles = weight[:, 0]
        tiles = normalise_tiles(tiles, per_tile) if per_tile else tiles
        rows, columns = grid_shape(out_channels)
        gap = 1 if kh * kw > 1 else 0
        display = _gray_display(tile_grid(tiles, rows, columns, gap=gap), per_tile, weight,
                                f"{out_channels} depthwise {kh}x{kw} kernels, one per channel", rows, columns, (kh, kw), gap)
    else:
        first_row = (page - 1) * MAX_ROWS
        if first_row >= out_channels:
            raise MethodInputError(f"page {page} is past the last of {(out_channels - 1) // MAX_ROWS + 1} pages")
        shown = weight[first_row:first_row + MAX_ROWS, :MAX_COLUMNS]
        rows, columns = shown.shape[:2]
        tiles = shown.reshape(rows * columns, kh, kw)
        tiles = normalise_tiles(tiles, per_tile) if per_tile else tiles
        gap = 1 if kh * kw > 1 else 0
        note = f"rows: output channels {first_row}-{first_row + rows - 1} of {out_channels}; columns: input channels"
        if in_per_group > MAX_COLUMNS:
            note += f" 0-{MAX_COLUMNS - 1} of {in_per_group}"
        if out_channels > MAX_ROWS:
            note += f"; page {page} of {(out_channels - 1) // MAX_ROWS + 1}"
        display = _gray_display(tile_grid(tiles, rows, columns, gap=gap), per_tile, weight, note, rows, columns, (kh, kw), gap)
    yield Progress(1.0, path)
    return Result(display=display, array=weight, layer=path,
                  metrics={"shape": list(weight.shape), "min": float(weight.min()), "max": float(weight.max())})


def _gray_display(grid, per_tile, weight, note, rows, columns, tile_size, gap) -> TileGrid:
    if per_tile:
        tiles = ScalarMap(grid, levels=(0.0, 1.0), colormap="gray", legend="weight (each tile scaled)", note=note)
    else:
        bound = float(np.abs(weight).max()) or 1.0
        tiles = ScalarMap(grid, levels=(-bound, bound), colormap="blue-white-red", legend="weight", note=note)
    return TileGrid(tiles, shape=(rows, columns), tile_size=tile_size, gap=gap)


SPEC = MethodSpec(
    id="filters",
    title="Filters",
    summary="The weights of a convolution layer: RGB tiles for the first layer, grayscale grids deeper.",
    params=(
        Param("layer", "layer", "first", "a conv layer (or a layer whose nearest preceding conv is shown); 'first' for the first"),
        Param("scale", "choice", "auto", "tile: each tile min-max scaled; layer: one signed scale; auto: tile unless 1x1", ("auto", "tile", "layer")),
        Param("page", "int", 1, f"which block of {MAX_ROWS} output channels to show, from 1", minimum=1),
    ),
    run=run,
    gradients=False,
    needs_image=False,
)
