"""``saliency``: |d score_c / d x|, the maximum over colour channels (Simonyan et al. 2014).

score_c is the class's logit (the unnormalised score): the softmax would tie the map to
every other class as well. The map has the model input's resolution and covers the
whole image, so it lies exactly over the picture.
"""

from __future__ import annotations

import numpy as np

from ..gradients import class_score_gradient
from ..jobs import Display, Progress, Result
from .base import TARGET, MethodSpec


def run(ctx, target=None):
    image = ctx.require_image()
    resolved = ctx.resolve_target(target)
    yield Progress(0.2, f"gradient of '{resolved['label']}'")
    unit = ctx.model.preprocessing.to_unit_tensor(image.image)
    gradient, logits = class_score_gradient(ctx.model, unit, resolved["index"])
    saliency = gradient.abs().amax(dim=1)[0].cpu().numpy()
    peak = float(saliency.max())
    # Gradients are heavy-tailed: scaling to the maximum would leave all but a few pixels
    # black, so the colour scale tops out at the 99th percentile (as Captum's does).
    top = float(np.percentile(saliency, 99)) or peak or 1.0
    display = Display(rgb=image.to_array(), scalar=saliency, overlay=True, colormap="inferno", levels=(0.0, top),
                      legend=f"|d score({resolved['label']}) / d pixel|",
                      note=f"saliency of '{resolved['label']}' at {saliency.shape[1]}x{saliency.shape[0]}")
    yield Progress(1.0, "done")
    return Result(display=display, array=saliency, target=resolved,
                  metrics={"max": peak, "mean": float(saliency.mean()), "score": float(logits[0, resolved["index"]])},
                  params={"target": resolved["index"]})


SPEC = MethodSpec(
    id="saliency",
    title="Saliency",
    summary="Which pixels the class score is most sensitive to: |d score / d pixel|, max over colour.",
    params=(TARGET,),
    run=run,
)
