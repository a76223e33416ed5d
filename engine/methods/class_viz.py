"""``class-viz``: the picture a class, a channel or one neuron wants to see.

Gradient ascent on the input (Simonyan et al. 2014): argmax_I score(I) - priors(I), Adam's
steps (``engine.optvis.optimise``) run by the one loop of ``engine.optvis.loop``. The score
is a class's logit, a channel's mean or one unit of a layer; the priors are switchable one
by one so their effect can be seen: L2 (penalty and decay), total variation, a centre bias,
periodic Gaussian blur, and clipping pixels of small norm or small contribution to the mean
colour (Yosinski et al. 2015), plus a grey border, random jitter, zoom and rotation before
every forward (Olah et al. 2017; Lucent's standard transforms), and then several random
crops of the picture scored together (Fel et al. 2023), so every part must show the class
at several scales. The defaults (a 1/f^1.5 spectrum, lr 0.025, border 12, jitter 16, zoom
20%, turns of 15 degrees, 4 crops of 40-100% at 160 px, no blur) were chosen by looking at
the pictures and by how well they keep their class under random crops
(``engine.optvis.robustness``, ``bench/class_viz_quality.py``): a goldfish, a volcano and
a cup of espresso are recognisable, where one view per step and a 1/f spectrum gave
their textures. The picture is raw pixels or a decorrelated Fourier spectrum. With
``--facets N`` the batch holds N pictures pushed apart by a diversity term, to show several
faces of one unit in one run.
"""

from __future__ import annotations

import torch
from PIL import Image

from engine.view.animation import FrameRecorder
from engine.core.errors import MethodInputError
from engine.view.gallery import Tile, render_gallery
from engine.core.jobs import Progress, Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.objectives import LOGITS, class_logit, channel as channel_objective, diversity as diversity_objective, \
    gram_similarity, neuron as neuron_objective, penalty, pre_activation
from engine.optvis.optimise import Projection, optimise, probe_model, side_by_side
from engine.optvis.parameterisation import PARAMETERISATIONS, make_image_param
from engine.optvis.regularisers import centre_bias as centre_bias_penalty, clip_small_contribution, clip_small_norm, gaussian_blur, \
    l2_decay, l2_penalty, total_variation
from engine.optvis.transforms import compose, crops as crops_transform, jitter as jitter_transform, pad as pad_transform, \
    scale_rotate
from engine.methods.params import (JITTER_LIMIT, LAYER, LR_LIMIT, SEED, WEIGHT_LIMIT, MethodSpec, Param, require_channel,
                                   require_position)

OBJECTIVES = ("class", "channel", "neuron")
# The smallest crop's side as a fraction of the padded picture's: small enough that parts
# of the picture must show the class on their own, large enough that each crop still
# holds an object rather than a patch of its texture.
SMALLEST_VIEW = 0.4


def views_scored(p) -> int:
    """How many crops each step scores. Crops cut and move the picture's grid, so a
    neuron's position would land elsewhere in each, and facets would be pushed apart from
    their own crops by the diversity term: those score the whole picture."""
    return p.views if p.objective != "neuron" and p.facets == 1 else 1


def _unit_objective(ctx, objective, layer, channel, at, size):
    """The channel or neuron term, checked against the layer's shape at this size."""
    path = ctx.resolve_layer(layer)
    with torch.no_grad():
        probe = probe_model(ctx.model, torch.full((1, 3, size, size), 0.5, device=ctx.device), (pre_activation(path),))
    shape = tuple(probe[pre_activation(path)].shape)
    if len(shape) != 4:
        raise MethodInputError(f"'{path}' has no channels on a spatial grid (its output is {shape[1:]}); "
                               "pick a convolution-stage layer, or --objective class")
    if channel is None:
        raise MethodInputError(f"the {objective} objective needs one channel: give --channel (0-{shape[1] - 1})")
    require_channel("channel", channel, shape[1], path)
    if objective == "channel":
        return path, channel_objective(path, channel), f"channel {channel} of {path}", None
    grid = tuple(shape[2:])
    y, x = (grid[0] // 2, grid[1] // 2) if at is None else require_position("at", at, grid, path)
    return path, neuron_objective(path, channel, y, x), f"channel {channel} of {path} at {y},{x}", (y, x)


def run(ctx, p):
    objective, channel, steps, facets, param = p.objective, p.channel, p.steps, p.facets, p.param
    size = p.size or ctx.model.preprocessing.size
    mean = torch.tensor(ctx.model.preprocessing.mean, device=ctx.device).view(1, 3, 1, 1)
    resolved, path, position = None, None, None
    if objective == "class":
        if p.target is None and ctx.image is None:
            raise MethodInputError("which class? give --target (an index or a label such as goldfish), "
                                   "or open an image to visualise its top-1 class")
        resolved = ctx.resolve_target(p.target)
        goal, what = class_logit(resolved["index"]), f"class '{resolved['label']}'"
    else:
        path, goal, what, position = _unit_objective(ctx, objective, p.layer, channel, p.at, size)

    # Priors as loss terms, each averaged over the picture's pixels so a weight means the
    # same at every size; the centred picture has the model's mean colour at 0.
    pixels = facets * size * size
    loss = goal
    if p.l2 > 0:
        loss = loss + (p.l2 / pixels) * penalty("l2", lambda x: l2_penalty(x - mean))
    if p.tv > 0:
        loss = loss + (p.tv / pixels) * penalty("tv", total_variation)
    if p.centre_bias > 0:
        loss = loss + (p.centre_bias / pixels) * penalty("centre", lambda x: centre_bias_penalty(x - mean))
    spread_layer = ctx.resolve_layer(p.diversity_layer) if facets > 1 else None
    if spread_layer and p.diversity > 0:
        loss = loss + p.diversity * diversity_objective(spread_layer)

    projections = []
    if p.decay > 0:
        projections.append(Projection("decay", lambda x, _g: l2_decay(x, p.decay)))
    if p.blur_every > 0 and p.blur_sigma > 0:
        projections.append(Projection("blur", lambda x, _g: gaussian_blur(x, p.blur_sigma), every=p.blur_every))
    if p.clip_norm > 0:
        projections.append(Projection("clip norm", lambda x, _g: clip_small_norm(x, p.clip_norm)))
    if p.clip_contribution > 0:
        projections.append(Projection("clip contribution",
                                      lambda x, g: clip_small_contribution(x, g, p.clip_contribution)))

    views = views_scored(p)
    generator = ctx.generator(p.seed)
    image = make_image_param(param, (facets, 3, size, size), generator, device=ctx.device,
                             decay_power=p.spectrum_decay)
    recorder = FrameRecorder()
    yield Progress(0.0, f"optimising for {what}")
    optimised = yield from optimise(
        ctx.model, image, loss, steps=steps, lr=p.lr, generator=generator, cancel=ctx.cancel,
        transform=compose(pad_transform(p.pad), jitter_transform(p.jitter), scale_rotate(p.scale, p.rotate),
                          crops_transform(views, SMALLEST_VIEW, p.view_size)),
        projections=projections, recorder=recorder, label="step")

    final = optimised.image
    if float(final.std()) < 1e-3:
        raise MethodInputError("the optimisation produced a flat picture; raise --lr or --steps, or lower the priors")
    metrics = {"loss_first": optimised.losses[0], "loss_last": optimised.losses[-1], "steps": steps,
               "size": size, "facets": facets, "terms_first": optimised.first, "terms_last": optimised.last}
    captions = _measure(ctx, final, objective, resolved, path, channel, position, metrics)
    if spread_layer:
        with torch.no_grad():
            spread = probe_model(ctx.model, final, (spread_layer,))[spread_layer]
        metrics["facet_similarity"] = float(gram_similarity(spread))

    tiles = [Tile(Image.fromarray(unit_tensor_to_rgb(picture)), caption=caption) for picture, caption in zip(final, captions)]
    mosaic, _regions = render_gallery([("", tiles)], tile=size, caption_lines=1)
    recorder.finish(side_by_side(final))
    array = final.permute(0, 2, 3, 1).cpu().numpy()
    p.record(target=resolved["index"] if resolved else None, layer=path, channel=channel if path else None,
             at=position, size=size, diversity_layer=spread_layer, views=views)
    note = f"{what}: {steps} steps, {param} parameterisation" + (f", {facets} facets" if facets > 1 else "")
    return Result(display=Picture(rgb=mosaic, note=note), array=array[0] if facets == 1 else array,
                  metrics=metrics, layer=path, target=resolved, frames=recorder.frames)


def _measure(ctx, final, objective, resolved, path, channel, position, metrics) -> list[str]:
    """Score the finished pictures as the model sees them (no transforms): the class's
    probability, or the unit's activation. Returns one caption per picture."""
    with torch.no_grad():
        if objective == "class":
            logits = probe_model(ctx.model, final, (LOGITS,))[LOGITS]
            probability = torch.softmax(logits, dim=1)[:, resolved["index"]]
            top1 = logits.argmax(dim=1)
            metrics.update(probability=[round(float(p), 6) for p in probability],
                           logit=[round(float(v), 4) for v in logits[:, resolved["index"]]],
                           top1=[ctx.model.labels[int(i)] for i in top1])
            return [f"{resolved['label']} {float(p):.0%}" for p in probability]
        activation = probe_model(ctx.model, final, (path,))[path][:, channel]
        values = activation.mean(dim=(1, 2)) if position is None else activation[:, position[0], position[1]]
        metrics["activation"] = [round(float(v), 6) for v in values]
        return [f"{float(v):.3g}" for v in values]


SPEC = MethodSpec(
    id="class-viz",
    title="Class visualisation",
    summary="Optimise a picture to excite a class, a channel or one neuron, under switchable image priors.",
    params=(
        Param("objective", "choice", "class", "what to excite: a class's logit, a channel's mean, or one neuron",
              choices=OBJECTIVES),
        Param("target", "target", None, "class index or label (default: the image's top-1 class)"),
        LAYER,
        Param("channel", "channel", 0, "channel of --layer (channel and neuron objectives)", minimum=0),
        Param("at", "position", None, "neuron position Y,X on the layer's grid (default: the centre)"),
        Param("param", "choice", "fourier", "pixels, or a decorrelated Fourier spectrum (Olah et al. 2017)",
              choices=PARAMETERISATIONS),
        Param("spectrum_decay", "float", 1.5,
              "Fourier picture: frequency f starts and moves as 1/f to this power (higher: smoother)",
              minimum=0.0, maximum=4.0),
        Param("steps", "int", 64, "optimisation steps", minimum=1, maximum=10000),
        Param("lr", "float", 0.025, "Adam's step size", minimum=0.0, maximum=LR_LIMIT),
        Param("size", "int", 0, "side of the square picture in pixels (0: the model's input size)", minimum=0,
              maximum=1024, special="model's size"),
        Param("facets", "int", 1, "how many diverse pictures to make at once, shown side by side", minimum=1, maximum=8),
        Param("diversity", "float", 10.0, "weight of the term that keeps the facets apart (raise it if they look alike)",
              minimum=0.0, maximum=WEIGHT_LIMIT),
        Param("diversity_layer", "layer", "middle", "layer whose Gram matrices the facets must differ in"),
        Param("l2", "float", 0.0, "L2 penalty weight: lambda * ||I - mean||^2 per pixel (0: off)", minimum=0.0,
              maximum=WEIGHT_LIMIT),
        Param("decay", "float", 0.0, "L2 decay: shrink the picture towards the mean colour by this fraction each step",
              minimum=0.0, maximum=1.0),
        Param("tv", "float", 0.0, "total variation weight, per pixel (0: off)", minimum=0.0, maximum=WEIGHT_LIMIT),
        Param("centre_bias", "float", 0.0, "weight of an L2 penalty that grows towards the edges (0: off)", minimum=0.0,
              maximum=WEIGHT_LIMIT),
        Param("blur_every", "int", 0, "blur the picture every N steps (0: off)", minimum=0, maximum=10000),
        Param("blur_sigma", "float", 0.5, "the blur's Gaussian sigma in pixels", minimum=0.0, maximum=20.0),
        Param("clip_norm", "float", 0.0, "percentile: grey out pixels whose colour norm is below it (0: off)",
              minimum=0.0, maximum=100.0),
        Param("clip_contribution", "float", 0.0,
              "percentile: grey out pixels whose |pixel x gradient| is below it (0: off)", minimum=0.0, maximum=100.0),
        Param("pad", "int", 12, "grey border in pixels added before the shifts, zooms and turns (0: off)", minimum=0,
              maximum=JITTER_LIMIT),
        Param("jitter", "int", 16, "random shift in pixels before each step (0: off)", minimum=0, maximum=JITTER_LIMIT),
        Param("scale", "float", 0.2, "random zoom of up to this fraction before each step (0: off)", minimum=0.0,
              maximum=0.9),
        Param("rotate", "float", 15.0, "random rotation of up to this many degrees before each step (0: off)",
              minimum=0.0, maximum=180.0),
        Param("views", "int", 4, "random crops (40-100% of the side) scored together at each step; 1: the whole "
              "picture only (the neuron objective and facets always use 1)", minimum=1, maximum=16),
        Param("view_size", "int", 160, "side the crops are resized to before the model (0: the picture's size)",
              minimum=0, maximum=1024, special="picture's size"),
        SEED,
    ),
    run=run,
    needs_image=False,
    streams_frames=True,
)
