"""Class-viz quality: does the default picture keep its class under random crops and shifts?

For a few classes the default ``class-viz`` picture (seed 0) is scored by
``engine.optvis.robustness.class_probability_under_crops``: the mean probability of the
class over 32 random crops of 60-100% of the side, resized back. The reference is the same
measure for the picture the previous defaults made: the whole picture scored once a step
(no crops), a 1/f spectrum, lr 0.05, the same border, jitter, zoom and turns. Higher is
better, so the last column is ours over the reference. The crops the defaults train on
(40-100%) resemble the measure's, so the measure alone flatters them: look at the figure.

``python -m bench.class_viz_quality resources/class-viz.png`` also draws the README's
figure from the same pictures: the defaults' row above the previous defaults' row (one
view a step), each picture captioned with its class and that measure.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from bench.common import Row

CLASSES = ("Egyptian cat", "goldfish", "volcano", "espresso")
CROPS = 32
OLD_DEFAULTS = dict(views=1, spectrum_decay=1.0, lr=0.05)


class QualityRow(Row):
    @property
    def ratio(self) -> str:
        return f"{self.value / self.reference:.2f}x better" if self.reference and self.value else ""


@dataclass
class Made:
    picture: torch.Tensor  # 1 x 3 x H x W in 0..1
    probability: float  # the class's mean probability under the crops
    seconds: float


def _make(model, ctx, label: str, **params) -> Made:
    from engine.core.jobs import drive
    from engine.methods import METHODS
    from engine.optvis.robustness import class_probability_under_crops

    start = time.perf_counter()
    result = drive(METHODS["class-viz"].start(ctx, dict(target=label, seed=0, **params)))
    seconds = time.perf_counter() - start
    picture = torch.from_numpy(result.array).permute(2, 0, 1)[None]
    return Made(picture, class_probability_under_crops(model, picture, result.target["index"], CROPS), seconds)


def measure() -> dict[str, tuple[Made, Made]]:
    """Class label -> (the defaults' picture, the previous defaults' picture)."""
    from engine.methods import MethodContext
    from engine.models.registry import load_model

    torch.set_num_threads(2)
    model = load_model()
    ctx = MethodContext(model=model, image=None)
    return {label: (_make(model, ctx, label), _make(model, ctx, label, **OLD_DEFAULTS)) for label in CLASSES}


def rows_of(made: dict[str, tuple[Made, Made]]) -> list[Row]:
    return [QualityRow(f"class-viz '{label}': mean p under {CROPS} crops", new.probability, "p", target="higher",
                       reference=old.probability,
                       note=f"defaults {new.seconds:.0f} s, one view a step {old.seconds:.0f} s (reference)")
            for label, (new, old) in made.items()]


def run() -> list[Row]:
    return rows_of(measure())


def figure(made: dict[str, tuple[Made, Made]], path: str) -> None:
    from PIL import Image

    from engine.models.preprocessing import unit_tensor_to_rgb
    from engine.view.gallery import Tile, render_gallery

    def tiles(which: int) -> list[Tile]:
        return [Tile(Image.fromarray(unit_tensor_to_rgb(pair[which].picture[0])),
                     caption=f"{label}: p {pair[which].probability:.2f}") for label, pair in made.items()]

    mosaic, _regions = render_gallery([("defaults", tiles(0)), ("one view a step", tiles(1))], tile=224)
    Image.fromarray(mosaic).save(path)


if __name__ == "__main__":
    from bench.common import print_table

    made = measure()
    print_table(rows_of(made))
    if len(sys.argv) > 1:
        figure(made, sys.argv[1])
