"""One optimisation step of class-viz (pixel and Fourier) and of inversion, at 224 px.

Each step is timed inside the real method (its generator advanced to the next Frame:
parameterisation, transforms, forward, backward, Adam, projections, the frame and its
recording), interleaved with the floor it cannot beat: one bare forward + backward of
the model on a leaf tensor of the same size. The ratio says what the machinery costs on top.
"""

from __future__ import annotations

import torch

from engine.anatomy.hooks import forward_to
from engine.data.images import load_image
from engine.core.jobs import Frame
from engine.methods import METHODS, MethodContext
from engine.models.registry import load_model
from engine.optvis.parameterisation import FourierImage
from engine.data.samples import sample_path

from bench.common import Row, median_time, median_times_interleaved

REPEATS = 9


def _stepper(spec_id: str, ctx: MethodContext, params: dict):
    """A function that runs the method's next optimisation step (up to its next Frame)."""
    spec = METHODS[spec_id]
    job = spec.start(ctx, {**params, "steps": 10_000})

    def step():
        while not isinstance(next(job), Frame):
            pass

    return step


def run() -> list[Row]:
    torch.set_num_threads(2)
    model = load_model()
    rows = []

    leaf = torch.rand(1, 3, 224, 224, requires_grad=True)

    def bare_step():
        model.module(model.preprocessing.normalise(leaf))[0, 1].backward()

    blank = MethodContext(model=model, image=None)
    for param in ("fourier", "pixel"):
        step = _stepper("class-viz", blank, {"target": "goldfish", "param": param})
        ours, floor = median_times_interleaved([step, bare_step], repeats=REPEATS)
        rows.append(Row(f"class-viz step, 224 px, {param}", ours * 1000, "ms", reference=floor * 1000,
                        note="reference: bare forward + backward at 224 px (the floor); defaults: pad, jitter, zoom, "
                             "rotate, 4 crops at 160 px"))

    # What the Fourier parameterisation itself costs per step (irfft2, colour, sigmoid and
    # their backward): the difference between the two class-viz rows above.
    fourier = FourierImage.random((1, 3, 224, 224), torch.Generator().manual_seed(0))
    alone = median_time(lambda: fourier.image().sum().backward(), repeats=REPEATS)
    rows.append(Row("Fourier parameterisation alone, 224 px", alone * 1000, "ms",
                    note="image() forward + backward; MKL's FFT threads suffer most when the cores are shared"))

    image = load_image(sample_path("chelsea"))
    image.image = image.image.resize((224, 224))
    photo = MethodContext(model=model, image=image)
    layer = "stages.3.2.expand_relu6"
    step = _stepper("inversion", photo, {"layer": layer})

    def bare_to_layer():
        forward_to(model.module, layer, model.preprocessing.normalise(leaf)).pow(2).sum().backward()

    ours, floor = median_times_interleaved([step, bare_to_layer], repeats=REPEATS)
    rows.append(Row(f"inversion step, 224 px, {layer}", ours * 1000, "ms", reference=floor * 1000,
                    note="reference: bare forward to the layer + backward (the floor); Fourier parameterisation"))
    return rows
