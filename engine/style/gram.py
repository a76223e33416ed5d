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
    return _Gram.apply(features)


class _Gram(torch.autograd.Function):
    """G = F F^T / (C*H*W), computed the way the optimisation loops want it.

    Two differences from autograd through ``bmm``, neither in the value: channels-last
    features (see ``perceptual.Features``) are read through their N x HW x C view instead
    of being copied into N x C x HW, and the backward uses G's symmetry,
    dF = (dG + dG^T) F / (C*H*W), one matrix product where autograd would run two. The
    Grams are a tenth of a VGG style step's work.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        n, c, h, w = features.shape
        flat = _rows_of_positions(features)  # N x HW x C
        ctx.save_for_backward(features)
        return torch.bmm(flat.transpose(1, 2), flat) / (c * h * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        features, = ctx.saved_tensors
        n, c, h, w = features.shape
        flat = _rows_of_positions(features)
        symmetric = (grad + grad.transpose(1, 2)) / (c * h * w)
        grad_flat = torch.bmm(flat, symmetric)  # N x HW x C, the layout of ``flat``
        if features.is_contiguous(memory_format=torch.channels_last):
            return grad_flat.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return grad_flat.transpose(1, 2).reshape(n, c, h, w)


def _rows_of_positions(features: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x HW x C, a view when the features are channels-last."""
    n, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last):
        return features.permute(0, 2, 3, 1).reshape(n, h * w, c)
    return features.reshape(n, c, h * w).transpose(1, 2)
