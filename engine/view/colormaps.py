"""Colormaps: exact 256-entry lookup tables, and values drawn through them.

The tables are the published ones (matplotlib's viridis, inferno and magma; Google's
turbo; Kovesi's CET diverging D1), read from CSV files vendored in ``colormap_tables/``
with their licences. They are the files pyqtgraph ships, copied rather than read from
pyqtgraph's package at run time: the engine (and the command line on a machine without
a display) must not depend on the GUI library's installed layout, and a test checks
that each table equals pyqtgraph's ``colormap.get(name).getLookupTable(nPts=256)``.
The canvas builds its colour bar from these same tables (``colormap_lut``).

"turbo" replaces the old "jet" (its perceptually better successor); "blue-white-red"
(CET-D1) replaces "coolwarm" for signed values: blue below zero, white at zero, red above.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

TABLES = Path(__file__).with_name("colormap_tables")
_FILES = {
    "viridis": "viridis.csv",
    "inferno": "inferno.csv",
    "magma": "magma.csv",
    "turbo": "turbo.csv",
    "blue-white-red": "CET-D1.csv",
}
COLORMAPS = ("gray", *_FILES)  # in the order the canvas's Colormap box lists them
BACKGROUND = (40, 40, 40)  # the canvas's background: tile gaps, NaN cells, gallery margins
ENTRIES = 256


@lru_cache(maxsize=None)
def colormap_lut(name: str) -> np.ndarray:
    """The 256 x 3 uint8 lookup table of colormap ``name`` (one of COLORMAPS)."""
    if name == "gray":  # the identity ramp: exact by construction, no table needed
        ramp = np.arange(ENTRIES, dtype=np.uint8)
        lut = np.stack([ramp, ramp, ramp], axis=1)
    elif name in _FILES:
        lut = _read_table(TABLES / _FILES[name])
    else:
        raise ValueError(f"unknown colormap '{name}': the colormaps are {', '.join(COLORMAPS)}")
    lut.setflags(write=False)  # shared by every caller
    return lut


def _read_table(path: Path) -> np.ndarray:
    """A table file's entries as uint8, each component rounded as pyqtgraph rounds it
    (``int(255 * c + 0.5)``), so the canvas and the engine agree to the last bit."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split(";", 1)[0].strip()
        if line:
            rows.append([int(255 * float(component) + 0.5) for component in line.split(",")[:3]])
    if len(rows) != ENTRIES:
        raise ValueError(f"{path} holds {len(rows)} colours, not {ENTRIES}")
    return np.asarray(rows, dtype=np.uint8)


def apply_colormap(values: np.ndarray, levels: tuple[float, float] | None, name: str) -> np.ndarray:
    """Float H x W to uint8 H x W x 3 through colormap ``name``: ``levels`` (low, high) map
    to the first and last entries (None: the values' finite range); NaN and infinities
    become the background colour."""
    indices, finite = colour_indices(values, levels)
    rgb = np.take(colormap_lut(name), indices, axis=0)  # a gather five times faster than lut[indices]
    rgb[~finite] = BACKGROUND
    return rgb


def colour_indices(values: np.ndarray, levels: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Each value's entry (uint8) in a 256-entry table between ``levels``, and where the
    values are finite (elsewhere the entry is 0 and the background is drawn)."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    if levels is None:
        levels = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 1.0)
    lo, hi = levels
    scaled = values - lo
    scaled /= hi - lo if hi > lo else 1.0
    np.nan_to_num(scaled, copy=False, nan=0.0)
    with np.errstate(over="ignore"):  # an infinity stays infinite and is clipped to the last entry
        scaled *= 255
    scaled += 0.5
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8), finite
