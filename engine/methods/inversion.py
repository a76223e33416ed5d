"""``inversion``: what a layer's features still know about the picture.

Feature inversion (Mahendran & Vedaldi 2015): starting from noise, find the picture x
whose features at layer l match the photo's,

    min_x ||phi_l(x) - phi_l(x0)||^2 / ||phi_l(x0)||^2 + lambda * TV_beta(x) / (H W),

with Adam's steps (``engine.optvis.optimise``) run by the one loop of ``engine.optvis.loop``.
The strip mode inverts several layers in one job and shows them beside the photo: shallow
layers give the photo back almost exactly, deep ones keep the layout and lose colour and
texture. PSNR against the photo (at the same size) puts a number on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from engine.view.animation import FrameRecorder
from engine.core.errors import MethodInputError
from engine.view.gallery import Tile, render_gallery
from engine.core.jobs import Progress, Result
from engine.view.display import Picture
from engine.anatomy.layers import DEPTH_KEYWORDS
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.objectives import feature_match, penalty
from engine.optvis.optimise import activation_clip, optimise, probe_model, side_by_side
from engine.optvis.parameterisation import PARAMETERISATIONS, make_image_param
from engine.optvis.regularisers import total_variation
from engine.optvis.transforms import jitter as jitter_transform
from engine.methods.params import JITTER_LIMIT, LAYER, LR_LIMIT, SEED, WEIGHT_LIMIT, MethodSpec, Param

AUTO_STRIP = ("early", "middle", "late")
BLANK = 40 / 255  # the gallery's background, for strip slots not yet inverted


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two 0..1 pictures: 10 log10(1 / MSE)."""
    mse = float((image - reference).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def run(ctx, p):
    image = ctx.require_image()
    tv, beta, steps, param = p.tv, p.beta, p.steps, p.param
    original = ctx.model.preprocessing.to_unit_tensor(image.image, p.size or None).to(ctx.device)
    height, width = original.shape[-2:]
    names = list(AUTO_STRIP if p.strip == ("auto",) else p.strip or (p.layer,))
    paths = [ctx.resolve_layer(name) for name in names]
    if len(set(paths)) < len(paths):
        raise MethodInputError(f"--strip names one layer twice ({', '.join(paths)}); give each layer once")
    labels = [name if name in DEPTH_KEYWORDS else path for name, path in zip(names, paths)]

    generator = ctx.generator(p.seed)
    recorder = FrameRecorder()
    slots = [original] + [torch.full_like(original, BLANK) for _ in paths]
    transform = jitter_transform(p.jitter) if p.jitter else None
    inverted = []
    for index, path in enumerate(paths):
        yield Progress(index / len(paths), f"inverting {path}")
        with torch.no_grad():
            target = probe_model(ctx.model, original, (path,))[path]
        if target.dim() < 2 or not target.abs().sum() > 0:
            raise MethodInputError(f"'{path}' gives all-zero features for this picture, so there is nothing to invert; "
                                   "pick another layer")
        smoothness = penalty("tv", lambda x: total_variation(x, beta))
        objective = feature_match(path, target, activation_clip(ctx.model, path)) + (tv / (height * width)) * smoothness
        picture = make_image_param(param, tuple(original.shape), generator, device=ctx.device)

        def show(current, index=index):
            slots[index + 1] = current
            return Picture(rgb=side_by_side(torch.cat(slots)))

        optimised = yield from optimise(
            ctx.model, picture, objective, steps=steps, lr=p.lr, generator=generator, cancel=ctx.cancel,
            transform=transform, show=show, recorder=recorder, label=f"{labels[index]}: step",
            progress=(index / len(paths), (index + 1) / len(paths)))
        final = optimised.image
        slots[index + 1] = final
        with torch.no_grad():
            feature_loss = float(feature_match(path, target)({path: probe_model(ctx.model, final, (path,))[path]}))
        inverted.append({"layer": path, "psnr": round(psnr(final, original), 4), "feature_loss": feature_loss,
                         "loss_first": optimised.losses[0], "loss_last": optimised.losses[-1], "image": final})

    tiles = [Tile(Image.fromarray(unit_tensor_to_rgb(original)), caption="original")]
    tiles += [Tile(Image.fromarray(unit_tensor_to_rgb(entry["image"])),
                   caption=f"{label} {entry['psnr']:.1f}dB {entry['feature_loss']:.2f}")
              for label, entry in zip(labels, inverted)]
    mosaic, _regions = render_gallery([("", tiles)], tile=max(height, width))
    recorder.finish(side_by_side(torch.cat(slots)))

    per_layer = [{key: value for key, value in entry.items() if key != "image"} for entry in inverted]
    first = per_layer[0]
    metrics = {"psnr": first["psnr"], "feature_loss": first["feature_loss"], "loss_first": first["loss_first"],
               "loss_last": first["loss_last"], "steps": steps, "size": [int(width), int(height)]}
    if len(per_layer) > 1:
        metrics["layers"] = per_layer
    note = "; ".join(f"{e['layer']}: PSNR {e['psnr']:.1f} dB, feature loss {e['feature_loss']:.3f}" for e in per_layer)
    note = f"inverted from noise ({param}, {steps} steps, TV {tv}, beta {beta}). {note}"
    arrays = np.stack([entry["image"][0].permute(1, 2, 0).cpu().numpy() for entry in inverted])
    p.record(layer=paths[0] if len(paths) == 1 else None, strip=paths if len(paths) > 1 else None)
    return Result(display=Picture(rgb=mosaic, note=note), array=arrays[0] if len(paths) == 1 else arrays,
                  metrics=metrics, layer=",".join(paths), frames=recorder.frames)


SPEC = MethodSpec(
    id="inversion",
    title="Feature inversion",
    summary="Reconstruct the picture from one layer's features, from noise (Mahendran & Vedaldi 2015).",
    params=(
        LAYER,
        Param("strip", "layers", None, "invert several layers side by side: LAYER,LAYER,... or 'auto' "
                                       "(early, middle, late)"),
        Param("tv", "float", 1.0, "lambda: weight of TV_beta per pixel (0: off)", minimum=0.0, maximum=WEIGHT_LIMIT),
        Param("beta", "float", 2.0, "the TV exponent beta; below 2 keeps sharper edges", minimum=1.0, maximum=4.0),
        Param("steps", "int", 96, "optimisation steps per layer", minimum=1, maximum=10000),
        Param("lr", "float", 0.05, "Adam's step size", minimum=0.0, maximum=LR_LIMIT),
        Param("param", "choice", "fourier", "pixels, or a decorrelated Fourier spectrum", choices=PARAMETERISATIONS),
        Param("size", "int", 0, "shorter side in pixels (0: the model's input size)", minimum=0, maximum=1024,
              special="model's size"),
        Param("jitter", "int", 0, "random shift in pixels before each step (0: off)", minimum=0, maximum=JITTER_LIMIT),
        SEED,
    ),
    run=run,
    streams_frames=True,
)
