"""What the attribution methods share: batched gradients, maps, Grad-CAM, and one way to show a map.

Every attribution map here is a float array at the model input's resolution covering
the whole image (row 0 is the image's top edge), so the canvas lays it exactly over the
picture, as ``saliency`` does. A method's 3-channel attribution becomes a map in one of
two ways:

- ``magnitude_map``: max over the colour channels of |attribution| (Simonyan et al.
  2014), for gradients, whose sign says little on its own (saliency, SmoothGrad, guided
  backprop, guided Grad-CAM);
- ``signed_map``: the sum over the colour channels, for integrated gradients, whose
  values add up to the change in the class score (completeness): summing keeps that.

``map_display`` is the one place a map becomes a display (a ``MapOverPhoto``, or a
``ScalarMap`` on its own), so every method colours alike. Gradients are heavy-tailed (a few pixels are far larger than the rest), so the
colour scale tops out at the 99th percentile of |map| (as Captum's visualiser does); a
signed map gets a symmetric diverging scale (-top..top, white at zero, red positive,
blue negative), a magnitude map 0..top. Passing ``top`` instead shares one scale between
several maps, so that equal colours mean equal values across them.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Generator

import numpy as np
import torch
from torch.nn import functional as F

from engine.core.errors import MethodInputError
from engine.attribution.gradients import Score, run_score, score_gradient
from engine.anatomy.hooks import first_tensor, hooked
from engine.anatomy.tail import tail_output
from engine.attribution.guided import GuidedReLUs
from engine.data.images import LoadedImage
from engine.core.jobs import Progress
from engine.view.display import MapOverPhoto, Picture, ScalarMap
from engine.anatomy.layers import find_module

# Automatic batch: as many images per pass as fit a memory budget, counted from the
# model's own layer outputs (``ModelState.activation_bytes``), so a large network takes
# fewer images per pass and a small one more. On 2 CPU threads a pass costs per image, on
# a quiet machine, 33 / 22 / 19 / 17 / 17 ms in batches of 1 / 2 / 4 / 8 / 16 (the
# bundled model's fast copy, 224 px); on one whose cores other processes keep busy every
# pass pays a fixed cost, and 24 images in batches of 8 took twice as long as in one batch
# of 24: larger passes are better while they fit. A forward and backward pass keeps what
# the layers output, and more: saved tensors and gradients in flight measured 0.7-1.9
# times the leaf outputs' bytes over twelve timm families (ResNet-18 1.9, ConvNeXt-atto
# 0.8, DeiT-tiny 0.7, ViT-B 1.8). The budget is a quarter of the machine's memory (4 GiB
# where that cannot be read): fewer, larger passes are faster while they fit (Swin-T's 16
# integrated-gradients steps on a 224x336 photo: 3.56 s in two passes of 8, against
# Captum's 3.36 s in one of 16, at a 4 GiB budget). On this 24 GiB machine a 224 px photo
# then takes 53 images a pass on the bundled model (integrated gradients' 32 steps and
# SmoothGrad's 25 samples in one), 27 on ResNet-50d, 10 on ConvNeXt-B (16 would need 10 GiB).
CPU_PASS_FRACTION = 0.25  # of the machine's memory
CPU_PASS_BYTES_UNKNOWN = 4 * 2**30
CUDA_FREE_FRACTION = 0.5  # of the device memory free when the pass is planned
BACKWARD_KEEPS = 1.5  # bytes a forward and backward pass holds per byte of leaf outputs
FORWARD_KEEPS = 4  # an inference pass holds a few of its largest outputs at once
MOST_PER_PASS = {"cpu": 64, "cuda": 256}  # beyond these a larger pass is no faster
PERCENTILE = 99.0


def cpu_pass_bytes() -> int:
    """The memory one pass may take on the CPU: a quarter of the machine's."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * CPU_PASS_FRACTION)
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return CPU_PASS_BYTES_UNKNOWN


def automatic_batch(model, height: int, width: int, backward: bool = True) -> int:
    """Images per pass at H x W for ``model`` (a ``LoadedModel``): those whose activations
    fit the memory budget, at least 1; ``backward``: the passes take input gradients."""
    activations = model.state.activation_bytes((height, width))
    per_image = activations.total * BACKWARD_KEEPS if backward else activations.largest * FORWARD_KEEPS
    device = model.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * CUDA_FREE_FRACTION
    else:
        budget = cpu_pass_bytes()
    most = MOST_PER_PASS.get(device.type, MOST_PER_PASS["cpu"])
    return int(max(1, min(most, budget // max(per_image, 1))))


def accumulate_gradients(model, module, inputs, weights: torch.Tensor, score: Score, batch: int, cancel, noun: str):
    """Job: sum_i weights[i] * d score / d pixels at ``inputs(i)``, at most ``batch`` inputs per pass.

    Gradients are taken through ``module`` (``gradient_network(model, ...)``, or the model's own).

    ``inputs(start, count)`` builds inputs start..start+count-1 (0..1 pixels, count x 3 x H x W)
    only when their batch runs, so memory holds one batch, however many inputs there are.
    The passes are equally full (25 inputs at most 8 a pass: 6, 6, 7, 6, not 8, 8, 8, 1, whose
    last pass would cost nearly as much as a full one). Yields a ``Progress`` per pass and
    checks ``cancel`` before each; returns (the weighted sum, 1 x 3 x H x W; the score at
    every input, in order).
    """
    total = len(weights)
    weights = weights.to(model.device)
    passes = -(-total // batch)
    bounds = [round(total * k / passes) for k in range(passes + 1)]
    summed, values = None, []
    for start, end in zip(bounds, bounds[1:]):
        cancel.check()
        count = end - start
        gradient, scores = score_gradient(model, inputs(start, count), score, module)
        part = torch.einsum("n,nchw->chw", weights[start:start + count].to(gradient.dtype), gradient).unsqueeze(0)
        summed = part if summed is None else summed + part
        values.append(scores)
        yield Progress((start + count) / total, f"{start + count} of {total} {noun}")
    return summed, torch.cat(values)


def magnitude_map(attribution: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W -> H x W: max over colour channels of |attribution|."""
    return attribution.abs().amax(dim=1)[0].float().cpu().numpy()


def signed_map(attribution: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W -> H x W: the sum over colour channels (keeps completeness)."""
    return attribution.sum(dim=1)[0].float().cpu().numpy()


def colour_top(values: np.ndarray) -> float:
    """The top of a map's colour scale: the 99th percentile of |values|, else their maximum, else 1."""
    magnitude = np.abs(values)
    return float(np.percentile(magnitude, PERCENTILE)) or float(magnitude.max()) or 1.0


def map_display(image: LoadedImage, values: np.ndarray, *, signed: bool, legend: str, note: str,
                overlay: bool = True, top: float | None = None, bottom: float = 0.0, boxes=()) -> MapOverPhoto | ScalarMap:
    """The picture of an attribution map, over the photo (``overlay``) or on its own.

    Signed maps: diverging colours between -top and top; magnitude maps: 0..top.
    ``top`` defaults to ``colour_top(values)``; give one value to several maps to share
    their scale. ``bottom``: where a magnitude map's scale starts (a map whose every value
    sits on a common floor, as attention does, shows its differences from there). ``boxes`` are (top, left, bottom, right) in the map's pixels; over the
    photo they are scaled to the photo's.
    """
    clipped_at = f"the {PERCENTILE:g}th percentile of |map|" if top is None else "a scale shared between maps"
    top = colour_top(values) if top is None else float(top)
    levels = (-top, top) if signed else (float(bottom), max(top, float(bottom) + 1e-12))
    colormap = "blue-white-red" if signed else "inferno"
    values = values.astype(np.float32, copy=False)
    if not overlay:
        return ScalarMap(values, levels=levels, colormap=colormap, legend=legend, note=note, boxes=list(boxes),
                         clipped_at=clipped_at)
    sy, sx = image.size[1] / values.shape[0], image.size[0] / values.shape[1]
    boxes = [(box_top * sy, left * sx, bottom * sy, right * sx) for box_top, left, bottom, right in boxes]
    return MapOverPhoto(photo=image.to_array(), values=values, levels=levels, colormap=colormap, legend=legend,
                        note=note, boxes=boxes, clipped_at=clipped_at)


def gradient_picture(gradient: torch.Tensor, top: float | None = None) -> np.ndarray:
    """A 1 x 3 x H x W gradient as an H x W x 3 picture: zero is mid-gray, +-top (default: the
    99th percentile of |gradient|) black and white, each colour channel on its own. This is
    how guided backprop's results are usually shown (Springenberg et al. 2015)."""
    values = gradient[0].permute(1, 2, 0).float().cpu().numpy()
    top = colour_top(values) if top is None else float(top)
    return (np.clip(0.5 + values / (2 * top), 0, 1) * 255 + 0.5).astype(np.uint8)


def picture_display(picture: np.ndarray, *, note: str, boxes=()) -> Picture:
    """A gradient picture (``gradient_picture``, mid-gray at zero) on its own; ``boxes`` in its pixels."""
    return Picture(rgb=picture, note=note, boxes=list(boxes))


def map_metrics(values: np.ndarray) -> dict:
    return {"max": float(values.max()), "min": float(values.min()), "mean": float(values.mean())}


def refuse_blank(values: np.ndarray, why: str) -> None:
    """Raise instead of returning a map that shows nothing (zero or NaN everywhere)."""
    low, high = float(values.min()), float(values.max())  # a NaN anywhere makes both NaN: two passes, not four
    if not (math.isfinite(low) and math.isfinite(high)):
        raise MethodInputError("the map holds NaN or infinite values: the model's gradients overflowed for this image")
    if low == 0 and high == 0:
        raise MethodInputError(why)


# -- Grad-CAM ----------------------------------------------------------------------------------

def cam_layer(ctx, spec: str | None) -> str:
    """The layer Grad-CAM weights: ``late`` is the model's preset for its last convolutional
    stage, or, for a model without presets, the last spatial layer the class score depends
    on (``engine.anatomy.layer_choice``: a CNN's last stage, a ViT's last ``norm1``).
    Any spatial layout will do (a map, channels-last, a transformer's tokens); refuses
    layers without a grid of more than one cell."""
    spec = (spec or "late").strip()
    layouts = ctx.model.state.layouts()
    if not any(layout.spatial for layout in layouts.values()):
        raise MethodInputError("this model has no convolution layers or token grids, so it has no feature maps for "
                               "Grad-CAM to weight; use saliency or integrated-gradients instead")
    path = ctx.resolve_layer(spec)
    shape = ctx.output_shapes().get(path)
    if shape is None:
        raise MethodInputError(f"layer '{path}' did not run in the forward pass, so Grad-CAM has nothing to weight")
    layout = layouts.get(path)
    if layout is not None and layout.kind == "vector" and len(shape) == 4:
        raise MethodInputError(f"layer '{path}' has a 1x1 map, so its Grad-CAM would be one value everywhere; "
                               f"pick an earlier convolutional layer")
    if layout is None or not layout.spatial:
        raise MethodInputError(f"layer '{path}' outputs a {len(shape)}-D tensor, not a C x H x W map: Grad-CAM weights the "
                               f"channels of a convolutional layer's map (or a transformer's token grid); pick one "
                               f"(default: the recommended layer)")
    return path


def layer_pass(model, module, pixels: torch.Tensor, path: str, score: Score, guide: GuidedReLUs | None = None,
               gradient: bool = True):
    """One forward pass through ``module``; the layer's output A and d score / d A (ordinary gradients).

    Without ``guide`` the pixels need no gradient, so nothing before the layer is recorded
    for the backward pass, which runs from the score back to the layer only. With
    ``guide`` (``module`` inside ``guided_relus``) the same graph also gives the guided
    gradient with respect to the pixels, so guided Grad-CAM needs one forward, not two.
    ``gradient`` False: the forward pass alone, recording nothing, and dA is None (Score-CAM).
    Returns (A, dA, guided input gradient or None, score values).
    """
    pixels = pixels.detach().to(model.device).requires_grad_(guide is not None)
    with torch.set_grad_enabled(gradient), _held_output(module, path) as held:
        scores = run_score(model, pixels, score, module)
    if "output" not in held:
        raise MethodInputError(f"layer '{path}' did not run in the forward pass, or gave no single tensor")
    activation = held["output"]
    if not gradient:
        return activation.detach(), None, None, scores.detach()
    if guide is not None:
        guide.active = False
    try:
        layer_gradient, = torch.autograd.grad(scores.sum(), activation, retain_graph=guide is not None)
        input_gradient = None
        if guide is not None:
            guide.active = True
            input_gradient, = torch.autograd.grad(scores.sum(), pixels)
    finally:
        if guide is not None:
            guide.active = True
    # A channels-last or token layer's output, and its gradient, as N x C x h x w maps.
    size = tuple(pixels.shape[-2:])
    activation, layer_gradient = (model.state.as_map(path, tensor, size) for tensor in (activation.detach(), layer_gradient))
    return activation, layer_gradient, input_gradient, scores.detach()


def tail_pass(model, tail, output: torch.Tensor, path: str, score: Score, size: tuple[int, int]):
    """``layer_pass`` from the layer's output computed already (the photo's features): the
    score through the network's ``tail`` (``ModelState.layer_tail``), so no pass runs the
    layers before it. Returns (A, dA, None, score values), A and dA as N x C x h x w maps."""
    dtype = next(tail.parameters(), output).dtype
    leaf = output.detach().to(model.device, dtype).requires_grad_(True)
    with torch.enable_grad():
        scores = score(lambda x: tail_output(tail, x), leaf)
        layer_gradient, = torch.autograd.grad(scores.sum(), leaf)
    activation, layer_gradient = (model.state.as_map(path, tensor, size) for tensor in (leaf.detach(), layer_gradient))
    return activation, layer_gradient, None, scores.detach()


@contextmanager
def _held_output(module, path: str):
    """Keep layer ``path``'s output (its first call's) and pass the rest of the network a copy.

    The copy protects the kept tensor from in-place operations after the layer (the
    fast copy's activations run in place), which would change its values under Grad-CAM.
    An output that records no graph (the pixels need no gradient) is kept as a new leaf
    that does, so the score can be differentiated with respect to it.
    """
    held: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        if "output" in held or not isinstance(output, torch.Tensor):
            return None
        kept = output if output.requires_grad else output.detach().requires_grad_(True)
        held["output"] = kept
        return kept.clone()

    with hooked([(find_module(module, path), hook)]):
        yield held


CAM_VARIANTS = ("gradcam", "gradcam++", "layercam", "scorecam")


def grad_cam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int],
             variant: str = "gradcam") -> tuple[torch.Tensor, torch.Tensor]:
    """A class activation map from a layer's output A and the score's gradient g = dy/dA.

    - ``gradcam`` (Selvaraju et al. 2017): ReLU(sum_k alpha_k A_k), alpha_k the mean of g_k.
    - ``gradcam++`` (Chattopadhay et al. 2018): alpha_k = sum_ij a_kij ReLU(g_kij) with
      a = g^2 / (2 g^2 + sum_ij A_k * g^3), the paper's closed form for an exponential
      score; several instances of a class each get their share of the weight.
    - ``layercam`` (Jiang et al. 2021): ReLU(sum_k ReLU(g_k) * A_k), position by position,
      which keeps the finer detail of earlier layers.

    (Score-CAM needs the model, not only A and g: ``score_cam_weights``, then ``cam_of``.)

    Returns the map at the layer's resolution (N x h x w) and bilinearly upsampled to
    ``size`` (N x H x W); ``gradcam`` as Captum's ``LayerGradCam(relu_attributions=True)``
    followed by ``LayerAttribution.interpolate(..., "bilinear")``.
    """
    if variant == "gradcam":
        weighted = gradient.mean(dim=(2, 3), keepdim=True) * activation
    elif variant == "gradcam++":
        squared = gradient.pow(2)
        denominator = 2 * squared + activation.sum(dim=(2, 3), keepdim=True) * gradient.pow(3)
        share = torch.where(denominator != 0, squared / denominator, 0.0)  # 0 where g is 0 (the denominator is then 0 too)
        weighted = (share * F.relu(gradient)).sum(dim=(2, 3), keepdim=True) * activation
    elif variant == "layercam":
        weighted = F.relu(gradient) * activation
    else:
        raise ValueError(f"unknown CAM variant '{variant}'; known: {', '.join(CAM_VARIANTS[:3])}")
    return cam_of(weighted, size)


def cam_of(weighted: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU of the channels' sum of ``weighted`` (N x C x h x w): the map at the layer's
    resolution and bilinearly upsampled to ``size``."""
    cam = F.relu(weighted.sum(dim=1, keepdim=True))
    upsampled = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam[:, 0], upsampled[:, 0]


def score_cam_weights(model, module, pixels: torch.Tensor, activation: torch.Tensor, class_index: int, batch: int,
                      cancel) -> Generator[Progress, None, torch.Tensor]:
    """Score-CAM's channel weights (Wang et al. 2020): no gradients, one forward per channel.

    Channel k's map, upsampled to the input and scaled to 0..1, masks the image (in the
    network's normalised input, so a masked-out pixel is the mean colour, 0 there); the
    class's probability for that masked image is the channel's score, and the weights are
    the softmax of the scores over channels. ``pixels`` is the 1 x 3 x H x W picture
    (0..1), ``activation`` the layer's 1 x C x h x w output; returns C weights. A job:
    yields progress, checks ``cancel`` between batches of ``batch`` masked images.
    """
    maps = activation[0].detach().float()[:, None]  # C x 1 x h x w
    masks = F.interpolate(maps, size=tuple(pixels.shape[-2:]), mode="bilinear", align_corners=False)
    low, high = masks.amin(dim=(2, 3), keepdim=True), masks.amax(dim=(2, 3), keepdim=True)
    masks = torch.where(high > low, (masks - low) / (high - low).clamp(min=1e-12), torch.zeros_like(masks))
    # normalise(mean + (p - mean) * m) == normalise(p) * m: masking in the normalised input
    mean = model.preprocessing.denormalise(torch.zeros_like(pixels[:1]))
    channels = len(masks)

    def probability(network, x):
        return torch.softmax(first_tensor(network(x)).float(), dim=1)[:, class_index]

    scores = []
    with torch.inference_mode():
        for start in range(0, channels, batch):
            cancel.check()
            masked = mean + (pixels - mean) * masks[start:start + batch].to(pixels.dtype)
            scores.append(run_score(model, masked, probability, module).float())
            done = min(start + batch, channels)
            yield Progress(0.1 + 0.85 * done / channels, f"Score-CAM: {done} of {channels} channels")
    return torch.softmax(torch.cat(scores), dim=0)
