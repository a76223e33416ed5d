"""The pointing game (Zhang et al. 2016): does a map's maximum fall on the object?

A hit when the map's largest value lies inside one of the object's boxes, or within
``tolerance`` pixels of one (15 in the paper, which forgives a maximum on the object's
edge). Boxes are (top, left, bottom, right) in the map's pixels, bottom and right
exclusive. A map whose maximum is shared by several pixels points at all of them: the
paper takes the first; here a hit needs only one of them inside, and ``Pointing``
says how many there were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 15


@dataclass(frozen=True)
class Pointing:
    hit: bool
    point: tuple[int, int]  # (row, column) of the maximum (the first, in reading order)
    distance: float  # from the point to the nearest box, in pixels (0 inside one)
    ties: int  # how many pixels hold the maximum


def box_distance(row: float, col: float, box: tuple[float, float, float, float]) -> float:
    """Euclidean distance from pixel (row, col) to the pixels of ``box``; 0 inside it."""
    top, left, bottom, right = box
    dy = max(top - row, 0.0, row - (bottom - 1))
    dx = max(left - col, 0.0, col - (right - 1))
    return float(np.hypot(dy, dx))


def pointing_game(values: np.ndarray, boxes, tolerance: float = TOLERANCE) -> Pointing:
    """Whether the maximum of ``values`` (H x W) falls within ``tolerance`` of a box."""
    boxes = [tuple(float(v) for v in box) for box in boxes]
    if not boxes:
        raise ValueError("the pointing game needs at least one box around the object")
    values = np.asarray(values)
    if not np.isfinite(values).all():
        raise ValueError("the map holds NaN or infinite values")
    peaks = np.argwhere(values == values.max())
    distances = [min(box_distance(row, col, box) for box in boxes) for row, col in peaks]
    nearest = min(distances)
    first = tuple(int(v) for v in peaks[0])
    return Pointing(hit=nearest <= tolerance, point=first, distance=nearest, ties=len(peaks))
