"""``smoothgrad``: the class-score gradient averaged over noisy copies of the image (Smilkov et al. 2017).

    M(x) = 1/n sum_i d score_c / d x at (x + e_i),   e_i ~ N(0, sigma^2),   sigma = noise * (x_max - x_min)

with x in 0..1 pixel units, so ``--noise`` is sigma as a fraction of the 0..1 range (the
paper finds 10-20% best). The gradients are averaged with their signs, as the paper
defines it (Captum: ``NoiseTunnel(Saliency(...)).attribute(nt_type="smoothgrad", abs=False)``);
the map is then |M| reduced like ``saliency``'s: the maximum over colour channels. Noisy
pixels are not clipped to 0..1, as in the paper.

The samples run ``--batch`` at a time, one forward and backward pass per batch. Each
sample's noise is drawn on its own, in order, from ``--seed``'s generator, so a seed gives
the same map at any batch size.
"""

from __future__ import annotations

import torch

from engine.attribution.maps import accumulate_gradients, automatic_batch, magnitude_map, map_display, map_metrics, refuse_blank
from engine.attribution.gradients import class_score, gradient_network
from engine.core.jobs import Progress, Result
from engine.methods.params import BATCH, OVERLAY, SEED, TARGET, MethodSpec, Param


def run(ctx, p):
    image = ctx.require_image()
    samples, noise = p.samples, p.noise
    resolved = ctx.resolve_target(p.target)
    label = resolved["label"]
    unit = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    height, width = unit.shape[-2:]
    batch = min(p.batch or automatic_batch(ctx.model, height, width), samples)
    p.record(target=resolved["index"], batch=batch)
    generator = ctx.generator(p.seed)

    def noisy(start: int, count: int) -> torch.Tensor:
        # One draw per sample, in order: the same noise whatever the batch size. Drawn into
        # the batch itself, which becomes the noisy images in place: no copies of it.
        draws = torch.empty((count, *unit.shape[1:]))
        for sample in draws:
            sample.normal_(generator=generator)
        return draws.to(ctx.device).mul_(noise).add_(unit)

    weights = torch.full((samples,), 1.0 / samples)
    yield Progress(0.0, f"{samples} noisy copies of the image, {batch} per pass")
    network = gradient_network(ctx.model, unit)
    mean_gradient, scores = yield from accumulate_gradients(ctx.model, network, noisy, weights,
                                                            class_score(resolved["index"]), batch, ctx.cancel,
                                                            "noisy samples")
    smooth = magnitude_map(mean_gradient)
    refuse_blank(smooth, f"the gradient of '{label}' is zero everywhere: nothing in this image changes its score")
    note = f"SmoothGrad of '{label}': {samples} samples, noise {noise:g} of the 0..1 range"
    display = map_display(image, smooth, signed=False, overlay=p.overlay, legend=f"|mean d score({label}) / d pixel|",
                          note=note)
    metrics = {**map_metrics(smooth), "samples": samples, "sigma": float(noise), "batch": batch,
               "mean_noisy_score": float(scores.mean())}
    return Result(display=display, array=smooth, target=resolved, metrics=metrics)


SPEC = MethodSpec(
    id="smoothgrad",
    title="SmoothGrad",
    summary="Saliency averaged over noisy copies of the image: less speckle, the object stands out (Smilkov et al. 2017).",
    params=(
        TARGET,
        Param("samples", "int", 25, "noisy copies averaged", minimum=1, maximum=1000),
        Param("noise", "float", 0.15, "noise standard deviation as a fraction of the 0..1 pixel range", minimum=0.0,
              maximum=1.0),
        BATCH,
        SEED,
        OVERLAY,
    ),
    run=run,
)
