"""Image priors that keep an optimised input looking like a picture.

Shared by every method that optimises pixels (class visualisation, feature inversion,
texture and style), so each is defined once and tested against its formula.

Two kinds live here. *Penalties* return a scalar to add to the loss (total variation,
L2, centre bias). *Projections* rewrite the image between steps (Gaussian blur, clipping
pixels to the mean colour), as Yosinski et al. 2015 ("Understanding Neural Networks
Through Deep Visualization") do; they take the image ``centred`` on the model's mean
colour, so "0" means "the colour the network sees as nothing" and clipping a pixel to 0
greys it out.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


# -- penalties --------------------------------------------------------------------------------
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


def l2_penalty(centred: torch.Tensor) -> torch.Tensor:
    """||x||^2 = sum of squares of the centred image (Simonyan et al. 2014's lambda * ||I||^2)."""
    return centred.pow(2).sum()


def centre_weights(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """d_ij^2: squared distance of each pixel centre from the image centre, 0 there and 1 at
    the corners (distances scaled by the half-diagonal)."""
    y = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height - 0.5
    x = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width - 0.5
    return (y[:, None].pow(2) + x[None, :].pow(2)) / 0.5


def centre_bias(centred: torch.Tensor) -> torch.Tensor:
    """sum_ij d_ij^2 * ||x_ij||^2: an L2 penalty that grows towards the edges, so whatever the
    objective draws settles in the middle of the picture instead of being tiled across it
    (the aim of Nguyen et al. 2016's centre-biased regularisation)."""
    weights = centre_weights(*centred.shape[-2:], device=centred.device, dtype=centred.dtype)
    return (centred.pow(2).sum(dim=-3) * weights).sum()


# -- projections ------------------------------------------------------------------------------
def gaussian_kernel(sigma: float, truncate: float = 3.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps exp(-t^2 / 2 sigma^2), t in [-r, r], r = int(truncate*sigma + 0.5)
    (scipy.ndimage.gaussian_filter's radius)."""
    radius = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-t.pow(2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an N x C x H x W image, each channel on its own.

    Edges are mirrored without repeating the edge pixel (scipy's mode 'mirror'), so a flat
    image stays flat and no dark frame creeps in from the border.
    """
    if sigma <= 0:
        return image
    kernel = gaussian_kernel(sigma, dtype=image.dtype, device=image.device)
    radius = kernel.numel() // 2
    channels = image.shape[1]
    out = image
    for kernel_shape, pad in (((1, kernel.numel()), (radius, radius, 0, 0)), ((kernel.numel(), 1), (0, 0, radius, radius))):
        weight = kernel.view(1, 1, *kernel_shape).expand(channels, 1, *kernel_shape)
        out = F.conv2d(_mirror_pad(out, pad), weight, groups=channels)
    return out


def _mirror_pad(image: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect padding that also works when the pad is wider than the image (tiny images):
    reflect as far as possible, then repeat."""
    left, right, top, bottom = pad
    height, width = image.shape[-2:]
    while left or right or top or bottom:
        step = (min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1))
        if not any(step):
            return F.pad(image, (left, right, top, bottom), mode="replicate")
        image = F.pad(image, step, mode="reflect")
        height, width = image.shape[-2:]
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step))
    return image


def _below_percentile(score: torch.Tensor, percentile: float) -> torch.Tensor:
    """N x H x W mask of the pixels whose score is below the image's own ``percentile``."""
    flat = score.flatten(1)
    threshold = torch.quantile(flat, percentile / 100.0, dim=1, interpolation="linear")
    return score < threshold.view(-1, 1, 1)


def clip_small_norm(centred: torch.Tensor, percentile: float) -> torch.Tensor:
    """Set to 0 every pixel whose colour norm sqrt(sum_c x_c^2) lies below the given
    percentile of the image's pixel norms (Yosinski et al. 2015, "clipping pixels with
    small norm"): faint pixels that carry nothing become the neutral mean colour."""
    if percentile <= 0:
        return centred
    mask = _below_percentile(centred.pow(2).sum(dim=1).sqrt(), percentile)
    return centred.masked_fill(mask.unsqueeze(1), 0.0)


def clip_small_contribution(centred: torch.Tensor, gradient: torch.Tensor, percentile: float) -> torch.Tensor:
    """Set to 0 every pixel whose contribution sum_c |x_c * dL/dx_c| lies below the given
    percentile (Yosinski et al. 2015): to first order, greying those pixels out would
    change the objective least, so they are noise the objective does not need."""
    if percentile <= 0:
        return centred
    mask = _below_percentile((centred * gradient).abs().sum(dim=1), percentile)
    return centred.masked_fill(mask.unsqueeze(1), 0.0)


def l2_decay(centred: torch.Tensor, rate: float) -> torch.Tensor:
    """x <- (1 - rate) * x: the step form of the L2 penalty (Yosinski et al. 2015's "L2 decay"),
    applied after the optimiser so its strength does not depend on Adam's scaling."""
    return centred * (1.0 - rate)
