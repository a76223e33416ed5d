"""Draw the default style picture, engine/resources/styles/stained-glass.png.

Drawn here rather than taken from a collection so that it may be shipped with no licence
question: a Voronoi mosaic of saturated glass colours, each pane shaded by a gentle
gradient and a little grain, separated by dark lead lines. Its strong colours, dark
outlines and panes of one colour make a style whose transfer is plain to see (the cat
re-drawn in bright panes with dark edges), which a subtle texture would not.

    python packaging/make_style_picture.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

SIDE = 384
PANES = 90
SEED = 1893  # any fixed seed: the same picture every time
# Glass colours (RGB 0..1): cobalt, ruby, amber, emerald, violet, turquoise, gold, crimson.
PALETTE = np.array([[0.10, 0.25, 0.75], [0.75, 0.08, 0.15], [0.95, 0.62, 0.10], [0.10, 0.55, 0.25],
                    [0.45, 0.15, 0.60], [0.10, 0.65, 0.70], [0.95, 0.85, 0.25], [0.85, 0.25, 0.10]])
OUT = Path(__file__).resolve().parent.parent / "engine" / "resources" / "styles" / "stained-glass.png"


def stained_glass(side: int = SIDE, panes: int = PANES, seed: int = SEED) -> np.ndarray:
    """The picture as side x side x 3 uint8."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, side, size=(panes, 2))
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    points = np.stack([ys.ravel(), xs.ravel()], axis=1)
    distances, nearest = cKDTree(centres).query(points, k=2)
    pane = nearest[:, 0].reshape(side, side)
    # Lead where the two nearest centres are about equally near: a line along each border.
    lead = (distances[:, 1] - distances[:, 0]).reshape(side, side) < 3.0
    colours = PALETTE[rng.integers(0, len(PALETTE), size=panes)]
    colours = np.clip(colours * rng.uniform(0.8, 1.15, size=(panes, 1)), 0, 1)
    picture = colours[pane]
    # Each pane lit from one side, as old glass is uneven.
    angle = rng.uniform(0, 2 * np.pi, size=panes)
    offset = ((ys - centres[pane, 0]) * np.sin(angle[pane]) + (xs - centres[pane, 1]) * np.cos(angle[pane])) / side
    picture = picture * (1.0 + 1.6 * offset)[..., None]
    grain = gaussian_filter(rng.normal(0, 1, size=(side, side)), 1.2)
    picture = picture + 0.06 * grain[..., None]
    picture[gaussian_filter(lead.astype(float), 0.8) > 0.35] = (0.06, 0.05, 0.05)
    return (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stained_glass()).save(out, optimize=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
