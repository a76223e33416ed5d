"""``guided-gradcam``: guided backprop times Grad-CAM, pixel by pixel (Selvaraju et al. 2017).

Guided backprop is sharp but hardly tells classes apart; Grad-CAM tells them apart but is
coarse (one value per cell of a 7x7 map). Their elementwise product, the guided gradient
(per colour channel) times the Grad-CAM map upsampled bilinearly to the model input's
size, is both: Captum's ``GuidedGradCam`` with ``interpolate_mode="bilinear"``. The map
is max over colour channels of |product|, as ``saliency``'s; ``--show rgb`` shows the
product itself as a picture.

One forward pass serves both parts: its graph is walked once with ordinary gradients as
far as the layer (Grad-CAM) and once with the ReLUs guided, down to the pixels.
"""

from __future__ import annotations

from engine.attribution.maps import (cam_layer, grad_cam, gradient_picture, layer_pass, magnitude_map, map_display, map_metrics,
                           picture_display, refuse_blank)
from engine.attribution.gradients import class_score
from engine.attribution.guided import guided_network, guided_relus
from engine.core.jobs import Progress, Result
from engine.methods.params import CAM_LAYER, OVERLAY, SHOW, TARGET, MethodSpec


def run(ctx, p):
    image = ctx.require_image()
    resolved = ctx.resolve_target(p.target)
    label = resolved["label"]
    path = cam_layer(ctx, p.layer)
    p.record(target=resolved["index"], layer=path)
    pixels = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    yield Progress(0.1, f"guided Grad-CAM of '{label}' at {path}")
    network, functional = guided_network(ctx.model, pixels, layer=path)
    with guided_relus(network, functional=functional) as guide:
        activation, layer_gradient, guided, scores = layer_pass(ctx.model, network, pixels, path,
                                                                class_score(resolved["index"]), guide=guide)
    ctx.cancel.check()
    cam, upsampled = grad_cam(activation, layer_gradient, tuple(pixels.shape[-2:]))
    product = guided * upsampled.unsqueeze(1)
    values = magnitude_map(product)
    refuse_blank(values, f"guided Grad-CAM of '{label}' at {path} is zero everywhere: Grad-CAM finds no part of that "
                         f"layer's map raising the score. Try the top class or an earlier layer")
    note = f"guided Grad-CAM of '{label}' at {path} ({cam.shape[1]}x{cam.shape[2]}); {guide.note}"
    if p.show == "rgb":
        display = picture_display(gradient_picture(product), note=note)
    else:
        display = map_display(image, values, signed=False, overlay=p.overlay, legend=f"|guided Grad-CAM of '{label}'|",
                              note=note)
    metrics = {**map_metrics(values), "score": float(scores[0]), "cam_max": float(upsampled.max()),
               "layer_grid": [int(cam.shape[1]), int(cam.shape[2])], "guided_units": guide.units}
    yield Progress(1.0, "done")
    return Result(display=display, array=values, target=resolved, layer=path, metrics=metrics)


SPEC = MethodSpec(
    id="guided-gradcam",
    title="Guided Grad-CAM",
    summary="Guided backprop times Grad-CAM: sharp like the first, specific to the class like the second "
            "(Selvaraju et al. 2017).",
    params=(TARGET, CAM_LAYER, SHOW, OVERLAY),
    run=run,
)
