"""Occlusion beside Captum's ``Occlusion``: the same 729 windows on the same photo, one process."""

from __future__ import annotations

import time

import numpy as np
import torch

from engine.data.images import load_image
from engine.core.jobs import drive
from engine.core.memory import keep_freed_memory
from engine.methods import METHODS, MethodContext
from engine.models.registry import load_model
from engine.data.samples import sample_path

from bench.common import Row, median_time, median_times_interleaved

TARGET, WINDOW, STRIDE = 281, 16, 8  # tabby; 27 x 27 = 729 windows on a 224 px input
CAPTUM_PPE = (1, 8, 32, 64)  # Captum's perturbations_per_eval tried; the fastest is compared
REPEATS = 3


def run() -> list[Row]:
    torch.set_num_threads(2)
    # As the engine does at start-up: every run below, Captum's included, allocates with
    # glibc keeping freed memory, so the comparison is of the two implementations alone.
    kept = keep_freed_memory()
    model = load_model()
    image = load_image(sample_path("chelsea"))
    image.image = image.image.resize((224, 224))
    ctx = MethodContext(model=model, image=image)
    spec = METHODS["occlusion"]
    params = spec.bind({"target": TARGET, "window": WINDOW, "stride": STRIDE, "fill": "gray"})

    def ours():
        return drive(spec.start(ctx, params))

    memory = "glibc keeps freed memory" if kept else "glibc settings not applied"
    captum = _captum_occlusion(model, image)
    if captum is None:
        seconds = median_time(ours, repeats=REPEATS)
        return [Row("occlusion, 224 px, 729 windows", seconds, "s", note=f"captum not installed (make bench installs it); {memory}")]

    result = ours()  # also the warm-up
    # One timing per setting to find Captum's fastest, then that one interleaved with ours.
    single = {}
    for ppe in CAPTUM_PPE:
        start = time.perf_counter()
        reference_map = captum(ppe)
        single[ppe] = time.perf_counter() - start
    best = min(single, key=single.get)
    ours_s, captum_s = median_times_interleaved([ours, lambda: captum(best)], repeats=REPEATS, warmup=0)
    difference = float(np.abs(result.display.values - reference_map).max())
    tried = ", ".join(f"{ppe}: {seconds:.1f} s" for ppe, seconds in single.items())
    return [Row("occlusion, 224 px, 729 windows", ours_s, "s", ">= 1.5x Captum", reference=captum_s,
                note=f"captum.attr.Occlusion at perturbations_per_eval {best} (one run each: {tried}); "
                     f"max map difference {difference:.1e}; batch {result.metrics['batch']}; {memory}")]


def _captum_occlusion(model, image):
    """Captum's Occlusion of softmax(model(x))[tabby] with a gray (0.5) baseline, as a 224x224 map."""
    try:
        from captum.attr import Occlusion
    except ImportError:
        return None

    def probabilities(unit):
        return torch.softmax(model.module(model.preprocessing.normalise(unit)), dim=1)

    unit = model.preprocessing.to_unit_tensor(image.image)
    explainer = Occlusion(probabilities)

    def attribute(ppe: int) -> np.ndarray:
        attribution = explainer.attribute(unit, sliding_window_shapes=(3, WINDOW, WINDOW), strides=(3, STRIDE, STRIDE),
                                          baselines=0.5, target=TARGET, perturbations_per_eval=ppe)
        return attribution[0, 0].numpy()  # one window spans the three channels: all three are equal

    return attribute
