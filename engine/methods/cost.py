"""What a run costs, before it starts: passes through the model, and seconds on this machine.

Each method's cost is declared once, in ``COSTS``: a function of its bound parameters and
of the model's facts (``Machine``) that returns how many images go through the model
forward only and how many forward and backward, each counted at the model's input size
(a picture of another size counts in proportion to its pixels). Multiplied by this
machine's measured seconds per image (``ModelState.speed``) and by how far the method's
earlier runs were from their predictions (``ModelState.note_run``), that is the estimate a
panel shows under its Run button.

The table lives here rather than in each method's module so that the methods stay as they
are; a method missing from it (its time depends on a dataset, or it is always quick) gets
no estimate. Everything here is arithmetic on plain values: the window calls it on its own
thread, without touching the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from engine.core.errors import ConvScopeError
from engine.methods.params import BoundParams, MethodSpec
from engine.methods.registry import METHODS


@dataclass(frozen=True)
class Cost:
    forwards: float = 0.0  # images through the model, inference only
    backwards: float = 0.0  # images through the model forward and back to the input

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.forwards + other.forwards, self.backwards + other.backwards)

    def __mul__(self, factor: float) -> "Cost":
        return Cost(self.forwards * factor, self.backwards * factor)


@dataclass(frozen=True)
class Machine:
    """What an estimate needs, copied out of the model's state on the engine thread."""

    input_size: tuple[int, int]  # (height, width) of the open image's model input
    model_size: int  # side of the model's own square input
    forward_s: float  # seconds per image, inference
    backward_s: float  # seconds per image, forward and backward
    shapes: Mapping[str, tuple] = field(default_factory=dict)  # module path -> output shape at input_size
    presets: Mapping[str, str] = field(default_factory=dict)  # early / middle / late -> module path
    blocks: int = 0  # blocks the sanity check randomises one by one
    ratios: Mapping[str, float] = field(default_factory=dict)  # method id -> measured / predicted

    @property
    def pixels(self) -> int:
        return self.input_size[0] * self.input_size[1]

    def square(self, side: int) -> float:
        """A ``side`` x ``side`` picture (0: the model's size) in images of the input size."""
        side = side or self.model_size
        return side * side / self.pixels

    def shorter_side(self, side: int) -> float:
        """The input scaled to a shorter side of ``side`` (0: as it is), in images of the input size."""
        return (side / min(self.input_size)) ** 2 if side else 1.0

    def channels(self, layer: str) -> int | None:
        path = self.presets.get(layer, layer)
        shape = self.shapes.get(path)
        return int(shape[1]) if shape is not None and len(shape) > 1 else None

    def with_ratios(self, ratios: Mapping[str, float]) -> "Machine":
        return replace(self, ratios=dict(ratios))


def _occlusion(p: BoundParams, m: Machine) -> Cost:
    def positions(size: int) -> int:
        return max(1, -(-(size - p.window) // p.stride) + 1) if size > p.window else 1

    return Cost(forwards=positions(m.input_size[0]) * positions(m.input_size[1]) + 1)


def _gradcam(p: BoundParams, m: Machine) -> Cost:
    if p.get("variant") == "scorecam":  # one masked forward per channel of the layer
        return Cost(forwards=(m.channels(p.layer) or 0) + 1)
    return Cost(backwards=1)


def _class_viz(p, m) -> Cost:
    """A pass per crop at the crops' size (the neuron objective and facets score the whole
    picture), and the transforms and the parameterisation's decoding at the picture's
    size: measured about half a pass at the model's size."""
    from engine.methods.class_viz import views_scored

    views = views_scored(p)
    scored = views * m.square(p.view_size or p.size) if views > 1 else p.facets * m.square(p.size)
    return Cost(backwards=p.steps * (scored + 0.5 * p.facets * m.square(p.size)))


def _sanity_check(p: BoundParams, m: Machine) -> Cost | None:
    from engine.methods.sanity_check import choose_methods

    try:
        methods = choose_methods(p.methods, METHODS)
    except ConvScopeError:
        return None
    steps = m.blocks if p.steps <= 0 or p.steps >= m.blocks else p.steps
    each = Cost()
    for method_id in methods:  # each run as the sanity check runs it: on its defaults
        one = method_cost(METHODS[method_id], {}, m)
        if one is None:
            return None
        each = each + one
    return each * (steps + 1)


def _dream(p: BoundParams, m: Machine) -> Cost:
    full = m.shorter_side(p.size)
    octaves = sum(full / p.octave_scale ** (2 * octave) for octave in range(p.octaves))
    return Cost(backwards=p.steps * octaves)


def _fast_style_train(p: BoundParams, m: Machine) -> Cost:
    # Each step: the style network and the loss network, forward and back, on the batch;
    # the style network costs about as much as the loss network at the same size.
    return Cost(backwards=2 * p.steps * p.batch * p.size * p.size / m.pixels)


COSTS: dict[str, Callable[[BoundParams, Machine], Cost | None]] = {
    "occlusion": _occlusion,
    "gradcam": _gradcam,
    "saliency": lambda p, m: Cost(backwards=1),
    "attention-rollout": lambda p, m: Cost(forwards=1),
    "rise": lambda p, m: Cost(forwards=p.masks),
    "guided-backprop": lambda p, m: Cost(backwards=1),
    "guided-gradcam": lambda p, m: Cost(backwards=2),
    "smoothgrad": lambda p, m: Cost(forwards=1, backwards=p.samples),
    "integrated-gradients": lambda p, m: Cost(forwards=2, backwards=p.steps),
    "sanity-check": _sanity_check,
    "class-viz": _class_viz,
    "adversarial": lambda p, m: Cost(backwards=p.steps),  # at most: it stops once the target leads
    "inversion": lambda p, m: Cost(backwards=p.steps * len(p.strip or (p.layer,)) * m.shorter_side(p.size)),
    "dream": _dream,
    "style": lambda p, m: Cost(backwards=1.25 * p.steps * m.shorter_side(p.size)),  # L-BFGS: ~1.25 evaluations a step
    "fast-style-train": _fast_style_train,
}


def method_cost(spec: MethodSpec, values: Mapping[str, Any], machine: Machine) -> Cost | None:
    """The passes a run of ``spec`` with ``values`` (as a form or flags give them) makes;
    None when the method declares none or the values do not bind."""
    cost = COSTS.get(spec.id)
    if cost is None:
        return None
    try:
        bound = spec.bind({name: value for name, value in values.items() if value is not None})
        return cost(bound, machine)
    except (ConvScopeError, ValueError, TypeError, AttributeError):
        return None  # the form says what does not fit; no estimate meanwhile


def predicted_seconds(spec: MethodSpec, values: Mapping[str, Any], machine: Machine) -> float | None:
    """Seconds from the passes alone, at the calibrated pace."""
    cost = method_cost(spec, values, machine)
    if cost is None:
        return None
    seconds = cost.forwards * machine.forward_s + cost.backwards * machine.backward_s
    return seconds if math.isfinite(seconds) else None


def estimate_seconds(spec: MethodSpec, values: Mapping[str, Any], machine: Machine) -> float | None:
    """The predicted seconds scaled by how the method's earlier runs here compared with theirs."""
    seconds = predicted_seconds(spec, values, machine)
    return None if seconds is None else seconds * machine.ratios.get(spec.id, 1.0)
