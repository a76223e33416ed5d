"""Transformations applied to a layer's features before the perceptual losses compare them.

Gram-matrix style losses work well on VGG and poorly on residual and efficient networks
(ResNet, EfficientNet): Wang, Li & Vasconcelos (CVPR 2021, "Rethinking and Improving the
Robustness of Image Style Transfer") trace this to residual connections, which make a
layer's activations peaky: a few huge values, low entropy. Their fix, SWAG ("stylization
with activation smoothing"), passes the activations through a softmax before the Gram and
content losses:

    sigma(F)_ik = exp(F_ik / T) / sum_jm exp(F_jm / T)

over all channels i and positions k of the layer at once (the paper's equation, and its
code's ``softmax3d``), with a temperature T (their code uses 1).

One change of scale here: the softmax sums to 1 over the layer, so its values shrink with
the number of elements N = C*H*W, and a style image of another size would have Grams of
another scale. The result is multiplied by N, which makes its mean exactly 1 at any image
size; the Gram of it is then comparable across sizes as ``gram.py`` intends. Multiplying by
a constant changes no direction of any gradient, only the loss's scale.
"""

from __future__ import annotations

from typing import Callable

import torch

FeatureTransform = Callable[[torch.Tensor], torch.Tensor]

TRANSFORMS = ("none", "softmax")
DEFAULT_TEMPERATURE = 1.0


def softmax_smoothing(features: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """N x C x H x W features -> the softmax over each sample's C*H*W values, times C*H*W."""
    if temperature <= 0:
        raise ValueError(f"the softmax temperature must be positive, not {temperature}")
    n = features.shape[0]
    flat = features.reshape(n, -1)
    smoothed = torch.softmax(flat / temperature, dim=1) * flat.shape[1]
    return smoothed.reshape(features.shape)


def feature_transform(name: str, temperature: float = DEFAULT_TEMPERATURE) -> FeatureTransform | None:
    """The transform called ``name`` ("none" gives None: use the features as they are)."""
    if name == "none":
        return None
    if name == "softmax":
        return lambda features: softmax_smoothing(features, temperature)
    raise ValueError(f"unknown feature transform '{name}'; known: {', '.join(TRANSFORMS)}")
