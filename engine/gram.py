"""Gram matrices: the texture statistics that texture synthesis and style transfer match.

For a layer's features F reshaped to C x HW, G = F F^T / (C * H * W). Dividing by the
size makes a Gram independent of the image's area, which is what lets a texture be
synthesised larger than its sample and a style image of any size guide a content image.
"""

from __future__ import annotations

import torch


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """N x C x H x W features -> N x C x C Gram matrices, normalised by C * H * W."""
    if features.dim() != 4:
        raise ValueError(f"gram_matrix expects N x C x H x W features, got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)
