"""Perceptual losses: content (features) and style (Gram matrices) at chosen layers.

Texture synthesis, Gatys style transfer and fast style training all compare an image's
features with targets taken once from the content and style images; these are the
comparisons, written once. Also here: which layers to compare on each backbone, the
forward that stops at the deepest of them, and the stepper that minimises a perceptual loss
over an image's pixels with L-BFGS (as Gatys et al. did) or Adam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from engine.core.errors import MethodInputError
from engine.style.activation_transforms import FeatureTransform, feature_transform
from engine.style.gram import gram_matrix
from engine.models.model import LoadedModel
from engine.models.registry import BUNDLED_MODEL
from engine.optvis.loop import Step
from engine.optvis.optimise import probe_model
from engine.optvis.regularisers import total_variation


def gram_targets(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Gram matrix of each layer's features, detached: the style to match."""
    return {layer: gram_matrix(value).detach() for layer, value in features.items()}


def style_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               weights: dict[str, float] | None = None) -> torch.Tensor:
    """Sum over layers of weight * mean squared difference between Gram matrices.

    A target Gram with batch size 1 is broadcast over the batch being optimised.
    """
    total = None
    for layer, target in targets.items():
        gram = gram_matrix(features[layer])
        term = F.mse_loss(gram, target.expand_as(gram)) * (1.0 if weights is None else weights.get(layer, 1.0))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("style_loss needs at least one style layer")
    return total


def content_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 weights: dict[str, float] | None = None) -> torch.Tensor:
    """Sum over layers of weight * mean squared difference between features and their targets."""
    total = None
    for layer, target in targets.items():
        term = F.mse_loss(features[layer], target.expand_as(features[layer])) * (1.0 if weights is None else weights.get(layer, 1.0))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("content_loss needs at least one content layer")
    return total


def blend_grams(grams: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """sum_s w_s * G_s per layer, the weights scaled to sum to 1.

    Several style images guide one picture through this blend (``--style-weights 0.7,0.3``);
    scaling the weights means 7,3 blends like 0.7,0.3 and the loss keeps its size.
    """
    if len(grams) != len(weights) or not grams:
        raise ValueError("blend_grams needs one weight per set of Grams")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError("blend weights must be non-negative and not all zero")
    return {layer: sum(gram[layer] * (w / total) for gram, w in zip(grams, weights)) for layer in grams[0]}


def relative_weights(targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """1 / mean(target^2) per layer: weights that make a loss relative to its target's size.

    Layers (and networks) differ in their activations' scale by orders of magnitude, and
    a softmax transform changes it again; relative losses let one set of default weights
    work on every backbone, and make each layer pull about as hard as the others.
    """
    return {layer: 1.0 / max(float(target.pow(2).mean()), 1e-30) for layer, target in targets.items()}


# -- which layers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerceptualLayers:
    texture: tuple[str, ...]  # Gram layers for texture synthesis, shallow to deep
    style: tuple[str, ...]  # Gram layers for style transfer
    content: tuple[str, ...]  # feature layers for the content
    plain_gram: bool  # plain Grams stylise well on these layers; if not, "auto" uses the softmax transform


# VGG paths are torchvision's ``features.N``. Gatys et al. name conv layers, but in Caffe
# their ReLU runs in place, so "conv1_1" holds the rectified output: relu1_1 here.
# VGG-19: relu1_1 1, pool1 4, relu2_1 6, pool2 9, relu3_1 11, pool3 18, relu4_1 20, relu4_2 22,
# pool4 27, relu5_1 29. VGG-16: relu1_1 1, pool1 4, relu2_1 6, pool2 9, relu3_1 11, pool3 16,
# relu4_1 18, relu4_2 20, pool4 23, relu5_1 25.
_KNOWN_LAYERS = {
    # Texture: Gatys 2015's conv1_1, pool1..pool4. Style: Gatys 2016's conv1_1..conv5_1, content conv4_2.
    "vgg19": PerceptualLayers(
        texture=("features.1", "features.4", "features.9", "features.18", "features.27"),
        style=("features.1", "features.6", "features.11", "features.20", "features.29"),
        content=("features.22",), plain_gram=True),
    "vgg16": PerceptualLayers(
        texture=("features.1", "features.4", "features.9", "features.16", "features.23"),
        style=("features.1", "features.6", "features.11", "features.18", "features.25"),
        content=("features.20",), plain_gram=True),
    # EfficientNet-Lite0's blocks end in a linear projection, so its layers are ReLU6
    # activations: the stem's, then the expansion inside the last block at 1/4, 1/8 and 1/16
    # of the input (receptive fields 3, 11, 35 and 115 px), like VGG's one layer per scale.
    # Content at 1/8 (the expansion of the first 1/16 block, field 67 px), as conv4_2 is.
    # Plain Grams work here: Wang et al. blame the peaky, low-entropy activations of the
    # residual stream, and ReLU6 caps these at 6 (normalised entropy 0.93-0.96 on chelsea,
    # against 0.88-0.91 for the block outputs). Measured at 256 px, 100 steps, scikit-image's
    # ihc as the style: plain Grams stylise strongly, the softmax at T = 1 clearly less, at
    # T = 6 about as much (resources/style_before_after.png). At the block outputs (the
    # residual stream: stem, stages.1.1, 2.1, 3.2) plain Grams stylise strongly as well
    # (style loss 2386 -> 63), while the softmax at T = 1 barely moves the picture (9655 ->
    # 2607), whether over the whole layer, per channel over positions, or at the two
    # deepest layers only: this network does not have the problem the softmax fixes.
    BUNDLED_MODEL: PerceptualLayers(
        texture=("stem.relu6", "stages.1.1.expand_relu6", "stages.2.1.expand_relu6", "stages.3.2.expand_relu6"),
        style=("stem.relu6", "stages.1.1.expand_relu6", "stages.2.1.expand_relu6", "stages.3.2.expand_relu6"),
        content=("stages.3.0.expand_relu6",), plain_gram=True),
}
_GENERIC_LEVELS = 4  # spatial resolutions a model without an entry contributes Gram layers from


def _vgg_name(module: nn.Module) -> str | None:
    """'vgg16' or 'vgg19' for torchvision's VGG with that many convolutions, else None."""
    from torchvision.models import VGG

    if not isinstance(module, VGG):
        return None
    convs = sum(isinstance(m, nn.Conv2d) for m in module.features)
    return {13: "vgg16", 16: "vgg19"}.get(convs)


def perceptual_layers(model: LoadedModel, output_shapes: dict[str, tuple]) -> PerceptualLayers:
    """Default layers for ``model``: the table above, or a recipe from its output shapes.

    Known by architecture, not by name, so a VGG-19 loaded from a file gets Gatys's layers.
    Other models use the last module at each of their first four spatial resolutions (one
    layer per scale, as the VGG recipes) and content at the third; on residual networks
    these are block outputs, the residual stream Wang et al. found plain Grams fail on.
    """
    name = _vgg_name(model.module) or (BUNDLED_MODEL if model.name == BUNDLED_MODEL else None)
    if name in _KNOWN_LAYERS:
        return _KNOWN_LAYERS[name]
    last_at: dict[tuple, str] = {}
    for path, shape in output_shapes.items():
        if shape is not None and len(shape) == 4 and shape[-1] * shape[-2] > 1:
            last_at[tuple(shape[-2:])] = path
    levels = [path for _size, path in sorted(last_at.items(), key=lambda item: -item[0][0] * item[0][1])][:_GENERIC_LEVELS]
    if not levels:
        raise MethodInputError("this model has no layer with a spatial output, so it cannot measure texture or style; "
                               "pick another model")
    return PerceptualLayers(texture=tuple(levels), style=tuple(levels), content=(levels[min(2, len(levels) - 1)],),
                            plain_gram=False)


# -- features -----------------------------------------------------------------------------------
class Features:
    """A model's (optionally transformed) outputs at some layers for a 0..1 picture.

    The forward stops once the deepest of the layers has run, so Gram layers in the first
    half of a network cost half a forward and half a backward per step.
    """

    def __init__(self, model: LoadedModel, layers: Sequence[str], transform: FeatureTransform | None = None) -> None:
        self.model = model
        self.layers = tuple(dict.fromkeys(layers))
        self.transform = transform

    def __call__(self, unit: torch.Tensor) -> dict[str, torch.Tensor]:
        # Channels-last: oneDNN runs dense convolutions on NHWC without reordering each
        # layer's input and output (VGG-19's step: 13 % faster on this CPU; EfficientNet's
        # depthwise layers are as fast either way).
        probe = probe_model(self.model, unit.contiguous(memory_format=torch.channels_last), self.layers)
        if self.transform is None:
            return {layer: probe[layer] for layer in self.layers}
        return {layer: self.transform(probe[layer]) for layer in self.layers}

    def targets(self, unit: torch.Tensor) -> dict[str, torch.Tensor]:
        """The features of a fixed picture (content or style), computed without a graph.

        ``no_grad`` rather than ``inference_mode``: the losses save their targets for the
        backward pass, which autograd refuses to do with inference tensors."""
        with torch.no_grad():
            return {layer: value.detach() for layer, value in self(unit).items()}


# -- the loss -----------------------------------------------------------------------------------
class PerceptualLoss:
    """content_weight * L_content + style_weight * L_style + tv_weight * L_tv for a 0..1 picture.

    L_content and L_style are the sums over their layers of the relative mean squared error
    (``relative_weights``); L_tv is the squared total variation per pixel. Either target
    set may be empty (texture synthesis has no content). ``__call__`` returns the total and
    each weighted part by name, so a frame can show which part moves.
    """

    def __init__(self, features: Features, *, content: dict[str, torch.Tensor] | None = None,
                 style: dict[str, torch.Tensor] | None = None, content_weight: float = 1.0,
                 style_weight: float = 1.0, tv_weight: float = 0.0) -> None:
        self.features = features
        self.content = content or {}
        self.style = style or {}
        if not self.content and not self.style:
            raise ValueError("a perceptual loss needs content or style targets")
        self.content_weights = relative_weights(self.content)
        self.style_weights = relative_weights(self.style)
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight

    def __call__(self, unit: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        features = self.features(unit)
        terms: dict[str, torch.Tensor] = {}
        if self.content:
            terms["content"] = self.content_weight * content_loss(features, self.content, self.content_weights)
        if self.style:
            terms["style"] = self.style_weight * style_loss(features, self.style, self.style_weights)
        if self.tv_weight:
            terms["tv"] = self.tv_weight * total_variation(unit) / unit[0, 0].numel()
        total = sum(terms.values())
        return total, {name: float(value.detach()) for name, value in terms.items()}


# -- the starting picture ---------------------------------------------------------------------
NOISE_AMPLITUDE = 0.2  # starting noise spans mid-grey +- 0.1


def seeded_noise(shape: tuple[int, ...], generator: torch.Generator, amplitude: float = NOISE_AMPLITUDE) -> torch.Tensor:
    """Uniform noise around mid-grey, drawn on the CPU so a seed gives the same picture anywhere.

    Faint rather than full-range: a network with a strided first layer (the bundled one's
    stem) cannot see part of a picture's finest detail, so whatever of that detail the
    noise starts with is never optimised away, and full-range noise would stay as grain.
    """
    return 0.5 + amplitude * (torch.rand(shape, generator=generator) - 0.5)


# -- the descent --------------------------------------------------------------------------------
OPTIMIZERS = ("lbfgs", "adam")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
LBFGS_HISTORY = 50


Loss = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class PixelDescent:
    """Minimise ``loss`` over ``pixels`` (a 1 x C x H x W leaf in 0..1, updated in place): the
    stepper of texture and style, run by the one loop (``engine.optvis.loop``) with ``keep_best``.

        descent = PixelDescent(pixels, loss)
        trace = yield from optimisation_loop(descent.step, steps, keep_best=descent, show=...)

    Each step's loss and terms are those of the picture the step started from (the
    optimiser evaluates the loss before it moves). Pixels are clamped to 0..1 after every
    step (projected descent, as the PyTorch tutorial does for L-BFGS). Without a line search
    L-BFGS can end on a worse picture than one it passed, so the loop keeps the lowest-loss
    picture: ``snapshot``, ``measure`` and ``restore`` are what it needs for that.

    One L-BFGS step is one iteration with exactly one evaluation of the loss (``max_iter=1``,
    no line search), so a step costs one forward and one backward whichever optimiser runs,
    and the curvature history carries over between steps. The tolerances are zero: the step
    count, not L-BFGS, decides when to stop.
    """

    def __init__(self, pixels: torch.Tensor, loss: Loss, optimizer: str = "lbfgs", lr: float | None = None) -> None:
        if optimizer not in OPTIMIZERS:
            raise MethodInputError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not '{optimizer}'")
        self.pixels, self.loss = pixels, loss
        lr = lr or DEFAULT_LR[optimizer]
        if optimizer == "lbfgs":
            self.optimizer = torch.optim.LBFGS([pixels], lr=lr, max_iter=1, history_size=LBFGS_HISTORY,
                                               tolerance_grad=0.0, tolerance_change=0.0)
        else:
            self.optimizer = torch.optim.Adam([pixels], lr=lr)
        # L-BFGS is invariant to the loss's units except where it compares with constants:
        # its first step is 1 / |g|_1 and it drops curvature pairs with s.y below 1e-10,
        # so a loss whose gradients are tiny (a relative Gram loss on a small picture)
        # crawls for dozens of steps. The optimiser sees the loss scaled so its first
        # gradient's largest entry is 1; the reported loss and terms keep the loss's own units.
        self.scale: float | None = None if optimizer == "lbfgs" else 1.0

    def step(self, _number: int) -> Step:
        measured: dict = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            total, parts = self.loss(self.pixels)
            if self.scale is None:  # the first evaluation fixes the scale (see __init__)
                total.backward()
                largest = float(self.pixels.grad.abs().max())
                self.scale = 1.0 / largest if largest > 0 else 1.0
                self.pixels.grad.mul_(self.scale)
            else:
                (total * self.scale).backward()
            measured.update(loss=float(total.detach()), terms=parts)
            return total.detach() * self.scale

        self.optimizer.step(closure)
        with torch.no_grad():
            self.pixels.clamp_(0, 1)
        return Step(loss=measured["loss"], terms=measured["terms"], picture=self.pixels)

    def snapshot(self) -> torch.Tensor:
        return self.pixels.detach().clone()

    def measure(self) -> Step:
        with torch.no_grad():
            total, parts = self.loss(self.pixels)
        return Step(loss=float(total), terms=parts, picture=self.pixels)

    def restore(self, state: torch.Tensor) -> None:
        with torch.no_grad():
            self.pixels.copy_(state)

    def restart(self) -> None:
        self.optimizer.state.clear()  # L-BFGS's history and step count, Adam's moments


# -- options shared by the texture and style methods --------------------------------------------
def layer_list(names: Sequence[str] | None, default: Sequence[str], resolve: Callable[[str], str], flag: str) -> list[str]:
    """The module paths of ``names`` (each a path or early/middle/late), or ``default``."""
    if not names:
        return list(default)
    try:
        return list(dict.fromkeys(resolve(name) for name in names))
    except MethodInputError as error:
        raise MethodInputError(f"{flag}: {error}") from None


def choose_transform(name: str, layers: PerceptualLayers, temperature: float) -> tuple[str, FeatureTransform | None]:
    """The transform's name and function. 'auto' means none where plain Grams stylise well
    (VGG, the bundled model's ReLU6 layers) and the softmax on the other networks."""
    if name == "auto":
        name = "none" if layers.plain_gram else "softmax"
    try:
        return name, feature_transform(name, temperature)
    except ValueError as error:
        raise MethodInputError(f"--feature-transform / --temperature: {error}") from None
