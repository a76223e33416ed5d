"""Scoring maps: six methods' deletion and insertion curves on one 224 px photo, bundled model.

The maps are made first (untimed): saliency, SmoothGrad, integrated gradients, Grad-CAM,
guided backprop and RISE on their defaults for the photo's top class. Then timed, as the
Compare view and ``evaluate`` run them: each map's deletion and insertion curves, 50
steps each (51 forward passes a curve, batched through the fast copy), blur baseline, and
the same with ROAD (nine imputations and forward passes each way).
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

    return [
        Row(f"deletion + insertion curves of {len(maps)} maps, {STEPS} steps, 224 px", median_time(curves, repeats=3),
            "s", target="under 10 s", note=f"{len(maps) * 2 * (STEPS + 1)} forward passes, batched"),
        Row(f"ROAD (MoRF + LeRF, 9 removals each) of {len(maps)} maps, 224 px", median_time(road, repeats=3), "s",
            note="one sparse solve per removal (scipy), then the forward passes"),
    ]
