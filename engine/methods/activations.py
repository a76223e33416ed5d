"""``activations``: what a layer outputs for the current image.

One grayscale tile per channel (optionally sorted by mean activation), or one channel
upsampled over the picture; a fully-connected layer's vector is shown as bars. Reads
from the image's ``FeatureCache``, so switching layers costs no forward pass.
"""

from __future__ import annotations

import numpy as np

from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result
from engine.view.display import Bars, MapOverPhoto, ScalarMap, TileGrid
from engine.view.render import grid_shape, normalise_tiles, tile_grid
from engine.methods.params import LAYER, MethodSpec, Param, require_channel

MAX_TILES = 256


def run(ctx, p):
    features = ctx.image_features()
    path = ctx.resolve_layer(p.layer)
    p.record(layer=path)
    channel, sort, page = p.channel, p.sort, p.page
    if path not in features.activations:
        raise MethodInputError(f"layer '{path}' did not run in the forward pass, so it has no activations")
    output = features.layer_output(path)[0].numpy()  # drop the batch axis
    yield Progress(0.5, path)
    metrics = {"shape": list(output.shape), "mean": float(output.mean()), "max": float(output.max()),
               "fraction_zero": float((output == 0).mean())}

    if output.ndim == 1 or (output.ndim == 3 and output.shape[1:] == (1, 1)):
        vector = output.reshape(-1)
        display = Bars(vector, legend="activation", note=f"{vector.size} units")
        return Result(display=display, array=vector, layer=path, metrics=metrics)
    if output.ndim != 3:
        raise MethodInputError(f"layer '{path}' outputs a {output.ndim}-D tensor; activations shows C x H x W maps or vectors")

    channels = output.shape[0]
    if channel is not None:
        require_channel("channel", channel, channels, path)
        single = output[channel]
        display = MapOverPhoto(photo=ctx.image.to_array(), values=single, colormap="inferno",
                               levels=(float(single.min()), float(single.max()) or 1.0),
                               legend=f"{path} channel {channel}", note=f"channel {channel} of {channels}, {single.shape[0]}x{single.shape[1]}")
        metrics.update(channel_mean=float(single.mean()), channel_max=float(single.max()),
                       argmax=[int(v) for v in np.unravel_index(single.argmax(), single.shape)])
        yield Progress(1.0, path)
        return Result(display=display, array=single, layer=path, metrics=metrics)

    order = np.argsort(-output.reshape(channels, -1).mean(axis=1), kind="stable") if sort == "mean" else np.arange(channels)
    first = (page - 1) * MAX_TILES
    if first >= channels:
        raise MethodInputError(f"page {page} is past the last of {(channels - 1) // MAX_TILES + 1} pages")
    shown = order[first:first + MAX_TILES]
    tiles = output[shown]
    per_tile = p.scale == "tile"
    tiles = normalise_tiles(tiles, per_tile=per_tile)
    rows, columns = grid_shape(len(shown))
    grid = tile_grid(tiles, rows, columns, gap=1)
    note = f"{len(shown)} of {channels} channels" if len(shown) < channels else f"{channels} channels"
    note += f" of {output.shape[1]}x{output.shape[2]}"
    note += ", sorted by mean activation" if sort == "mean" else ""
    note += ", each tile scaled to its own range" if per_tile else ", one scale for the layer"
    if channels > MAX_TILES:
        note += f"; page {page} of {(channels - 1) // MAX_TILES + 1}"
    grid_map = ScalarMap(grid, levels=(0.0, 1.0), colormap="gray", legend=f"{path} activation", note=note)
    display = TileGrid(grid_map, shape=(rows, columns), tile_size=output.shape[1:], gap=1)
    metrics["channel_order"] = [int(c) for c in shown]
    yield Progress(1.0, path)
    return Result(display=display, array=output, layer=path, metrics=metrics)


SPEC = MethodSpec(
    id="activations",
    title="Activations",
    summary="The selected layer's output for the current image: one tile per channel, or one channel over the image.",
    params=(
        LAYER,
        Param("channel", "channel", None, "show one channel upsampled over the image"),
        Param("sort", "choice", "none", "order the tiles", ("none", "mean")),
        Param("scale", "choice", "tile", "tile: each tile min-max scaled; layer: one range for all", ("tile", "layer")),
        Param("page", "int", 1, f"which block of {MAX_TILES} channels to show, from 1", minimum=1),
    ),
    run=run,
    gradients=False,
)
