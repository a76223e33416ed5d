"""``texture``: texture synthesis, neural (Gatys et al. 2015) or classic (Efros & Leung 1999).

Neural: start from seeded noise and change its pixels until the Gram matrices of its
features match the sample's at several layers. Grams keep which features occur together
and drop where they occur, so the result has the sample's stuff without its layout, at
any size (``gram.py`` normalises by the map's area). Shallow layers see a few pixels and
reproduce colour and grain; deep ones see whole bricks or pebbles. ``--strip`` makes that
visible: one synthesis per layer, each matching that layer alone, side by side with the
sample and captioned with the layer's receptive field.

Classic (``--classic``): Efros & Leung's non-parametric sampling (``engine.style.efros_leung``),
which copies pixels from the sample one at a time, at small sizes.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine.view.animation import FrameRecorder
from engine.style.efros_leung import synthesise
from engine.core.errors import MethodInputError
from engine.style.activation_transforms import DEFAULT_TEMPERATURE, TRANSFORMS
from engine.view.gallery import Tile, render_gallery
from engine.core.jobs import Frame, Progress, Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.loop import optimisation_loop
from engine.style.perceptual import (DEFAULT_LR, OPTIMIZERS, Features, PerceptualLoss, PixelDescent, choose_transform,
                                     gram_targets, layer_list, perceptual_layers, seeded_noise)
from engine.methods.params import LR_LIMIT, SEED, TEMPERATURE_LIMIT, MethodSpec, Param, ParamError

CLASSIC_SAMPLE = 48  # default shorter side of the sample for --classic, in pixels
CLASSIC_SIZE = 64  # default output side for --classic
CLASSIC_MAX = 160  # --classic grows pixel by pixel; beyond this it takes minutes
STRIP_TILE = 160  # pixels per picture in the --strip gallery


def check(p) -> None:
    if not p.classic:
        return
    if p.window % 2 == 0:
        raise ParamError("window", f"must be odd so that it has a centre pixel, not {p.window}")
    side, sample_side = p.size or CLASSIC_SIZE, p.sample_size or CLASSIC_SAMPLE
    if side > CLASSIC_MAX or sample_side > CLASSIC_MAX:
        raise ParamError("size" if side > CLASSIC_MAX else "sample_size",
                         f"is at most {CLASSIC_MAX} px with --classic, which copies one pixel at a time",
                         f"--classic copies one pixel at a time: keep --size and --sample-size at most "
                         f"{CLASSIC_MAX} px (got {side} and {sample_side})")


def run(ctx, p):
    image = ctx.require_image()
    if p.classic:
        return (yield from _classic(ctx, image, p))
    steps, optimizer, strip = p.steps, p.optimizer, p.strip
    known = perceptual_layers(ctx.model, ctx.output_shapes())
    paths = layer_list(p.layers, known.texture, ctx.resolve_layer, "--layers")
    transform_name, transform = choose_transform(p.feature_transform, known, p.temperature)
    sample = ctx.model.preprocessing.to_unit_tensor(image.image, p.sample_size or None).to(ctx.device)
    shape = (p.size, p.size) if p.size else tuple(sample.shape[-2:])
    # One noise picture for every synthesis, so the strip's pictures differ only by layer.
    noise = seeded_noise((1, 3, *shape), ctx.generator(p.seed)).to(ctx.device)
    groups = [[path] for path in paths] if strip else [paths]
    recorder = FrameRecorder()
    results, firsts, lasts = [], [], []
    for index, group in enumerate(groups):
        features = Features(ctx.model, group, transform)
        loss = PerceptualLoss(features, style=gram_targets(features.targets(sample)))
        pixels = noise.clone().requires_grad_(True)
        label = f"layer {index + 1}/{len(groups)} ({group[0]}), " if strip else ""
        descent = PixelDescent(pixels, loss, optimizer, p.lr)

        def step(number, descent=descent, layer=group[0] if strip else "all"):
            report = descent.step(number)
            report.metrics["layer"] = layer
            return report

        def show(number, _step, pixels=pixels, label=label):
            return Picture(rgb=unit_tensor_to_rgb(pixels.detach()), note=f"{label}step {number}/{steps}")

        trace = yield from optimisation_loop(
            step, steps, show=show, cancel=ctx.cancel, recorder=recorder, keep_best=descent, offset=index * steps,
            span=(index / len(groups), (index + 1) / len(groups)),
            describe=lambda number, _step, label=label: f"{label}step {number}/{steps}")
        results.append(pixels.detach()[0].permute(1, 2, 0).cpu().numpy())
        firsts.append(trace.losses[0])
        lasts.append(trace.last_loss)

    p.record(layers=paths, size=list(shape[::-1]), sample_size=list(sample.shape[-1:-3:-1]),
             lr=p.lr or DEFAULT_LR[optimizer], feature_transform=transform_name)
    metrics = {"loss_first": firsts[0] if not strip else firsts, "loss_last": lasts[0] if not strip else lasts,
               "steps": steps, "size": list(shape[::-1]), "layers": paths, "feature_transform": transform_name}
    if not strip:
        rgb = (np.clip(results[0], 0, 1) * 255 + 0.5).astype(np.uint8)
        note = f"texture from {len(paths)} layers; Gram loss {firsts[0]:.3g} -> {lasts[0]:.3g}"
        return Result(display=Picture(rgb=rgb, note=note), array=results[0], metrics=metrics,
                      frames=recorder.finish(rgb))
    mosaic, note = _strip(ctx, sample, results, paths)
    return Result(display=Picture(rgb=mosaic, note=note), array=np.stack(results), metrics=metrics,
                  frames=recorder.finish())


def _strip(ctx, sample: torch.Tensor, results: list[np.ndarray], paths: list[str]) -> tuple[np.ndarray, str]:
    """The sample, then one synthesis per layer, captioned with the layer's receptive field."""
    tree = ctx.model.state.layer_tree(tuple(sample.shape[-2:]))
    tiles = [Tile(Image.fromarray(unit_tensor_to_rgb(sample)), caption="sample")]
    names = []
    for index, (path, result) in enumerate(zip(paths, results), start=1):
        node = tree.find(path)
        field = node.receptive_field if node is not None else None
        scale = f"RF {field.size[0]:g} px" if field is not None else "RF global"
        tiles.append(Tile(Image.fromarray((np.clip(result, 0, 1) * 255 + 0.5).astype(np.uint8)), caption=f"{index}: {scale}"))
        names.append(f"{index} {path}")
    mosaic, _regions = render_gallery([("", tiles)], tile=STRIP_TILE)
    return mosaic, "one layer each, shallow to deep: " + ", ".join(names)


def _classic(ctx, image, p):
    sample_side = p.sample_size or CLASSIC_SAMPLE
    side = p.size or CLASSIC_SIZE
    window = p.window
    sample = np.asarray(ctx.model.preprocessing.resize(image.image, sample_side), dtype=np.uint8)
    if min(sample.shape[:2]) < window:
        raise MethodInputError(f"--window {window} is larger than the sample ({sample.shape[1]}x{sample.shape[0]} px); "
                               "use a smaller window or a larger --sample-size")
    rng = np.random.default_rng(p.seed)
    recorder = FrameRecorder()
    growth = synthesise(sample, (side, side), window, rng, report_every=max(64, side * side // 64))
    step = 0
    while True:
        ctx.cancel.check()
        try:
            done, total, picture, _filled = next(growth)
        except StopIteration as stop:
            texture = stop.value
            break
        step += 1
        recorder.add(picture)
        yield Frame(Picture(rgb=picture.copy(), note=f"{done}/{total} pixels"), step=step, metrics={"filled": done / total})
        yield Progress(done / total, f"{done}/{total} pixels")
    metrics = {"size": [side, side], "sample_size": [sample.shape[1], sample.shape[0]], "window": window,
               "pixels": side * side}
    p.record(size=side, sample_size=sample_side)
    return Result(display=Picture(rgb=texture, note=f"Efros-Leung, window {window}, from a "
                                                    f"{sample.shape[1]}x{sample.shape[0]} sample"),
                  array=texture.astype(np.float32) / 255.0, metrics=metrics, frames=recorder.finish(texture))


SPEC = MethodSpec(
    id="texture",
    title="Texture synthesis",
    summary="Synthesise a texture like the image: match its Gram matrices from noise (Gatys 2015), "
            "or copy pixels by neighbourhood (--classic, Efros & Leung 1999).",
    params=(
        Param("layers", "layers", None, "Gram layers, comma-separated paths or early/middle/late (empty: per model; "
                                   "VGG: relu1_1, pool1-pool4 as Gatys; EfficientNet-Lite0: a ReLU6 at each of 4 scales)"),
        Param("size", "int", 0, "output side in pixels, square; may exceed the sample (0: the sample's size; "
                                "with --classic, 64)", minimum=0, maximum=2048, special="sample's size"),
        Param("sample_size", "int", 0, "shorter side the sample is scaled to (0: the model's input size; with "
                                       "--classic, 48)", minimum=0, maximum=2048, special="model's size"),
        Param("steps", "int", 100, "optimisation steps (per layer with --strip)", minimum=1, maximum=5000),
        Param("optimizer", "choice", "lbfgs", "L-BFGS (as Gatys) or Adam", choices=OPTIMIZERS),
        Param("lr", "float", 0.0, "step size (0: 1 for L-BFGS, 0.02 for Adam)", minimum=0.0, maximum=LR_LIMIT,
              special="per optimizer"),
        Param("feature_transform", "choice", "none", "applied to features before the Grams: none, or Wang et al. "
                                                     "2021's softmax (auto: as the style method chooses per model)",
              choices=("auto", *TRANSFORMS)),
        Param("temperature", "float", DEFAULT_TEMPERATURE, "softmax temperature", minimum=1e-3,
              maximum=TEMPERATURE_LIMIT),
        Param("strip", "bool", False, "synthesise from each layer alone and show them beside the sample"),
        Param("classic", "bool", False, "Efros & Leung's non-parametric synthesis instead (small sizes)"),
        Param("window", "int", 11, "--classic: neighbourhood window in pixels (odd)", minimum=3, maximum=31),
        SEED,
    ),
    run=run,
    streams_frames=True,
    check=check,
)
