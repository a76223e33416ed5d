"""``gradcam``: Grad-CAM, where a convolutional layer's channels raise the class score (Selvaraju et al. 2017).

    alpha_k = mean over (i, j) of d score_c / d A_k[i, j]          L = ReLU(sum_k alpha_k A_k)

A is the layer's output for the image, score_c the class's logit. ``--variant gradcam++``
weighs each channel by its positive gradients where they count most (Chattopadhay et al.
2018: better with several instances of a class); ``--variant layercam`` weighs each
position by its own positive gradient (Jiang et al. 2021: finer maps from earlier layers);
``--variant scorecam`` uses no gradient at all: each channel's map masks the image, and
the class's probability for the masked image weighs the channel (Wang et al. 2020; one
forward pass per channel, batched: 1,280 at the bundled model's last layer), and so runs on a
model no gradient can be taken through. L has the layer's
resolution (7x7 at the end of most ImageNet networks); it is bilinearly upsampled to the
model input's size, which covers the whole image, so the map lies over the picture
(Captum: ``LayerGradCam(...).attribute(relu_attributions=True)`` then
``LayerAttribution.interpolate(..., "bilinear")``). One forward pass and a backward pass
as far as the layer. For the photo on show, whose every layer's output the window keeps, A is
that kept output and the gradient runs through the network after the layer alone
(``engine.anatomy.tail``), where the network can be cut there: no pass at all through the
layers before it.

``--layer late`` (the default) is the model's preset for its last convolutional stage,
the activated output of the last conv layer (the paper's choice: the deepest map that
still has a layout); a model without presets uses its last convolution's output.
"""

from __future__ import annotations

import torch

from engine.attribution.maps import (CAM_VARIANTS, automatic_batch, cam_layer, cam_of, grad_cam, layer_pass, map_display,
                           map_metrics, refuse_blank, score_cam_weights, tail_pass)
from engine.attribution.gradients import class_score, class_scores, gradient_network
from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result, within
from engine.methods.params import CAM_LAYER, OVERLAY, TARGET, MethodSpec, Param, one_photo

VARIANT_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM", "scorecam": "Score-CAM"}


def run_many(contexts, bound):
    """The photos' maps (one model, one input size, the same settings): the gradient
    variants as many photos to a pass as fit, Score-CAM photo by photo (its passes are per
    channel already)."""
    model, cancel = contexts[0].model, contexts[0].cancel
    resolved = []
    for ctx, p in zip(contexts, bound):
        ctx.require_image()
        resolved.append(ctx.resolve_target(p.target))
        path = cam_layer(ctx, p.layer)
        p.record(target=resolved[-1]["index"], layer=path)
    variant = bound[0].variant
    name = VARIANT_NAMES[variant]
    yield Progress(0.1, f"{name} of '{resolved[0]['label']}' at {path}" if len(contexts) == 1
                   else f"{name} of {len(contexts)} photos at {path}")
    units = torch.cat([model.preprocessing.to_unit_tensor(ctx.image.image) for ctx in contexts]).to(model.device)
    input_size = tuple(units.shape[-2:])
    outcomes = []
    if variant == "scorecam":  # no gradient at all: the network for outputs only
        network = model.state.fast_copy(model.preprocessing.normalise(units[:1]), layer=path)
        for row, found in enumerate(resolved):
            unit = units[row:row + 1]
            activation, _, _, scores = layer_pass(model, network, unit, path, class_score(found["index"]), gradient=False)
            weights = yield from within(
                score_cam_weights(model, network, unit, activation, found["index"],
                                  automatic_batch(model, *input_size, backward=False), cancel),
                row / len(resolved), (row + 1) / len(resolved))
            cam, upsampled = cam_of(weights.view(1, -1, 1, 1).to(activation.dtype) * activation.detach(), input_size)
            outcomes.append(_outcome(contexts[row].image, bound[row], found, path, name, cam[0], upsampled[0],
                                     float(scores[0]), activation.shape[1]))
    elif (known := _known_output(contexts, path)) is not None:  # the photo on show: its head alone
        activation, gradient, _, scores = tail_pass(model, model.state.layer_tail(path), known, path,
                                                    class_score(resolved[0]["index"]), input_size)
        cam, upsampled = grad_cam(activation, gradient, input_size, variant)
        outcomes.append(_outcome(contexts[0].image, bound[0], resolved[0], path, name, cam[0], upsampled[0],
                                 float(scores[0]), activation.shape[1]))
    else:
        network = gradient_network(model, units, layer=path)
        per_pass = automatic_batch(model, *input_size)
        for first in range(0, len(contexts), per_pass):
            cancel.check()
            rows = range(first, min(first + per_pass, len(contexts)))
            activation, gradient, _, scores = layer_pass(model, network, units[first:rows.stop], path,
                                                         class_scores([resolved[row]["index"] for row in rows]))
            cam, upsampled = grad_cam(activation, gradient, input_size, variant)
            for offset, row in enumerate(rows):
                outcomes.append(_outcome(contexts[row].image, bound[row], resolved[row], path, name, cam[offset],
                                         upsampled[offset], float(scores[offset]), activation.shape[1]))
    yield Progress(1.0, "done")
    return outcomes


def _known_output(contexts, path: str):
    """Layer ``path``'s output for a lone photo whose every layer's output is kept (the
    window keeps them for the photo on show), where the network can be cut after the layer;
    else None."""
    if len(contexts) != 1:
        return None
    ctx = contexts[0]
    features = ctx.features.peek(ctx.model, ctx.image)
    if features is None or path not in features.activations or ctx.model.state.layer_tail(path) is None:
        return None
    return features.activations[path]


def _outcome(image, p, resolved, path: str, name: str, cam: torch.Tensor, upsampled: torch.Tensor, score: float,
             channels: int) -> Result | MethodInputError:
    """One photo's Result, or the refusal of its blank map (the other photos' stand)."""
    label = resolved["label"]
    values = upsampled.float().cpu().numpy()
    try:
        refuse_blank(values, f"{name} of '{label}' at {path} is zero everywhere: no part of that layer's map raises "
                             f"the score of '{label}'. Try the top class or an earlier layer")
    except MethodInputError as refusal:
        return refusal
    grid, size = f"{cam.shape[0]}x{cam.shape[1]}", f"{values.shape[1]}x{values.shape[0]}"
    display = map_display(image, values, signed=False, overlay=p.overlay, legend=f"{name} of '{label}'",
                          note=f"{name} of '{label}' at {path} ({grid}, upsampled to {size})")
    metrics = {**map_metrics(values), "score": score, "layer_grid": [int(cam.shape[0]), int(cam.shape[1])],
               "channels": int(channels)}
    return Result(display=display, array=values, target=resolved, layer=path, metrics=metrics)


SPEC = MethodSpec(
    id="gradcam",
    title="Grad-CAM",
    summary="Where a convolutional layer's channels raise the class score: their maps weighted by the mean gradient "
            "(Selvaraju et al. 2017), by their positive gradients where they count (Grad-CAM++), position by "
            "position (LayerCAM), or by the class probability of the image each one masks (Score-CAM).",
    params=(TARGET, CAM_LAYER,
            Param("variant", "choice", "gradcam", "how channels are weighted: gradcam (mean gradient), gradcam++ "
                  "(Chattopadhay et al. 2018), layercam (per position, Jiang et al. 2021), scorecam (the class "
                  "probability of the image masked by each channel, Wang et al. 2020; slower)", choices=CAM_VARIANTS),
            OVERLAY),
    run=one_photo(run_many),
    run_many=run_many,
    gradient_free={"variant": "scorecam"},
)
