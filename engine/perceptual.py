"""Perceptual losses: content (features) and style (Gram matrices) at chosen layers.

Texture synthesis, Gatys style transfer and fast style training all compare an image's
features with targets taken once from the content and style images; these are the
comparisons, written once.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .gram import gram_matrix


def gram_targets(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Gram matrix of each layer's features, detached: the style to match."""
    return {layer: gram_matrix(value).detach() for layer, value in features.items()}


def style_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               weights: dict[str, float] | None = None) -> torch.Tensor:
    """Sum over layers of weight * mean squared difference between Gram matrices.

    A target Gram with batch size 1 is broadcast over the batch being optimised.
    """
    total = None
    for layer, target in targets.items():
        gram = gram_matrix(features[layer])
        term = F.mse_loss(gram, target.expand_as(gram)) * (1.0 if weights is None else weights.get(layer, 1.0))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("style_loss needs at least one style layer")
    return total


def content_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared difference between features and their targets."""
    total = None
    for layer, target in targets.items():
        term = F.mse_loss(features[layer], target.expand_as(features[layer]))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("content_loss needs at least one content layer")
    return total
