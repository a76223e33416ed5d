"""Gradients of a model's outputs with respect to its input pixels.

Gradients are taken with respect to the image in 0..1 pixel units (before the model's
normalisation), because that is the picture the user sees and the one a map is drawn on.
"""

from __future__ import annotations

import torch

from .models.registry import LoadedModel


def class_score_gradient(model: LoadedModel, unit_image: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit[class] / d pixels for a batch of 0..1 images; returns (gradient, logits)."""
    pixels = unit_image.detach().to(model.device).requires_grad_(True)
    logits = model.module(model.preprocessing.normalise(pixels))
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    gradient, = torch.autograd.grad(logits[:, class_index].sum(), pixels)
    return gradient, logits.detach()
