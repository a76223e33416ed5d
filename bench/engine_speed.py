"""Engine figures: layer switch from the feature cache, saliency beside Captum, dream steps."""

from __future__ import annotations

import torch

from engine.anatomy.activations import compute_features
from engine.attribution.gradients import class_score_gradient
from engine.data.images import load_image
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.models.registry import load_model
from engine.data.samples import sample_path

from bench.common import Row, median_time, median_times_interleaved


def _square_photo(size: int = 224):
    image = load_image(sample_path("chelsea"))
    image.image = image.image.resize((size, size))
    return image


def run() -> list[Row]:
    torch.set_num_threads(2)
    model = load_model()
    image = _square_photo()
    ctx = MethodContext(model=model, image=image)
    rows = []

    first_forward = median_time(lambda: compute_features(model, image, keep_graph=True), repeats=5)  # as the window opens a photo
    rows.append(Row("forward + cache every layer, 224 px", first_forward * 1000, "ms", note="once per image, its graph kept"))

    ctx.image_features()
    layers = ["stem.relu6", "stages.1.1.expand_relu6", "stages.3.2.expand_relu6", "stages.5.3.expand_relu6", "head.relu6"]
    spec = METHODS["activations"]

    def switch_layers():
        for layer in layers:
            drive(spec.start(ctx, {"layer": layer}))

    per_click = median_time(switch_layers, repeats=7) / len(layers)
    rows.append(Row("activation grid on layer click (engine)", per_click * 1000, "ms", "< 150 ms", note="cached forward"))

    saliency = METHODS["saliency"]
    unit = model.preprocessing.to_unit_tensor(image.image)

    def our_map():
        return class_score_gradient(model, unit, 281)[0].abs().amax(dim=1)

    captum_map = _captum_saliency(model)
    if captum_map is not None:
        ours, reference = median_times_interleaved([our_map, lambda: captum_map(unit)], repeats=11)
        difference = float((our_map() - captum_map(unit)).abs().max())
        rows.append(Row("saliency map, 224 px", ours * 1000, "ms", ">= 1x Captum", reference=reference * 1000,
                        note=f"captum.attr.Saliency; max difference {difference:.1e}"))
    else:
        rows.append(Row("saliency map, 224 px", median_time(our_map, repeats=11) * 1000, "ms",
                        note="captum not installed (make bench installs it)"))
    def whole():
        return drive(saliency.start(ctx, {"target": 281}))

    if captum_map is not None:
        ours, reference = median_times_interleaved([whole, lambda: captum_map(unit)], repeats=11)
        rows.append(Row("saliency of the photo on show, end to end", ours * 1000, "ms", ">= 1x Captum",
                        reference=reference * 1000, note="map + picture for the canvas, one backward pass through "
                                                         "the graph kept from opening the photo; Captum's map alone"))
    else:
        rows.append(Row("saliency of the photo on show, end to end", median_time(whole, repeats=11) * 1000, "ms",
                        note="map + picture for the canvas"))

    dream = METHODS["dream"]
    steps = 10
    seconds = median_time(lambda: drive(dream.start(ctx, {"steps": steps, "octaves": 1, "size": 224})), repeats=3)
    rows.append(Row("dream step, 224 px, middle layer", seconds / steps * 1000, "ms", "< 500 ms (cancel latency)"))
    return rows


def _captum_saliency(model):
    """Captum's Saliency on the same model, normalisation included, or None without Captum."""
    try:
        from captum.attr import Saliency
    except ImportError:
        return None

    class Normalised(torch.nn.Module):
        def forward(self, x):
            return model.module(model.preprocessing.normalise(x))

    explainer = Saliency(Normalised())
    return lambda unit: explainer.attribute(unit.clone().requires_grad_(True), target=281, abs=True).amax(dim=1)
