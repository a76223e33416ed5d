"""``saliency``: |d score_c / d x|, the maximum over colour channels (Simonyan et al. 2014).

score_c is the class's logit (the unnormalised score): the softmax would tie the map to
every other class as well. The map has the model input's resolution and covers the
whole image, so it lies exactly over the picture.
"""

from __future__ import annotations

from engine.attribution.maps import magnitude_map, map_display, map_metrics, refuse_blank
from engine.attribution.gradients import class_score, gradient_network, score_gradient
from engine.core.jobs import Progress, Result
from engine.methods.params import OVERLAY, TARGET, MethodSpec


def run(ctx, p):
    image = ctx.require_image()
    resolved = ctx.resolve_target(p.target)
    p.record(target=resolved["index"])
    label = resolved["label"]
    yield Progress(0.2, f"gradient of '{label}'")
    unit = ctx.model.preprocessing.to_unit_tensor(image.image)
    gradient, scores = score_gradient(ctx.model, unit, class_score(resolved["index"]), gradient_network(ctx.model, unit))
    saliency = magnitude_map(gradient)
    refuse_blank(saliency, f"the gradient of '{label}' is zero everywhere: nothing in this image changes its score")
    display = map_display(image, saliency, signed=False, overlay=p.overlay, legend=f"|d score({label}) / d pixel|",
                          note=f"saliency of '{label}' at {saliency.shape[1]}x{saliency.shape[0]}")
    yield Progress(1.0, "done")
    return Result(display=display, array=saliency, target=resolved,
                  metrics={**map_metrics(saliency), "score": float(scores[0])})


SPEC = MethodSpec(
    id="saliency",
    title="Saliency",
    summary="Which pixels the class score is most sensitive to: |d score / d pixel|, max over colour.",
    params=(TARGET, OVERLAY),
    run=run,
)
