"""``saliency``: |d score_c / d x|, the maximum over colour channels (Simonyan et al. 2014).

score_c is the class's logit (the unnormalised score): the softmax would tie the map to
every other class as well. The map has the model input's resolution and covers the
whole image, so it lies exactly over the picture.

For the photo on show, whose forward pass the window keeps with its graph
(``engine.anatomy.activations.PixelGraph``), the map takes a backward pass alone, through
the model itself. Other photos (a folder run's) take a forward and backward pass through
the fast copy, whose folded norms round differently: at a ReLU6's kink a pixel may differ
(the bundled model, the coffee photo: 60 of the picture's 353,892 values, by at most 3 of 255).
"""

from __future__ import annotations

import torch

from engine.attribution.maps import automatic_batch, magnitude_map, map_display, map_metrics, refuse_blank
from engine.attribution.gradients import class_scores, gradient_network, score_gradient
from engine.core.errors import MethodInputError
from engine.core.jobs import Progress, Result
from engine.methods.params import OVERLAY, TARGET, MethodSpec, one_photo


def run_many(contexts, bound):
    """The photos' maps (one model, one input size), as many to a backward pass as fit."""
    model = contexts[0].model
    resolved = []
    for ctx, p in zip(contexts, bound):
        ctx.require_image()
        resolved.append(ctx.resolve_target(p.target))
        p.record(target=resolved[-1]["index"])
    yield Progress(0.2, f"gradient of '{resolved[0]['label']}'" if len(contexts) == 1
                   else f"gradients of {len(contexts)} photos")
    kept = _kept_pass(contexts)
    gradient = None if kept is None else kept.graph.score_gradient(model, resolved[0]["index"])
    if gradient is not None:
        yield Progress(1.0, "done")
        return [_outcome(contexts[0].image, bound[0], resolved[0], gradient, float(kept.logits[0, resolved[0]["index"]]))]
    units = torch.cat([model.preprocessing.to_unit_tensor(ctx.image.image) for ctx in contexts])
    network = gradient_network(model, units)
    per_pass = automatic_batch(model, *units.shape[-2:])
    outcomes = []
    for first in range(0, len(contexts), per_pass):
        contexts[0].cancel.check()
        rows = range(first, min(first + per_pass, len(contexts)))
        gradient, scores = score_gradient(model, units[first:rows.stop], class_scores([resolved[i]["index"] for i in rows]),
                                          network)
        outcomes += [_outcome(contexts[row].image, bound[row], resolved[row], gradient[offset:offset + 1],
                              float(scores[offset])) for offset, row in enumerate(rows)]
    yield Progress(1.0, "done")
    return outcomes


def _kept_pass(contexts):
    """The features of a lone photo whose forward pass is kept with its graph, else None."""
    if len(contexts) != 1:
        return None
    features = contexts[0].features.peek(contexts[0].model, contexts[0].image)
    return features if features is not None and features.graph is not None else None


def _outcome(image, p, resolved, gradient, score: float) -> Result | MethodInputError:
    """One photo's Result, or the refusal of its blank map (the other photos' stand)."""
    try:
        return _result(image, p, resolved, gradient, score)
    except MethodInputError as refusal:
        return refusal


def _result(image, p, resolved, gradient, score: float) -> Result:
    label = resolved["label"]
    saliency = magnitude_map(gradient)
    refuse_blank(saliency, f"the gradient of '{label}' is zero everywhere: nothing in this image changes its score")
    display = map_display(image, saliency, signed=False, overlay=p.overlay, legend=f"|d score({label}) / d pixel|",
                          note=f"saliency of '{label}' at {saliency.shape[1]}x{saliency.shape[0]}")
    return Result(display=display, array=saliency, target=resolved, metrics={**map_metrics(saliency), "score": score})


SPEC = MethodSpec(
    id="saliency",
    title="Saliency",
    summary="Which pixels the class score is most sensitive to: |d score / d pixel|, max over colour.",
    params=(TARGET, OVERLAY),
    run=one_photo(run_many),
    run_many=run_many,
)
