"""What the canvas shows and what export writes, as one of seven kinds.

``Display`` is a tagged union: a method returns exactly one kind, and code that draws,
exports or hit-tests a display dispatches on its type (``engine.view.render.RENDERERS``,
``engine.view.hit_test``), never on which optional field happens to be set.

- ``Picture``: an RGB picture, boxes drawn on it (a photo, a dream, a guided gradient).
- ``ScalarMap``: values through a colormap between levels (an attribution map on its own).
- ``MapOverPhoto``: a scalar map blended over the photo with the canvas's opacity.
- ``TileGrid``: tiles laid out with gaps (a layer's channels, a conv layer's filters).
- ``Gallery``: an RGB mosaic of dataset images, each tile a clickable ``Region``.
- ``Bars``: a vector as bars (a fully-connected layer's output).
- ``Scatter``: dataset images as points of a 2-D embedding.

Every kind has a ``note`` (one line under the canvas). Only plain numpy arrays live here,
never tensors, so a display can cross threads freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, get_args

import numpy as np

Box = tuple[float, float, float, float]  # top, left, bottom, right; bottom and right exclusive


@dataclass(frozen=True)
class Region:
    """A clickable rectangle of a gallery that stands for one dataset image.

    Galleries (nearest neighbours, maximally activating patches, the t-SNE grid) are one
    RGB mosaic; each tile is a Region, so a click opens the image it came from, and
    ``box`` (top, left, bottom, right in that image's pixels) is drawn on it when opened.
    """

    left: int
    top: int
    right: int
    bottom: int
    path: str
    caption: str = ""
    box: Optional[Box] = None

    def contains(self, x: float, y: float) -> bool:
        return self.left <= x < self.right and self.top <= y < self.bottom


# eq=False: the fields are arrays, which compare element-wise; a display is equal only to itself.
@dataclass(frozen=True, eq=False)
class Picture:
    """An RGB picture as it is, with ``boxes`` (in its pixels) outlined on it."""

    rgb: np.ndarray  # H x W x 3 uint8
    boxes: list[Box] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True, eq=False)
class ScalarMap:
    """Values drawn through ``colormap`` between ``levels`` (None: their finite range); NaN
    draws as the background. ``boxes`` are in the map's pixels."""

    values: np.ndarray  # H x W float32, NaN where nothing is drawn
    levels: Optional[tuple[float, float]] = None
    colormap: str = "gray"
    legend: str = ""  # what the values mean, shown beside the colour bar
    boxes: list[Box] = field(default_factory=list)
    note: str = ""
    clipped_at: str = ""  # how levels that cut values off were chosen ("the 99th percentile of |map|")


@dataclass(frozen=True, eq=False)
class MapOverPhoto:
    """A scalar map over the photo, blended with the canvas's overlay opacity.

    Its own kind rather than a ScalarMap with an optional photo: it draws differently (the
    map stretched over the photo, the opacity applied), a click means a different thing
    (the map's cell under the photo's pixel), and the opacity control acts only on it.
    ``values`` may have any resolution (a 7x11 channel over a 300x451 photo); it is
    stretched over the whole photo. ``boxes`` are in the photo's pixels.
    """

    photo: np.ndarray  # H x W x 3 uint8
    values: np.ndarray  # h x w float32
    levels: Optional[tuple[float, float]] = None
    colormap: str = "inferno"
    legend: str = ""
    boxes: list[Box] = field(default_factory=list)
    note: str = ""
    clipped_at: str = ""  # as ScalarMap's


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Tiles of ``tile_size`` (h, w) laid out row-major in a ``shape`` (rows, columns) grid,
    ``gap`` pixels apart. ``tiles`` is the whole grid as one picture, gaps included: a
    ScalarMap (values through a colormap, NaN in the gaps) or, for RGB tiles such as a
    first conv layer's filters, a Picture. The geometry is what hit testing needs to tell
    which tile a click falls on."""

    tiles: ScalarMap | Picture
    shape: tuple[int, int]
    tile_size: tuple[int, int]
    gap: int = 1

    @property
    def note(self) -> str:
        return self.tiles.note


@dataclass(frozen=True, eq=False)
class Gallery:
    """An RGB mosaic of dataset images (``engine.view.gallery.render_gallery``); each tile
    is a ``Region`` that a click opens."""

    rgb: np.ndarray  # H x W x 3 uint8
    regions: list[Region] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True, eq=False)
class Bars:
    """A vector as bars from a zero line, one per unit."""

    values: np.ndarray  # N
    legend: str = ""  # what the values are ("activation", "logit")
    note: str = ""


@dataclass(frozen=True, eq=False)
class Scatter:
    """A 2-D scatter of dataset images (an embedding), one row per image."""

    xy: np.ndarray  # N x 2
    paths: list[str]
    groups: list[str]  # what colours a point: its label or its predicted class
    title: str = ""
    note: str = ""


Display = Picture | ScalarMap | MapOverPhoto | TileGrid | Gallery | Bars | Scatter
KINDS: tuple[type, ...] = get_args(Display)
