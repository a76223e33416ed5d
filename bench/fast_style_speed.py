"""Fast style transfer on the CPU: stylising a 512 px picture, and one training step at 256 px.

Both use Johnson's full network (width 32, 5 residual blocks); its speed does not depend
on what it was trained on, so a freshly initialised one stands in for a trained style.
``fast-style`` (the method: file load, resize, forward, conversion) is timed interleaved
with the bare forward pass of the same network, so the ratio is the method's overhead.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.data.images import load_image
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.models.registry import load_model
from engine.data.samples import sample_path
from engine.style.style_library import save_style
from engine.style.style_net import build_style_net

from bench.common import Row, median_times_interleaved

SIDE = 512  # the stylised picture's shorter side
TRAIN_SIZE, TRAIN_BATCH, TRAIN_STEPS = 256, 4, 5
REPEATS = 5


def run() -> list[Row]:
    torch.set_num_threads(2)
    model = load_model()
    image = load_image(sample_path("chelsea"))
    previous = os.environ.get("CONVSCOPE_CACHE")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["CONVSCOPE_CACHE"] = folder  # keep the benchmark's files out of the user's library
        try:
            return [*_stylise(model, image, folder), _train_step(model, folder)]
        finally:
            if previous is None:
                os.environ.pop("CONVSCOPE_CACHE", None)
            else:
                os.environ["CONVSCOPE_CACHE"] = previous


def _stylise(model, image, folder: str) -> list[Row]:
    """The method at Johnson's width and at half of it, interleaved with the bare forward."""
    spec = METHODS["fast-style"]
    ctx = MethodContext(model=model, image=image)
    unit = model.preprocessing.to_unit_tensor(image.image, SIDE)
    full = build_style_net({"styles": 1, "width": 32, "blocks": 5}, generator=torch.Generator().manual_seed(0)).eval()
    paths = {}
    for width in (32, 16):
        net = full if width == 32 else build_style_net({"styles": 1, "width": width, "blocks": 5},
                                                      generator=torch.Generator().manual_seed(0))
        paths[width] = save_style(Path(folder) / f"bench{width}.pt", net, ["bench"], {})

    def method(width: int):
        params = spec.bind({"style_model": str(paths[width]), "size": SIDE})
        return lambda: drive(spec.start(ctx, params))

    def forward():
        with torch.no_grad():
            return full(unit)

    ours, bare, half = median_times_interleaved([method(32), forward, method(16)], repeats=REPEATS)
    height, width = unit.shape[-2:]
    return [
        Row(f"fast-style, {width}x{height} px, CPU", ours, "s/frame", reference=bare,
            note=f"{1 / ours:.2f} frames/s; Johnson network (width 32, 5 blocks); reference: its bare forward "
                 f"({1 / bare:.2f} frames/s); median of {REPEATS}"),
        Row(f"fast-style, {width}x{height} px, CPU, --width 16", half, "s/frame",
            note=f"{1 / half:.2f} frames/s; 3.6x fewer multiply-adds than width 32 (42 k vs 154 k per pixel); "
                 f"median of {REPEATS}"),
    ]


def _train_step(model, folder: str) -> Row:
    """The median time between consecutive steps' frames of one run: a step alone,
    without the set-up (style Grams, preview, saving) a run also does."""
    spec = METHODS["fast-style-train"]
    params = spec.bind({"style": [str(sample_path("coffee"))], "dataset": "samples", "steps": TRAIN_STEPS + 1,
                        "size": TRAIN_SIZE, "batch": TRAIN_BATCH, "save": str(Path(folder) / "train.pt"),
                        "checkpoint_every": 0, "preview_every": 10_000})
    stamps: list[float] = []
    drive(spec.start(MethodContext(model=model, image=None), params), on_frame=lambda _frame: stamps.append(time.perf_counter()))
    per_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    return Row(f"fast-style-train step, batch {TRAIN_BATCH} at {TRAIN_SIZE} px, CPU", per_step, "s/step",
               note=f"median of {TRAIN_STEPS} steps; Johnson network (width 32, 5 blocks), EfficientNet-Lite0 loss; "
                    f"1000 steps ~ {per_step * 1000 / 60:.0f} min")
