"""Scoring maps: six methods' deletion and insertion curves on one 224 px photo, bundled model.

The maps are made first (untimed): saliency, SmoothGrad, integrated gradients, Grad-CAM,
guided backprop and RISE on their defaults for the photo's top class. Then timed, as the
Compare view and ``evaluate`` run them: each map's deletion and insertion curves, 50
steps each (51 forward passes a curve, batched through the fast copy), blur baseline, and
the same with ROAD (nine imputations and forward passes each way).

Beside Quantus (the bench extra): its ``PixelFlipping`` is the deletion curve. On the same
six maps, model (normalising wrapper, 0..1 input) and photo (its top 216 rows), with a
gray baseline (0.5) and 1,008 pixels a step (48 steps; Quantus flips 3 x 1,008 channel
values a step, the map repeated over the colours, so the three of a pixel are tied and
adjacent), its curve is compared point by point with ours after each step, and its area
(the trapezoid rule with dx 1, its ``calculate_auc``) with the same rule on our points. Quantus runs a forward pass a step; ours batches the steps.
"""

from __future__ import annotations

import torch

from bench.common import Row, median_time

METHODS = ("saliency", "smoothgrad", "integrated-gradients", "gradcam", "guided-backprop", "rise")
STEPS = 50


def run() -> list[Row]:
    from engine.core.jobs import drive
    from engine.data.images import load_image
    from engine.data.samples import sample_path
    from engine.evaluation.perturbation import perturbation_curve, road_curve
    from engine.evaluation.report import input_map
    from engine.methods import METHODS as SPECS, MethodContext
    from engine.models.registry import load_model

    torch.set_num_threads(2)
    model = load_model()
    image = load_image(sample_path("chelsea"))
    image.image = image.image.resize((224, 224))
    ctx = MethodContext(model=model, image=image)
    target = ctx.resolve_target(None)["index"]
    unit = model.preprocessing.to_unit_tensor(image.image)
    maps = [input_map(drive(SPECS[m].start(ctx, {"target": target})), 224, 224, m) for m in METHODS]

    def curves():
        for values in maps:
            for kind in ("deletion", "insertion"):
                drive(perturbation_curve(model, unit, values, target, kind, "blur", STEPS))

    def road():
        for values in maps:
            for order in ("morf", "lerf"):
                drive(road_curve(model, unit, values, target, order))

    rows = []
    try:
        import quantus
    except ImportError:
        quantus = None
    if quantus is not None:
        rows.append(_beside_quantus(quantus, model, unit, maps, target))
    return [
        *rows,
        Row(f"deletion + insertion curves of {len(maps)} maps, {STEPS} steps, 224 px", median_time(curves, repeats=3),
            "s", target="under 10 s", note=f"{len(maps) * 2 * (STEPS + 1)} forward passes, batched"),
        Row(f"ROAD (MoRF + LeRF, 9 removals each) of {len(maps)} maps, 224 px", median_time(road, repeats=3), "s",
            note="one sparse solve per removal (scipy), then the forward passes"),
    ]


# Quantus wants its step (in channel values) to divide H x W, and flips C x H x W values:
# with 216 x 224 = 48 x 1,008 pixels, 3 x 1,008 values a step are whole pixels in 48 steps.
QUANTUS_ROWS, QUANTUS_STEPS = 216, 48


def _beside_quantus(quantus, model, unit, maps, target) -> Row:
    import numpy as np

    from bench.common import median_times_interleaved
    from engine.core.jobs import drive
    from engine.evaluation.perturbation import perturbation_curve, relevance_ranks

    class Normalised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = model.module

        def forward(self, pixels):
            return self.module(model.preprocessing.normalise(pixels))

    reference = Normalised().eval()
    unit = unit[..., :QUANTUS_ROWS, :].contiguous()  # the photo's top 216 rows, the maps' too
    # Each map as its order, ties broken in reading order (as ours breaks them): Grad-CAM's
    # ReLU leaves 10,798 pixels at 0, which Quantus would order by channel value among themselves.
    tied = [int(values[:QUANTUS_ROWS].size - np.unique(values[:QUANTUS_ROWS]).size) for values in maps]
    maps = [-relevance_ranks(values[:QUANTUS_ROWS]).astype(np.float64) for values in maps]
    x = unit.numpy()
    pixels = unit.shape[-1] * unit.shape[-2] // QUANTUS_STEPS
    metric = quantus.PixelFlipping(features_in_step=3 * pixels, perturb_baseline=0.5, normalise=False,
                                   disable_warnings=True)
    found = {}

    def ours():
        found["ours"] = [drive(perturbation_curve(model, unit, values, target, "deletion", "gray", QUANTUS_STEPS))
                         for values in maps]

    def theirs():
        found["quantus"] = [metric(model=reference, x_batch=x, y_batch=np.array([target]),
                                   a_batch=values[None, None],
                                   channel_first=True, device="cpu",
                                   softmax=True)[0] for values in maps]

    ours_s, quantus_s = median_times_interleaved([ours, theirs], repeats=3)
    curve_gap = max(float(np.max(np.abs(np.asarray(q) - o.probabilities[1:])))
                    for o, q in zip(found["ours"], found["quantus"]))
    auc_gap = max(abs(float(np.trapezoid(o.probabilities[1:])) - float(np.trapezoid(q)))
                  for o, q in zip(found["ours"], found["quantus"]))
    return Row(f"deletion curves of {len(maps)} maps beside Quantus PixelFlipping, 48 steps, 216 x 224 px", ours_s, "s",
               reference=quantus_s, target="the same AUC within 1e-3",
               note=f"largest difference: a curve point {curve_gap:.1e}, an AUC (Quantus's rule) {auc_gap:.1e}; maps as "
                    f"their orders, ties (up to {max(tied):,} pixels) broken in reading order for both")
