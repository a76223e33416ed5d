"""Image priors that keep an optimised input looking like a picture.

Shared by every method that optimises pixels (class visualisation, feature inversion,
texture and style), so each is defined once and tested against its formula.
"""

from __future__ import annotations

import torch


def total_variation(image: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """TV_beta(x) = sum_ij ((x[i,j+1]-x[i,j])^2 + (x[i+1,j]-x[i,j])^2)^(beta/2), summed over
    channels and the batch (Mahendran & Vedaldi 2015).

    Sums run over the pixels that have both a right and a lower neighbour. beta = 2 is the
    plain squared-difference TV; beta < 2 lets sharp edges survive. A tiny epsilon inside
    the power keeps the gradient finite where the image is flat and beta < 2.
    """
    dx = image[..., :-1, 1:] - image[..., :-1, :-1]
    dy = image[..., 1:, :-1] - image[..., :-1, :-1]
    squared = dx.pow(2) + dy.pow(2)
    if beta == 2.0:
        return squared.sum()
    return (squared + 1e-8).pow(beta / 2).sum()
