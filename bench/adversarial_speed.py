"""adversarial beside a bare PGD loop: what a step costs on top of its forward and backward.

The method renders a captioned mosaic and records it for every step, and checks the
8-bit rounding once the float image is fooled; the bare loop does only the forward,
backward and projected sign step. With eps far too small to succeed, both run exactly
STEPS steps on the same photo.
"""

from __future__ import annotations

import torch

from engine.core.jobs import drive
from engine.methods import METHODS

from bench.common import Row, bundled_photo_context, median_times_interleaved

STEPS, EPS, GOLDFISH = 10, 0.0005, 1
REPEATS = 3


def run() -> list[Row]:
    model, image, ctx = bundled_photo_context()
    spec = METHODS["adversarial"]
    params = spec.bind({"target": GOLDFISH, "eps": EPS, "steps": STEPS})
    original = model.preprocessing.to_unit_tensor(image.image)

    def ours():
        result = drive(spec.start(ctx, params))
        assert result.metrics["steps"] == STEPS and not result.metrics["success"]

    def bare():
        x = original.clone()
        for _ in range(STEPS):
            pixels = x.requires_grad_(True)
            loss = -torch.log_softmax(model.module(model.preprocessing.normalise(pixels)), dim=1)[0, GOLDFISH]
            gradient, = torch.autograd.grad(loss, pixels)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - EPS / 4 * gradient.sign(), original - EPS), original + EPS).clamp(0, 1)
        with torch.no_grad():  # the method also evaluates the last image
            model.module(model.preprocessing.normalise(x))

    ours_s, bare_s = median_times_interleaved([ours, bare], repeats=REPEATS)
    width, height = original.shape[-1], original.shape[-2]
    return [Row(f"adversarial, {width}x{height} input, {STEPS} steps", ours_s / STEPS, "s/step", ">= 0.8x the bare loop",
                reference=bare_s / STEPS, note="reference: forward + backward + projected sign step only, no frames")]
