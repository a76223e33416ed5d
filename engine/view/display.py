"""What the canvas shows and what export writes: a picture, a scalar map, bars, points, galleries.

Only plain numpy arrays live here, never tensors, so a display can cross threads freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Region:
    """A clickable rectangle of a picture that stands for one dataset image.

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
    box: Optional[tuple[float, float, float, float]] = None

    def contains(self, x: float, y: float) -> bool:
        return self.left <= x < self.right and self.top <= y < self.bottom


@dataclass
class Points:
    """A 2-D scatter of dataset images (an embedding), one row per image."""

    xy: np.ndarray  # N x 2
    paths: list[str]
    groups: list[str]  # what colours a point: its label or its predicted class
    title: str = ""


@dataclass
class Display:
    """What the canvas shows: an RGB picture, a scalar map, or both (map over picture).

    ``scalar`` maps are drawn through a colormap between ``levels``; ``bars`` replaces the
    picture with a bar chart (a fully-connected layer's vector). Only plain numpy arrays
    live here, never tensors, so a Display can cross threads freely.
    """

    rgb: Optional[np.ndarray] = None  # HxWx3 uint8
    scalar: Optional[np.ndarray] = None  # HxW float32, NaN where nothing is drawn
    levels: Optional[tuple[float, float]] = None
    colormap: str = "gray"
    legend: str = ""  # what the scalar's values mean, shown beside the colour bar
    overlay: bool = False  # scalar drawn over rgb with the canvas's opacity
    bars: Optional[np.ndarray] = None
    note: str = ""  # e.g. "showing 256 of 1280 channels"
    tile_shape: Optional[tuple[int, int]] = None  # (rows, cols) of a tile grid
    tile_size: Optional[tuple[int, int]] = None  # (h, w) of one tile, gaps excluded
    tile_gap: int = 0
    regions: list[Region] = field(default_factory=list)  # clickable tiles of a gallery
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)  # (top, left, bottom, right) drawn on rgb
    points: Optional[Points] = None  # a scatter plot replaces the picture
