"""``style``: neural style transfer (Gatys, Ecker & Bethge 2016).

The picture starts as the content image (or noise) and its pixels are changed to minimise

    content_weight * L_content + style_weight * L_style + tv_weight * L_tv

where L_content compares its features with the content image's at the content layers,
L_style compares its Gram matrices with the style images' at the style layers (several
styles blend their Grams with ``--style-weights``), and L_tv keeps neighbouring pixels
alike (``engine.style.perceptual`` defines each; both feature losses are relative to their
targets' size, so the default weights suit every backbone).

``--preserve-color`` is Gatys et al.'s luminance-only transfer ("Preserving Color in
Neural Artistic Style Transfer", 2016): the network sees only luminance (the style's
matched to the content's mean and spread), the optimised luminance is then joined with
the content's chroma, in YIQ.

``--feature-transform softmax`` applies Wang et al.'s softmax smoothing
(``engine.style.activation_transforms``) before both losses: plain Grams of a residual network's
block outputs stylise poorly. "auto" uses it on networks other than VGG and the bundled
EfficientNet-Lite0, whose default layers are ReLU6 activations that plain Grams stylise
well (``engine.style.perceptual`` has the measurements).
"""

from __future__ import annotations

import numpy as np
import torch

from engine.view.animation import FrameRecorder
from engine.core.errors import ConvScopeError, MethodInputError
from engine.style.activation_transforms import DEFAULT_TEMPERATURE, TRANSFORMS
from engine.data.images import load_image
from engine.style.style_library import DEFAULT_STYLE, style_picture
from engine.core.jobs import Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.loop import optimisation_loop
from engine.style.perceptual import (DEFAULT_LR, OPTIMIZERS, Features, PerceptualLoss, PixelDescent, blend_grams,
                                     choose_transform, gram_targets, layer_list, perceptual_layers, seeded_noise)
from engine.methods.params import LR_LIMIT, SEED, TEMPERATURE_LIMIT, WEIGHT_LIMIT, MethodSpec, Param, ParamError

# RGB -> YIQ (NTSC 1953, as skimage.color.rgb2yiq): Y is luminance, I and Q chroma.
YIQ_FROM_RGB = torch.tensor([[0.299, 0.587, 0.114],
                             [0.59590059, -0.27455667, -0.32134392],
                             [0.21153661, -0.52273617, 0.31119955]], dtype=torch.float64)
RGB_FROM_YIQ = torch.linalg.inv(YIQ_FROM_RGB)


def rgb_to_yiq(unit: torch.Tensor) -> torch.Tensor:
    return torch.einsum("yc,nchw->nyhw", YIQ_FROM_RGB.to(unit), unit)


def yiq_to_rgb(yiq: torch.Tensor) -> torch.Tensor:
    return torch.einsum("cy,nyhw->nchw", RGB_FROM_YIQ.to(yiq), yiq)


def matched_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style's luminance (N x 1 x H x W) shifted and scaled to the content's mean and std."""
    y_style, y_content = rgb_to_yiq(style)[:, :1], rgb_to_yiq(content)[:, :1]
    spread = y_content.std() / y_style.std().clamp(min=1e-6)
    return ((y_style - y_style.mean()) * spread + y_content.mean()).clamp(0, 1)


def _named_terms(total: torch.Tensor, parts: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Each part as "<part>_loss" (0 when its weight is 0), as the loss plot and fast-style-train
    name them; with the total, "loss", they are what each frame carries."""
    return total, {f"{part}_loss": parts.get(part, 0.0) for part in ("content", "style", "tv")}


def check(p) -> None:
    if p.style_weights is not None and len(p.style_weights) != len(p.style):
        raise ParamError("style_weights", f"gives {len(p.style_weights)} weights for {len(p.style)} style "
                                          f"picture{'s' if len(p.style) != 1 else ''}; "
                                          "give one weight per picture")


def run(ctx, p):
    image = ctx.require_image()
    paths = [style_picture(path) for path in p.style]
    weights = list(p.style_weights or [1.0] * len(paths))
    steps, optimizer, preserve_color = p.steps, p.optimizer, p.preserve_color
    styles = []
    for path in paths:
        try:
            styles.append(load_image(path))
        except ConvScopeError as error:
            raise MethodInputError(f"--style: {error}") from None

    known = perceptual_layers(ctx.model, ctx.output_shapes())
    content_paths = layer_list(p.content_layers, known.content, ctx.resolve_layer, "--content-layers")
    style_paths = layer_list(p.style_layers, known.style, ctx.resolve_layer, "--style-layers")
    transform_name, transform = choose_transform(p.feature_transform, known, p.temperature)
    features = Features(ctx.model, content_paths + style_paths, transform)

    preprocessing = ctx.model.preprocessing
    content = preprocessing.to_unit_tensor(image.image, p.size or None).to(ctx.device)
    style_side = max(16, round(min(content.shape[-2:]) * p.style_scale))
    style_units = [preprocessing.to_unit_tensor(s.image, style_side).to(ctx.device) for s in styles]
    if preserve_color:
        chroma = rgb_to_yiq(content)[:, 1:]
        content_y = rgb_to_yiq(content)[:, :1]
        network_content = content_y.expand(-1, 3, -1, -1)
        style_units = [matched_luminance(unit, content).expand(-1, 3, -1, -1) for unit in style_units]
    else:
        network_content = content

    content_targets = {path: value for path, value in features.targets(network_content).items() if path in content_paths}
    style_grams = []
    for unit in style_units:
        ctx.cancel.check()
        grams = gram_targets({path: value for path, value in features.targets(unit).items() if path in style_paths})
        style_grams.append(grams)
    loss = PerceptualLoss(features, content=content_targets, style=blend_grams(style_grams, weights),
                          content_weight=p.content_weight, style_weight=p.style_weight, tv_weight=p.tv_weight)

    if p.init == "content":
        start = content_y if preserve_color else content
    else:
        channels = 1 if preserve_color else 3
        start = seeded_noise((1, channels, *content.shape[-2:]), ctx.generator(p.seed)).to(ctx.device)
    pixels = start.clone().requires_grad_(True)

    def as_network_input(picture: torch.Tensor) -> torch.Tensor:
        return picture.expand(-1, 3, -1, -1) if preserve_color else picture

    def as_rgb(picture: torch.Tensor) -> torch.Tensor:
        """The picture to show: with --preserve-color, the luminance joined with the content's chroma."""
        picture = picture.detach()
        return yiq_to_rgb(torch.cat([picture, chroma], dim=1)).clamp(0, 1) if preserve_color else picture

    def show(_number, _step):
        return Picture(rgb=unit_tensor_to_rgb(as_rgb(pixels)))

    recorder = FrameRecorder()
    descent = PixelDescent(pixels, lambda picture: _named_terms(*loss(as_network_input(picture))), optimizer, p.lr)
    trace = yield from optimisation_loop(descent.step, steps, show=show, cancel=ctx.cancel, recorder=recorder,
                                         keep_best=descent)
    first = {"loss": trace.losses[0], **trace.first}
    final = {"loss": trace.last_loss, **trace.last}

    result = as_rgb(pixels)
    rgb = unit_tensor_to_rgb(result)
    blend = [w / sum(weights) for w in weights]
    metrics = {**{f"{name}_first": value for name, value in first.items()},
               **{f"{name}_last": value for name, value in final.items()},
               "steps": steps, "size": [content.shape[-1], content.shape[-2]],
               "style_size": [[unit.shape[-1], unit.shape[-2]] for unit in style_units],
               "feature_transform": transform_name, "content_layers": content_paths, "style_layers": style_paths,
               "style_weights": blend}
    p.record(style_weights=blend, content_layers=content_paths, style_layers=style_paths,
             lr=p.lr or DEFAULT_LR[optimizer], feature_transform=transform_name)
    note = f"loss {metrics['loss_first']:.3g} -> {metrics['loss_last']:.3g} (features: {transform_name})"
    return Result(display=Picture(rgb=rgb, note=note), array=result[0].permute(1, 2, 0).cpu().numpy().astype(np.float32),
                  metrics=metrics, frames=recorder.finish(rgb))


SPEC = MethodSpec(
    id="style",
    title="Style transfer",
    summary="Repaint the image in the style of other pictures: match content features and style Grams (Gatys 2016).",
    params=(
        Param("style", "images", DEFAULT_STYLE, f"style picture(s); repeat the flag to blend several "
              f"({DEFAULT_STYLE}: the stained-glass picture ConvScope ships)"),
        Param("style_weights", "weights", None, "blend of the style pictures' Grams, e.g. 0.7,0.3 (empty: equal)",
              maximum=WEIGHT_LIMIT),
        Param("content_layers", "layers", None, "content layers, comma-separated (empty: per model; VGG: conv4_2)"),
        Param("style_layers", "layers", None, "style layers, comma-separated (empty: per model; VGG: conv1_1..conv5_1)"),
        Param("content_weight", "float", 1.0, "weight of the content loss", minimum=0.0, maximum=WEIGHT_LIMIT),
        Param("style_weight", "float", 1000.0, "weight of the style loss", minimum=0.0, maximum=WEIGHT_LIMIT),
        Param("tv_weight", "float", 0.0, "weight of the total-variation smoothness penalty", minimum=0.0,
              maximum=WEIGHT_LIMIT),
        Param("init", "choice", "content", "start from the content image or from seeded noise", choices=("content", "noise")),
        Param("optimizer", "choice", "lbfgs", "L-BFGS (as Gatys) or Adam", choices=OPTIMIZERS),
        Param("lr", "float", 0.0, "step size (0: 1 for L-BFGS, 0.02 for Adam)", minimum=0.0, maximum=LR_LIMIT,
              special="per optimizer"),
        Param("steps", "int", 100, "optimisation steps", minimum=1, maximum=5000),
        Param("size", "int", 0, "shorter side of the result in pixels (0: the model's input size)", minimum=0,
              maximum=2048, special="model's size"),
        Param("style_scale", "float", 1.0, "style pictures' shorter side relative to the content's, before their "
                                           "Grams are taken (larger: coarser brush strokes)", minimum=0.05, maximum=8.0),
        Param("preserve_color", "bool", False, "transfer luminance only and keep the content's colours (YIQ)"),
        Param("feature_transform", "choice", "auto", "applied to features before both losses; softmax: Wang et al. "
                                                     "2021's fix for residual networks; auto: none on VGG and on the "
                                                     "bundled model (its ReLU6 layers stylise well plainly), softmax "
                                                     "on other models", choices=("auto", *TRANSFORMS)),
        Param("temperature", "float", DEFAULT_TEMPERATURE, "softmax temperature T: softmax(F / T) (1 as the paper)",
              minimum=1e-3, maximum=TEMPERATURE_LIMIT),
        SEED,
    ),
    run=run,
    streams_frames=True,
    check=check,
)
