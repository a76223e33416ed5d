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
as far as the layer.

``--layer late`` (the default) is the model's preset for its last convolutional stage,
the activated output of the last conv layer (the paper's choice: the deepest map that
still has a layout); a model without presets uses its last convolution's output.
"""

from __future__ import annotations

from engine.attribution.maps import (CAM_VARIANTS, automatic_batch, cam_layer, cam_of, grad_cam, layer_pass, map_display,
                           map_metrics, refuse_blank, score_cam_weights)
from engine.attribution.gradients import class_score, gradient_network
from engine.core.jobs import Progress, Result
from engine.methods.params import CAM_LAYER, OVERLAY, TARGET, MethodSpec, Param

VARIANT_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM", "scorecam": "Score-CAM"}


def run(ctx, p):
    image = ctx.require_image()
    resolved = ctx.resolve_target(p.target)
    label = resolved["label"]
    path = cam_layer(ctx, p.layer)
    p.record(target=resolved["index"], layer=path)
    variant = p.variant
    name = VARIANT_NAMES[variant]
    yield Progress(0.1, f"{name} of '{label}' at {path}")
    unit = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    if variant == "scorecam":  # no gradient at all: the network for outputs only
        network = ctx.model.state.fast_copy(ctx.model.preprocessing.normalise(unit), layer=path)
    else:
        network = gradient_network(ctx.model, unit, layer=path)
    activation, gradient, _, scores = layer_pass(ctx.model, network, unit, path, class_score(resolved["index"]),
                                                 gradient=variant != "scorecam")
    input_size = tuple(unit.shape[-2:])
    if variant == "scorecam":
        weights = yield from score_cam_weights(ctx.model, network, unit, activation, resolved["index"],
                                               automatic_batch(ctx.model, *input_size, backward=False), ctx.cancel)
        cam, upsampled = cam_of(weights.view(1, -1, 1, 1).to(activation.dtype) * activation.detach(), input_size)
    else:
        cam, upsampled = grad_cam(activation, gradient, input_size, variant)
    values = upsampled[0].float().cpu().numpy()
    refuse_blank(values, f"{name} of '{label}' at {path} is zero everywhere: no part of that layer's map raises the "
                         f"score of '{label}'. Try the top class or an earlier layer")
    grid, size = f"{cam.shape[1]}x{cam.shape[2]}", f"{values.shape[1]}x{values.shape[0]}"
    display = map_display(image, values, signed=False, overlay=p.overlay, legend=f"{name} of '{label}'",
                          note=f"{name} of '{label}' at {path} ({grid}, upsampled to {size})")
    metrics = {**map_metrics(values), "score": float(scores[0]), "layer_grid": [int(cam.shape[1]), int(cam.shape[2])],
               "channels": int(activation.shape[1])}
    yield Progress(1.0, "done")
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
    run=run,
    gradient_free={"variant": "scorecam"},
)
