"""``dream``: DeepDream. Amplify whatever a layer already sees in the image.

At each step the layer's gradient is set equal to its activation (the image ascends
0.5 * ||a||^2), the image is shifted by a random jitter before the forward and shifted
back after, and the step is normalised by the gradient's mean magnitude so one learning
rate suits every layer. Octaves run from small to large; the detail dreamt at one octave
is carried up to the next, which is what gives the picture structure at several scales.
"""

from __future__ import annotations

import torch

from ..hooks import forward_to
from ..jobs import Display, Frame, Progress, Result
from ..models.preprocessing import unit_tensor_to_rgb
from ..transforms import random_shift, resize, roll
from .base import LAYER, SEED, MethodSpec, Param


def _layer_output(ctx, layer: str, unit: torch.Tensor) -> torch.Tensor:
    return forward_to(ctx.model.module, layer, ctx.model.preprocessing.normalise(unit))


def run(ctx, layer="middle", steps=10, lr=0.01, octaves=3, octave_scale=1.4, jitter=16, size=0, seed=0):
    image = ctx.require_image()
    path = ctx.resolve_layer(layer)
    generator = ctx.generator(seed)
    base = ctx.model.preprocessing.to_unit_tensor(image.image, size or None).to(ctx.device)
    full_size = tuple(base.shape[-2:])
    pyramid = [base]
    for octave in range(1, octaves):
        factor = octave_scale ** octave
        pyramid.append(resize(base, (max(1, round(full_size[0] / factor)), max(1, round(full_size[1] / factor)))))
    pyramid.reverse()  # smallest first

    with torch.no_grad():
        norm_first = float(_layer_output(ctx, path, base).norm())
    total = octaves * steps
    done = 0
    losses: list[float] = []
    detail = torch.zeros_like(pyramid[0])
    dreamt = base
    for octave, octave_base in enumerate(pyramid):
        detail = resize(detail, tuple(octave_base.shape[-2:]))
        dreamt = (octave_base + detail).clamp(0, 1)
        for step in range(steps):
            ctx.cancel.check()
            shift = random_shift(generator, jitter)
            pixels = roll(dreamt, shift).requires_grad_(True)
            activation = _layer_output(ctx, path, pixels)
            loss = 0.5 * activation.pow(2).sum()
            gradient, = torch.autograd.grad(loss, pixels)
            gradient = roll(gradient, (-shift[0], -shift[1]))
            with torch.no_grad():
                dreamt = (dreamt + lr * gradient / (gradient.abs().mean() + 1e-12)).clamp(0, 1)
            losses.append(loss.item())
            done += 1
            metrics = {"loss": losses[-1], "octave": octave + 1, "norm": float(activation.detach().norm())}
            yield Frame(Display(rgb=unit_tensor_to_rgb(resize(dreamt, full_size))), step=done, metrics=metrics)
            yield Progress(done / total, f"octave {octave + 1}/{octaves}, step {step + 1}/{steps}")
        detail = dreamt - octave_base

    with torch.no_grad():
        norm_last = float(_layer_output(ctx, path, dreamt).norm())
    result = dreamt[0].permute(1, 2, 0).cpu().numpy()
    metrics = {"loss_first": losses[0] if losses else 0.0, "loss_last": losses[-1] if losses else 0.0,
               "norm_first": norm_first, "norm_last": norm_last, "steps": done, "size": [full_size[1], full_size[0]]}
    params = {"layer": path, "steps": steps, "lr": lr, "octaves": octaves, "octave_scale": octave_scale,
              "jitter": jitter, "size": size, "seed": seed}
    return Result(display=Display(rgb=unit_tensor_to_rgb(dreamt), note=f"DeepDream on {path}"), array=result,
                  layer=path, metrics=metrics, params=params)


SPEC = MethodSpec(
    id="dream",
    title="DeepDream",
    summary="Amplify what a layer sees: ascend 0.5*||activation||^2 with jitter and octaves.",
    params=(
        LAYER,
        Param("steps", "int", 10, "gradient steps per octave", minimum=1, maximum=1000),
        Param("lr", "float", 0.01, "step size in 0..1 pixel units, after normalising the gradient", minimum=0.0),
        Param("octaves", "int", 3, "number of scales, smallest first", minimum=1, maximum=8),
        Param("octave_scale", "float", 1.4, "size ratio between octaves", minimum=1.0, maximum=3.0),
        Param("jitter", "int", 16, "random shift in pixels before each step", minimum=0),
        Param("size", "int", 0, "shorter side of the dreamt image in pixels (0: the model's input size)", minimum=0, maximum=2048,
              special="model's size"),
        SEED,
    ),
    run=run,
    streams_frames=True,
)
