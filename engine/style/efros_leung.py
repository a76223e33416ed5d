"""Efros & Leung (ICCV 1999), "Texture Synthesis by Non-parametric Sampling".

The texture grows outwards from a 3x3 seed copied from the sample. Each unfilled pixel
next to the grown region takes its window's filled pixels as a template and is compared
with every window of the sample by a sum of squared differences, weighted by a Gaussian
centred on the pixel (so nearby pixels matter most) and by the mask of filled pixels. Of
the windows within (1 + epsilon) of the best match one is drawn at random, and its centre
pixel is copied. Pixels with the most filled neighbours go first, as in the paper's
pseudo-code, where also sigma = window / 6.4 and a pass that fills nothing raises the
error threshold by 10 %.

Vectorised per pixel: the weighted SSD to all N candidate windows is
    sum_k w_k |t_k|^2 - 2 sum_k w_k t_k . P_nk + sum_k w_k |P_nk|^2
two matrix-vector products over the precomputed windows P (N x K x 3), so one pixel costs
one pass over the sample's windows, whatever the window's fill. Small sizes only: the
work is (output pixels) x (sample windows) x (window area).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPSILON = 0.1  # candidates: within 10 % of the best match (the paper's epsilon)
MAX_ERROR = 0.3  # per-pixel weighted SSD summed over the 3 channels (0.1 per channel, as the paper's code)
SEED_SIZE = 3
# Float rounding makes an exact match's SSD a tiny positive number instead of 0; anything
# this close to the best counts as tied with it.
TIE_TOLERANCE = 1e-9


def gaussian_window(window: int) -> np.ndarray:
    """Window x window Gaussian weights with sigma = window / 6.4 (the paper's code), peak 1."""
    sigma = window / 6.4
    t = np.arange(window) - (window - 1) / 2
    g = np.exp(-(t ** 2) / (2 * sigma ** 2))
    return np.outer(g, g)


def synthesise(sample: np.ndarray, shape: tuple[int, int], window: int, rng: np.random.Generator,
               report_every: int = 256) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Grow an ``shape`` = (height, width) texture from ``sample`` (h x w x 3, uint8).

    A generator: every ``report_every`` filled pixels (and at the end) it yields
    ``(filled, total, picture, mask)`` with the picture so far (H x W x 3 uint8, unfilled
    pixels 0) and the boolean mask of filled pixels; both are live arrays, read them before
    the next step. It returns the finished H x W x 3 uint8 texture, every pixel of which is
    a pixel of the sample.
    """
    if window < 3 or window % 2 == 0:
        raise ValueError(f"the window must be an odd number of pixels, at least 3, not {window}")
    height, width = shape
    sample = np.ascontiguousarray(sample, dtype=np.uint8)
    if sample.ndim != 3 or sample.shape[2] != 3:
        raise ValueError("the sample must be an h x w x 3 picture")
    if min(sample.shape[:2]) < window:
        raise ValueError(f"the sample ({sample.shape[1]}x{sample.shape[0]}) is smaller than the window ({window})")
    half = window // 2
    values = sample.astype(np.float64) / 255.0
    # Every window lying wholly inside the sample: N x K x 3, and each one's centre pixel.
    patches = sliding_window_view(values, (window, window), axis=(0, 1))  # nh x nw x 3 x win x win
    count = patches.shape[0] * patches.shape[1]
    patches = patches.transpose(0, 1, 3, 4, 2).reshape(count, window * window, 3)
    flat_patches = patches.reshape(count, -1)  # N x 3K, for the cross term
    patch_squares = (patches ** 2).sum(axis=2)  # N x K
    centres = sample[half:sample.shape[0] - half, half:sample.shape[1] - half].reshape(count, 3)
    gauss = gaussian_window(window).reshape(-1)

    # The output with a border of half a window that is never filled (weight 0 there).
    out = np.zeros((height + 2 * half, width + 2 * half, 3), dtype=np.float64)
    picture = np.zeros((height + 2 * half, width + 2 * half, 3), dtype=np.uint8)
    filled = np.zeros((height + 2 * half, width + 2 * half), dtype=bool)
    seed = min(SEED_SIZE, height, width, sample.shape[0], sample.shape[1])
    sy = int(rng.integers(0, sample.shape[0] - seed + 1))
    sx = int(rng.integers(0, sample.shape[1] - seed + 1))
    cy, cx = half + (height - seed) // 2, half + (width - seed) // 2
    picture[cy:cy + seed, cx:cx + seed] = sample[sy:sy + seed, sx:sx + seed]
    out[cy:cy + seed, cx:cx + seed] = values[sy:sy + seed, sx:sx + seed]
    filled[cy:cy + seed, cx:cx + seed] = True

    inner = (slice(half, half + height), slice(half, half + width))
    total = height * width
    done = int(filled.sum())
    next_report = done + report_every
    max_error = MAX_ERROR
    while done < total:
        # Unfilled pixels touching the grown region (a 3x3 dilation), those with the most
        # filled pixels in their window first; ties in random order.
        touching = sliding_window_view(np.pad(filled, 1), (3, 3)).any(axis=(2, 3))
        in_window = sliding_window_view(np.pad(filled, half), (window, window)).sum(axis=(2, 3))
        frontier = touching & ~filled
        frontier[:half] = frontier[half + height:] = False
        frontier[:, :half] = frontier[:, half + width:] = False
        ys, xs = np.nonzero(frontier)
        order = rng.permutation(len(ys))
        order = order[np.argsort(-in_window[ys[order], xs[order]], kind="stable")]
        progress = False
        for y, x in zip(ys[order], xs[order]):
            mask = filled[y - half:y + half + 1, x - half:x + half + 1].reshape(-1)
            weights = gauss * mask
            weights /= weights.sum()
            template = out[y - half:y + half + 1, x - half:x + half + 1].reshape(-1, 3)
            weighted = weights[:, None] * template
            ssd = (weighted * template).sum() - 2.0 * (flat_patches @ weighted.reshape(-1)) + patch_squares @ weights
            np.maximum(ssd, 0.0, out=ssd)
            best = ssd.min()
            candidates = np.flatnonzero(ssd <= best * (1 + EPSILON) + TIE_TOLERANCE)
            choice = candidates[int(rng.integers(0, len(candidates)))]
            if ssd[choice] > max_error:
                continue
            picture[y, x] = centres[choice]
            out[y, x] = centres[choice] / 255.0
            filled[y, x] = True
            done += 1
            progress = True
            if done >= next_report:
                next_report += report_every
                yield done, total, picture[inner], filled[inner]
        if not progress:
            max_error *= 1.1
    yield done, total, picture[inner], filled[inner]
    return picture[inner].copy()
