"""How alike two attribution maps are, by their magnitudes: the sanity check's measures.

Adebayo et al. 2018 compare the absolute values of maps, because a method may flip the
sign of all of its map without changing what it points at.
"""

from __future__ import annotations

import numpy as np


def spearman_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of |a| and |b|; NaN when either is constant."""
    from scipy.stats import spearmanr  # on first use: slow to import, and listing methods needs none of it
    x, y = np.abs(a).ravel(), np.abs(b).ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _unit_range(values: np.ndarray) -> np.ndarray:
    values = np.abs(values)
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def ssim_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of |a| and |b|, each scaled to 0..1 on its own."""
    from skimage.metrics import structural_similarity
    x, y = _unit_range(a), _unit_range(b)
    window = min(7, *x.shape)
    window -= 1 - window % 2  # odd, and no larger than the map
    return float(structural_similarity(x, y, data_range=1.0, win_size=max(window, 3)))
