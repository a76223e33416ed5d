"""What an optimisation minimises, as small parts joined with ``+``, ``-`` and ``*``.

An ``Objective`` is a weighted sum of named terms. Each term reads a ``Probe``: the
picture being optimised (``INPUT``, 0..1, before the random transforms), the model's
class scores (``LOGITS``) and the outputs of the layers it names. The loop runs the
model only as far as the terms need and reports each term's value, so a user sees which
part of the loss moves. Every objective is a loss: lower is better; "maximise a unit"
is written as its negative.

    objective = class_logit(1) + 0.05 * penalty("tv", tv_fn)     # class visualisation
    objective = channel("stages.3.2.expand_relu6", 7) + 100 * diversity("stages.4.0.expand_relu6")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from engine.style.gram import gram_matrix

INPUT = "input"  # the picture, N x 3 x H x W in 0..1, as the parameterisation made it
LOGITS = "logits"  # the model's final output, N x classes
PRE = ":pre"  # suffix: a layer's *input* (for a ReLU, the value before the clip)

Probe = dict  # name -> tensor: INPUT, LOGITS, layer paths, "path:pre"


def pre_activation(layer: str) -> str:
    """Name for the value entering ``layer``. Units are optimised through their
    pre-activation: a ReLU unit that starts at 0 passes no gradient, so it could never be
    raised, while the value entering it always has one and the ReLU is monotone."""
    return layer + PRE


@dataclass(frozen=True)
class Term:
    name: str
    weight: float
    fn: Callable[[Probe], torch.Tensor]
    needs: tuple[str, ...] = ()


class Objective:
    """sum_k weight_k * term_k(probe); combine with +, -, and multiplication by a number."""

    def __init__(self, terms: tuple[Term, ...]) -> None:
        self.terms = terms

    @property
    def needs(self) -> tuple[str, ...]:
        """Everything the probe must hold, in first-use order."""
        return tuple(dict.fromkeys(name for term in self.terms for name in term.needs))

    def parts(self, probe: Probe) -> tuple[torch.Tensor, dict[str, float]]:
        """The total and each term's weighted value (terms of one name are added)."""
        total = None
        values: dict[str, float] = {}
        for term in self.terms:
            value = term.weight * term.fn(probe)
            total = value if total is None else total + value
            values[term.name] = values.get(term.name, 0.0) + float(value.detach())
        if total is None:
            raise ValueError("an objective needs at least one term")
        return total, values

    def __call__(self, probe: Probe) -> torch.Tensor:
        return self.parts(probe)[0]

    def __add__(self, other: "Objective") -> "Objective":
        return Objective(self.terms + other.terms)

    def __mul__(self, factor: float) -> "Objective":
        return Objective(tuple(Term(t.name, t.weight * float(factor), t.fn, t.needs) for t in self.terms))

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-other)


def term(name: str, fn: Callable[[Probe], torch.Tensor], needs: tuple[str, ...] = ()) -> Objective:
    return Objective((Term(name, 1.0, fn, needs),))


def penalty(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Objective:
    """A prior on the picture alone (total variation, L2, ...): ``fn(picture) -> scalar``."""
    return term(name, lambda probe: fn(probe[INPUT]), (INPUT,))


# -- what to make the network do --------------------------------------------------------
def class_logit(index: int) -> Objective:
    """-score_c, the class's logit (not its softmax, which could rise by lowering the
    other classes instead: Simonyan et al. 2014), averaged over the batch."""
    return term("class", lambda probe: -probe[LOGITS][:, index].mean(), (LOGITS,))


def channel(layer: str, index: int) -> Objective:
    """-mean over the batch and the spatial grid of one channel of ``layer``'s pre-activation."""
    name = pre_activation(layer)
    return term("channel", lambda probe: -probe[name][:, index].mean(), (name,))


def neuron(layer: str, index: int, y: int, x: int) -> Objective:
    """-value of one unit: channel ``index`` at grid position (y, x) of ``layer``."""
    name = pre_activation(layer)
    return term("neuron", lambda probe: -probe[name][:, index, y, x].mean(), (name,))


def feature_match(layer: str, target: torch.Tensor, clip: tuple[float, float] | None = None) -> Objective:
    """||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 (Mahendran & Vedaldi 2015's normalised
    feature loss), averaged over the batch: 1 for a blank phi(x), 0 for a perfect match.

    ``target`` is phi(x0). When ``layer`` is a clipping activation (ReLU: clip (0, inf),
    ReLU6: (0, 6)), pass its ``clip``: the loss then reads the pre-activation z and puts
    a hinge where the activation is flat, ``clipped_match``, so that units that are off
    (or saturated) in x but not in x0 still get a gradient. Without it an inversion of a
    sparse late layer stalls with most of its units dead.
    """
    target = target.detach()
    norm = target.pow(2).sum().clamp(min=1e-12) / target.shape[0]
    name = layer if clip is None else pre_activation(layer)

    def fn(probe: Probe) -> torch.Tensor:
        features = probe[name]
        if clip is None:
            squared = (features - target.expand_as(features)).pow(2)
        else:
            squared = clipped_match(features, target.expand_as(features), *clip)
        return squared.sum() / features.shape[0] / norm

    return term("features", fn, (name,))


def clipped_match(z: torch.Tensor, target: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Per unit: (z - t)^2 where low < t < high, relu(z - low)^2 where t <= low and
    relu(high - z)^2 where t >= high.

    It is zero exactly when clip(z, low, high) = t, equals (clip(z) - t)^2 while z stays in
    [low, high], and is never smaller, so minimising it minimises the feature loss; unlike
    the clipped form it has a gradient everywhere it is not already zero.
    """
    squared = (z - target).pow(2)
    # An infinite bound has no flat side; skipping it also keeps inf * 0 out of the gradient.
    if math.isfinite(high):
        squared = torch.where(target >= high, torch.relu(high - z).pow(2), squared)
    if math.isfinite(low):
        squared = torch.where(target <= low, torch.relu(z - low).pow(2), squared)
    return squared


def gram_similarity(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between the Gram matrices of different batch items."""
    batch = features.shape[0]
    if batch < 2:
        return features.new_zeros(())
    grams = F.normalize(gram_matrix(features).flatten(1), dim=1)
    similarity = grams @ grams.T
    return (similarity.sum() - similarity.diagonal().sum()) / (batch * (batch - 1))


def diversity(layer: str) -> Objective:
    """How alike the batch's pictures are in ``layer``'s Gram matrices (Lucent's
    ``diversity``): adding it with a positive weight pushes the items apart in style, not
    merely in position, which is how one run shows several facets of one unit
    (Olah et al. 2017, "Diversity")."""
    return term("diversity", lambda probe: gram_similarity(probe[layer]), (layer,))
