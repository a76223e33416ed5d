"""``patches``: maximally activating patches, one row per channel, as in the lecture.

One scan of the dataset records, for every channel of the layer, each image's maximum
and where it is (``extract(kind="channel-max")``), and keeps each channel's top images
as it goes. For each channel asked for, the top-k images are taken and cropped to the
unit's receptive field around that maximum: the part of the picture the unit actually saw. A click on a patch opens its image with the
field drawn as a box.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from engine.data.channel_topk import KEEP
from engine.data.datasets import open_dataset
from engine.core.errors import MethodInputError
from engine.data.extraction import extract, skipped_list, skipped_note
from engine.view.gallery import BACKGROUND, Tile, render_gallery
from engine.data.images import load_image
from engine.anatomy.receptive_field import ReceptiveField
from engine.core.jobs import Progress, Result, within
from engine.view.display import Gallery
from engine.methods.params import DATASET, MethodSpec, Param, require_channel

MAX_CHANNELS = 64


def run(ctx, p):
    data = open_dataset(p.dataset)
    path = ctx.resolve_layer(p.layer)
    size = ctx.model.preprocessing.size
    node = ctx.model.state.layer_tree(size).find(path)
    layout = ctx.model.state.layouts(size).get(path)
    if node is None or layout is None or not layout.spatial:
        raise MethodInputError(f"'{path}' has no spatial map with a receptive field; pick a convolution-stage layer")
    field = node.receptive_field or _cell_field(layout)
    picked = [require_channel("channels", channel, layout.channels, path) for channel in p.channels]

    scan = yield from within(extract(ctx.model, data, path, kind="channel-max", cancel=ctx.cancel), 0.0, 0.9)
    try:
        if not len(scan):
            raise MethodInputError("no image of the dataset could be read")
        best = scan.top_channel_maxima(picked, p.top)
        paths, failures = scan.paths, scan.failures
    finally:
        scan.close()
    yield Progress(0.9, "cropping the patches")

    top = best.order.shape[1]
    p.record(layer=path, top=top)
    rows, found, values = [], {}, np.zeros((len(picked), top), np.float32)
    cache: dict[str, Image.Image] = {}
    for column, channel in enumerate(picked):
        ctx.cancel.check()
        tiles, entries = [], []
        for rank, index in enumerate(best.order[column]):
            image = cache.get(paths[index]) or cache.setdefault(paths[index], load_image(paths[index]).image)
            y, x = int(best.y[column, rank]), int(best.x[column, rank])
            box = _in_picture(field.box(y, x), size, image.size)
            value = float(best.values[column, rank])
            tiles.append(Tile(crop_with_padding(image, box), path=paths[index], caption=f"{value:.3g}", box=_clipped(box, image.size)))
            entries.append({"path": paths[index], "value": value, "box": [round(v, 2) for v in _clipped(box, image.size)]})
            values[column, rank] = value
        rows.append((f"ch {channel}", tiles))
        found[str(channel)] = entries
    mosaic, regions = render_gallery(rows, tile=72)
    note = (f"top {top} of {len(paths)} images per channel of {path}; each patch is the {field} receptive field "
            f"around the channel's maximum; click a patch to open its image{skipped_note(failures)}")
    return Result(display=Gallery(rgb=mosaic, regions=regions, note=note), array=values, layer=path,
                  metrics={"patches": found, "receptive_field": str(field), "images": len(paths), "dataset": data.name,
                           "skipped": skipped_list(failures)})


def _in_picture(box, size: int, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A (top, left, bottom, right) box of the size x size model input, in the picture's pixels.

    Dataset images are stretched to the square input, so each axis scales on its own.
    """
    top, left, bottom, right = box
    sx, sy = image_size[0] / size, image_size[1] / size
    return top * sy, left * sx, bottom * sy, right * sx


def _clipped(box, image_size):
    top, left, bottom, right = box
    return max(0.0, top), max(0.0, left), min(float(image_size[1]), bottom), min(float(image_size[0]), right)


def crop_with_padding(image: Image.Image, box) -> Image.Image:
    """The box's pixels; parts outside the picture (fields reach into the padding) are background."""
    top, left, bottom, right = (int(round(v)) for v in box)
    patch = Image.new("RGB", (max(1, right - left), max(1, bottom - top)), BACKGROUND)
    inside = image.crop((max(0, left), max(0, top), min(image.width, right), min(image.height, bottom)))
    patch.paste(inside, (max(0, -left), max(0, -top)))
    return patch


SPEC = MethodSpec(
    id="patches",
    title="Maximally activating patches",
    summary="For each channel, the dataset patches (receptive fields) that excite it most, one row per channel.",
    params=(
        DATASET,
        Param("layer", "layer", "middle", "a layer with a spatial map (convolution stages)"),
        Param("channels", "channels", "0-7", "channels to show: ranges and lists, e.g. 0-7 or 3,17,42",
              most=MAX_CHANNELS),
        Param("top", "int", 8, "patches per channel", minimum=1, maximum=KEEP),  # what the kept lists hold
    ),
    run=run,
    gradients=False,
    needs_image=False,
)


def _cell_field(layout) -> ReceptiveField:
    """For a layer whose units see the whole image (a transformer's tokens after attention):
    the patch each unit sits on, which is what its top activations are cropped to."""
    return ReceptiveField(size=(layout.stride, layout.stride), jump=(layout.stride, layout.stride),
                          start=(layout.stride / 2, layout.stride / 2))
