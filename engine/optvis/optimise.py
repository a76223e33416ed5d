"""Optimise a parameterised picture against an objective: class-viz's and inversion's stepper.

Class visualisation, feature inversion and their relatives differ only in their parts
(Lucent's ``optvis/render.py`` design): a parameterisation (``engine.optvis.parameterisation``)
makes the picture, random transforms (``engine.optvis.transforms``) perturb it before each
forward, an objective (``engine.optvis.objectives``) scores the model's response, Adam moves
the parameters, and projections (``engine.optvis.regularisers``: blur, clipping, decay) rewrite
the picture between steps. ``adam_stepper`` is that update; the one loop
(``engine.optvis.loop``) runs it, with its cancel checks, frames, progress and history.
Also here: ``probe_model``, the forward that collects what an objective needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from engine.view.animation import FrameRecorder
from engine.core.errors import MethodInputError
from engine.anatomy.hooks import StopForward, first_tensor, hooked
from engine.core.jobs import CancelToken
from engine.view.display import Picture
from engine.anatomy.layers import find_module
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.models.model import LoadedModel
from engine.optvis.loop import Step, optimisation_loop
from engine.optvis.objectives import INPUT, LOGITS, PRE, Objective, Probe
from engine.optvis.parameterisation import ImageParam
from engine.view.render import tile_grid
from engine.optvis.transforms import Transform

# Modules whose input, not output, is read for a ":pre" request: their output has no
# gradient where the unit is off (ReLU6 is a Hardtanh).
_CLIPPING_ACTIVATIONS = (nn.ReLU, nn.Hardtanh)


def activation_clip(model: LoadedModel, path: str) -> tuple[float, float] | None:
    """(low, high) of a clipping activation at ``path`` (ReLU: 0, inf; ReLU6: 0, 6), else None."""
    module = find_module(model.module, path)
    if isinstance(module, nn.ReLU):
        return 0.0, float("inf")
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    return None


@dataclass(frozen=True)
class Projection:
    """A rewrite of the picture between steps, every ``every`` steps.

    ``apply(centred, gradient)`` gets the picture minus the model's mean colour (so 0 is
    "nothing") and the loss's gradient with respect to the picture at this step, and
    returns the new centred picture.
    """

    name: str
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    every: int = 1


@dataclass
class Optimised:
    image: torch.Tensor  # the final picture, N x 3 x H x W in 0..1, detached
    losses: list[float]  # the total loss at each step
    first: dict[str, float]  # each term's weighted value at the first step
    last: dict[str, float]  # ... and at the last


def probe_model(model: LoadedModel, picture: torch.Tensor, needs: Sequence[str],
                model_input: Optional[torch.Tensor] = None) -> Probe:
    """Run the model on ``model_input`` (default: ``picture``) and collect what ``needs`` names.

    The forward stops as soon as the last needed layer has run unless the logits are
    needed, so inverting an early layer costs a fraction of a full pass.
    """
    model_input = picture if model_input is None else model_input
    probe: Probe = {INPUT: picture}
    wanted = [name for name in needs if name not in (INPUT, LOGITS)]
    stop_early = LOGITS not in needs

    size = tuple(model_input.shape[-2:])

    def record(name: str, tensor: torch.Tensor | None) -> None:
        if name in probe or tensor is None:
            return
        probe[name] = model.state.as_map(name.removesuffix(PRE), tensor, size)
        if stop_early and all(w in probe for w in wanted):
            raise StopForward

    forward, pre = [], []
    for name in wanted:
        path = name[:-len(PRE)] if name.endswith(PRE) else name
        module = find_module(model.module, path)
        if name.endswith(PRE) and isinstance(module, _CLIPPING_ACTIVATIONS):
            # Copied: an in-place ReLU would overwrite the value it was given.
            pre.append((module, lambda _m, inputs, name=name: record(name, inputs[0].clone())))
        else:
            forward.append((module, lambda _m, _inputs, output, name=name: record(name, first_tensor(output))))
    with hooked(forward=forward, pre=pre):
        try:
            logits = model.module(model.preprocessing.normalise(model_input))
            probe[LOGITS] = first_tensor(logits)
        except StopForward:
            pass
    missing = [name for name in wanted if name not in probe]
    if missing:
        layer = missing[0].removesuffix(PRE)
        raise MethodInputError(f"layer '{layer}' did not run in the forward pass, so it cannot be optimised")
    return probe


def side_by_side(pictures: torch.Tensor, gap: int = 4) -> np.ndarray:
    """N x 3 x H x W pictures in 0..1 -> one H x (N*W + gaps) x 3 uint8 row."""
    rgb = np.stack([unit_tensor_to_rgb(p) for p in pictures])
    if len(rgb) == 1:
        return rgb[0]
    return tile_grid(rgb, 1, len(rgb), gap=gap, fill=40)


def adam_stepper(model: LoadedModel, param: ImageParam, objective: Objective, *, lr: float,
                 generator: torch.Generator, transform: Transform | None = None,
                 projections: Sequence[Projection] = ()) -> Callable[[int], Step]:
    """One step of Adam on ``param``: render the picture, transform it, score it, step, constrain
    and project. The step reports the picture its loss was measured on."""
    optimiser = torch.optim.Adam(param.params, lr=lr)
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    needs = objective.needs

    def step(number: int) -> Step:
        optimiser.zero_grad(set_to_none=True)
        picture = param.image()
        due = [p for p in projections if number % p.every == 0]
        if due:
            picture.retain_grad()
        model_input = transform(picture, generator) if transform else picture
        probe = probe_model(model, picture, needs, model_input)
        loss, parts = objective.parts(probe)
        loss.backward()
        optimiser.step()
        param.constrain()
        if due:
            with torch.no_grad():
                centre = mean.to(picture)
                centred = param.image() - centre
                for projection in due:
                    centred = projection.apply(centred, picture.grad)
                param.set_image(centred + centre)
        return Step(loss=float(loss.detach()), terms=parts, picture=picture.detach())

    return step


def optimise(model: LoadedModel, param: ImageParam, objective: Objective, *, steps: int, lr: float,
             generator: torch.Generator, cancel: CancelToken | None = None, transform: Transform | None = None,
             projections: Sequence[Projection] = (), show: Callable[[torch.Tensor], Picture] | None = None,
             recorder: FrameRecorder | None = None, label: str = "step", progress: tuple[float, float] = (0.0, 1.0)):
    """Adam on ``param`` for ``steps`` steps through the one loop; a generator yielding Frame and
    Progress events, returning an ``Optimised``. ``show`` turns the picture into what a Frame
    displays (default: the batch side by side), and every shown picture is offered to
    ``recorder``; ``progress`` is the span of the job's progress bar this run fills."""
    show = show or (lambda picture: Picture(rgb=side_by_side(picture)))
    stepper = adam_stepper(model, param, objective, lr=lr, generator=generator, transform=transform,
                           projections=projections)
    # The frame shows the picture this step's loss was measured on (no extra render).
    trace = yield from optimisation_loop(stepper, steps, show=lambda _number, step: show(step.picture), cancel=cancel,
                                         recorder=recorder, span=progress,
                                         describe=lambda number, _step: f"{label} {number}/{steps}")
    with torch.no_grad():
        final = param.image().detach().clone()
    return Optimised(image=final, losses=trace.losses, first=trace.first, last=trace.last)
