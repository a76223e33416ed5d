"""Maps that know nothing about the model, which a faithful method must beat.

A method whose deletion curve falls no faster than the edge map's only draws the
image's edges (Adebayo et al. 2018 found several gradient methods close to an edge
detector); one that does not beat the centred Gaussian only says "the object is in the
middle", which most photos' objects are.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

REFERENCE_MAPS = ("random", "centre", "edges")
CENTRE_SIGMA = 0.25  # the Gaussian's standard deviation, as a fraction of each side


def random_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Uniform noise: an order of the pixels that carries no information."""
    return np.random.default_rng(seed).random((height, width), dtype=np.float32)


def centre_map(height: int, width: int) -> np.ndarray:
    """A Gaussian bump at the centre, sigma a quarter of each side."""
    rows = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (CENTRE_SIGMA * height)
    cols = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (CENTRE_SIGMA * width)
    return np.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2)).astype(np.float32)


def edge_map(pixels: np.ndarray) -> np.ndarray:
    """The Sobel gradient magnitude of an H x W x 3 picture (0..1), summed over colours."""
    pixels = np.asarray(pixels, dtype=np.float32)
    magnitude = np.zeros(pixels.shape[:2], dtype=np.float32)
    for channel in range(pixels.shape[2]):
        plane = pixels[..., channel]
        magnitude += np.hypot(ndimage.sobel(plane, axis=0), ndimage.sobel(plane, axis=1))
    return magnitude


def reference_map(kind: str, pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """The reference map ``kind`` (one of ``REFERENCE_MAPS``) for an H x W x 3 picture."""
    height, width = pixels.shape[:2]
    if kind == "random":
        return random_map(height, width, seed)
    if kind == "centre":
        return centre_map(height, width)
    if kind == "edges":
        return edge_map(pixels)
    raise ValueError(f"no reference map '{kind}': there are {', '.join(REFERENCE_MAPS)}")
