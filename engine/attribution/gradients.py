"""Gradients of a model's outputs with respect to its input pixels.

Gradients are taken with respect to the image in 0..1 pixel units (before the model's
normalisation), because that is the picture the user sees and the one a map is drawn on.

What is differentiated is a *score*: a function ``score(module, x)`` of the network and a
normalised input batch that returns one number per image (``class_score``: a class's
logit; ``unit_score``: one unit of a layer). Each image's score depends on that image
alone, so the gradient of their sum gives every image its own gradient in one backward
pass: a batch of N inputs costs one pass, not N.

Speed (every attribution method takes its gradients this way):

- ``gradient_network`` is the model's fast copy (``engine.anatomy.fast_copy``, kept by
  ``model.state``), with each BatchNorm folded into the convolution before it: the same function, without the normalisations'
  forward and backward passes (the bundled model, one 224 px image, forward + backward
  on 2 CPU threads: 28 ms instead of 35). The function is the same to float rounding
  only, and a unit sitting exactly at a ReLU's kink may fall the other way: a few pixels
  of a map differ visibly from the model's own (integrated gradients on the bundled
  model, 32 steps: at most 2% of the map's maximum, 0.04% at the 99th percentile). The
  copy runs its activations in place; where that breaks the backward pass (an activation
  overwrites a tensor that another operation kept for its backward), the model itself is
  used: one forward and backward pass of the copy on its first image tells. A layer
  output read from the copy could be overwritten by the in-place activation after it, so
  ``unit_score`` stops the forward at its layer and Grad-CAM keeps its layer's output
  aside (``engine.attribution.maps.layer_pass``).
- The network runs in channels-last layout, in which the CPU's convolutions are faster
  (the same: 28 ms instead of 35; 17 instead of 23 per image in batches of 8), unless the
  model cannot take it (``ModelState.run_in_fast_layout``).
- A method that reads a layer's output passes the layer to ``gradient_network``: where
  that layer is a convolution whose normalisation the copy folded in, the model itself is
  used, so the layer means what the layer tree says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch
from torch import nn

from engine.anatomy.hooks import first_tensor, forward_to
from engine.models.model import LoadedModel

Score = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (network, normalised batch) -> one value per image


def class_score(index: int) -> Score:
    """The logit of class ``index``: the unnormalised score, not the softmax, which would
    tie the gradient to every other class as well."""
    def score(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return first_tensor(module(x))[:, index]

    return score


def class_scores(indices: Sequence[int]) -> Score:
    """Each image's logit of its own class, ``indices[i]`` for row i (photos of a group,
    each explaining its own top class)."""
    def score(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = first_tensor(module(x))
        return logits.gather(1, torch.as_tensor(list(indices), device=logits.device).view(-1, 1))[:, 0]

    return score


def class_probabilities(module: nn.Module, batch: torch.Tensor, index: int) -> np.ndarray:
    """Softmax probability of class ``index`` for each image of a normalised batch, no gradient.

    Inference mode only around the forward: a generator must not yield inside it, or the
    mode would leak into whatever code runs between its events.
    """
    with torch.inference_mode():
        logits = first_tensor(module(batch))
        return torch.softmax(logits.float(), dim=1)[:, index].cpu().numpy()


def unit_score(path: str, channel: int, position: tuple[int, int] | None = None, model: LoadedModel | None = None) -> Score:
    """One unit of layer ``path``: ``channel`` at (y, x) of its map, or entry ``channel`` of
    a vector layer (``position`` None). The forward stops at the layer. With ``model``, a
    channels-last or token layer is read as the map its layout gives."""
    def score(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        output = forward_to(module, path, x)
        if model is not None:
            output = model.state.as_map(path, output, tuple(x.shape[-2:]))
        return output[:, channel] if position is None else output[:, channel, position[0], position[1]]

    return score


def gradient_sample(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """The first of the 0..1 ``pixels`` as a normalised model input: what a network made for
    them (the fast copy) is built and checked on."""
    return model.preprocessing.normalise(pixels[:1].detach().to(model.device))


def gradient_network(model: LoadedModel, pixels: torch.Tensor, layer: str | None = None) -> nn.Module:
    """The module to take input gradients through: the fast copy, or the model itself.

    ``pixels`` is a sample input (0..1); the copy is made and checked on its first image.
    ``layer`` is the layer whose output the caller reads, if any.
    """
    return model.state.gradient_network(lambda: gradient_sample(model, pixels), layer=layer)


def run_score(model: LoadedModel, pixels: torch.Tensor, score: Score, module: nn.Module | None = None) -> torch.Tensor:
    """``score`` of the 0..1 ``pixels`` through ``module`` (default: the model), recording the
    graph when the pixels require grad."""
    module = model.module if module is None else module
    return model.state.run_in_fast_layout(lambda x: score(module, x), model.preprocessing.normalise(pixels))


def score_gradient(model: LoadedModel, pixels: torch.Tensor, score: Score,
                   module: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """d score / d pixels for a batch of 0..1 images through ``module`` (default: the model);
    returns (gradient, the scores)."""
    pixels = pixels.detach().to(model.device).requires_grad_(True)
    scores = run_score(model, pixels, score, module)
    gradient, = torch.autograd.grad(scores.sum(), pixels)
    return gradient, scores.detach()


def class_score_gradient(model: LoadedModel, unit_image: torch.Tensor, class_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit[class] / d pixels for a batch of 0..1 images; returns (gradient, logits)."""
    logits = []

    def score(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits.append(first_tensor(module(x)))
        return logits[-1][:, class_index]

    gradient, _ = score_gradient(model, unit_image, score, gradient_network(model, unit_image))
    return gradient, logits[-1].detach()
