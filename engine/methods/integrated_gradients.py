"""``integrated-gradients``: the path integral of the gradient from a baseline to the image (Sundararajan et al. 2017).

    IG_i(x) = (x_i - x'_i) * integral_0^1 d score_c / d x_i at (x' + a (x - x')) da

in 0..1 pixel units, with x' the baseline: ``black`` (all 0, the default), ``white``
(all 1) or ``blur`` (the image under a Gaussian blur of sigma = 10% of its shorter side:
colours and layout stay, the object's detail goes). The integral is computed with
``--steps``-point Gauss-Legendre quadrature on [0, 1], exactly as Captum's
``IntegratedGradients`` does by default (``method="gausslegendre"``): the steps run
``--batch`` at a time, one forward and backward pass per batch.

Completeness: the attributions sum to score(x) - score(x'). The difference between the
two, ``completeness_gap`` (and ``relative_gap``, divided by |score(x) - score(x')|), says
how well the steps approximate the integral. It is no fixed fraction: ReLU6's kinks make
the integrand jump along the path, so the gap falls unevenly as steps are added. On the
bundled model and the sample photos (black baseline, top-1 class) it measured 2.8-10.7% at
the default 32 steps (five photos) and 0.3-1.7% at 128 (four); the note under the map states the run's own gap
and asks for more steps above 2%. The map is the sum
over colour channels, which keeps that property, drawn with diverging colours: red
raises the score, blue lowers it.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.attribution.maps import accumulate_gradients, automatic_batch, map_display, map_metrics, refuse_blank, signed_map
from engine.core.errors import MethodInputError
from engine.anatomy.hooks import first_tensor
from engine.attribution.gradients import class_score, gradient_network
from engine.core.jobs import Progress, Result, within
from engine.attribution import baselines
from engine.methods.params import BATCH, OVERLAY, TARGET, MethodSpec, Param

BASELINES = ("black", "white", "blur")
GAP_WORTH_STEPS = 0.02  # a relative completeness gap above this is worth more steps, the note says


def baseline_image(unit: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline x' for a 1 x 3 x H x W image in 0..1 units (``engine.attribution.baselines``)."""
    try:
        return baselines.baseline_image(unit, kind, BASELINES)
    except ValueError as error:
        raise MethodInputError(str(error)) from None


def baseline_logits(model, network, start: torch.Tensor, kind: str) -> torch.Tensor:
    """The baseline's logits (a vector): a flat baseline is the same picture for every photo
    of a size, so its logits are kept with the model until its weights change."""
    def compute() -> torch.Tensor:
        with torch.no_grad():
            normalised = model.preprocessing.normalise(start)
            return first_tensor(model.state.run_in_fast_layout(network, normalised))[0].float().cpu()

    if not baselines.is_flat(kind):
        return compute()
    return model.state.for_these_weights(("flat baseline logits", kind, tuple(start.shape), str(start.device)), compute)


def gauss_legendre(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes in [0, 1] and weights (summing to 1) of the ``steps``-point Gauss-Legendre rule."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return torch.from_numpy(0.5 * (nodes + 1)).float(), torch.from_numpy(0.5 * weights).float()


def run(ctx, p):
    image = ctx.require_image()
    steps, baseline = p.steps, p.baseline
    resolved = ctx.resolve_target(p.target)
    label = resolved["label"]
    score = class_score(resolved["index"])
    unit = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    start = baseline_image(unit, baseline)
    height, width = unit.shape[-2:]
    batch = min(p.batch or automatic_batch(ctx.model, height, width), steps)
    p.record(target=resolved["index"], batch=batch)
    alphas, weights = gauss_legendre(steps)
    alphas = alphas.to(ctx.device)
    path = unit - start

    def on_path(first: int, count: int) -> torch.Tensor:
        return start + alphas[first:first + count].view(-1, 1, 1, 1) * path

    yield Progress(0.0, f"{steps} steps from a {baseline} baseline, {batch} per pass")
    network = gradient_network(ctx.model, unit)
    # The image's score is on hand when its predictions were shown (the window shows them
    # on opening it), and a flat baseline's once the model has seen it at this size.
    image_score = float(ctx.features.logits(ctx.model, image)[0, resolved["index"]])
    baseline_score = float(baseline_logits(ctx.model, network, start, baseline)[resolved["index"]])
    integral, _ = yield from within(
        accumulate_gradients(ctx.model, network, on_path, weights, score, batch, ctx.cancel, "steps"), 0.02, 1.0)
    attribution = path * integral
    total = float(attribution.sum())
    change = image_score - baseline_score
    gap = total - change
    values = signed_map(attribution)
    refuse_blank(values, f"the integrated gradients of '{label}' are zero everywhere: the image and the {baseline} "
                         f"baseline give '{label}' the same score along the whole path; try another baseline")
    relative_gap = abs(gap) / max(abs(change), 1e-12)
    # The gap is stated with the map: it is not small at every step count (see the README's
    # measurements), and only this run's own figure tells the user whether to add steps.
    note = (f"integrated gradients of '{label}' from a {baseline} baseline, {steps} steps; "
            f"sum {total:.3g} vs score change {change:.3g}, gap {relative_gap:.1%}"
            + ("; more steps shrink it" if relative_gap > GAP_WORTH_STEPS else ""))
    display = map_display(image, values, signed=True, overlay=p.overlay, legend=f"contribution to score({label})",
                          note=note)
    metrics = {**map_metrics(values), "score": image_score, "baseline_score": baseline_score, "attribution_sum": total,
               "completeness_gap": gap, "relative_gap": relative_gap, "steps": steps,
               "batch": batch}
    return Result(display=display, array=values, target=resolved, metrics=metrics)


SPEC = MethodSpec(
    id="integrated-gradients",
    title="Integrated gradients",
    summary="Each pixel's share of the class score, integrating the gradient from a baseline image to this one "
            "(Sundararajan et al. 2017).",
    params=(
        TARGET,
        Param("steps", "int", 32, "points on the path from the baseline to the image (Gauss-Legendre)", minimum=1,
              maximum=1000),
        Param("baseline", "choice", "black", "where the path starts: black, white, or a blurred copy of the image",
              choices=BASELINES),
        BATCH,
        OVERLAY,
    ),
    run=run,
)
