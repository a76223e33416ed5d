"""Timing helpers: this machine is noisy, so every figure is a median of several runs."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass
class Row:
    name: str
    value: float
    unit: str
    target: str = ""
    reference: float | None = None  # the same work done by the reference implementation
    note: str = ""
    higher_is_better: bool = False  # a quality (an IoU), not a time: the ratio is ours over the reference

    @property
    def ratio(self) -> str:
        if not (self.reference and self.value):
            return ""
        return f"{(self.value / self.reference if self.higher_is_better else self.reference / self.value):.2f}x"


def median_time(fn, repeats: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def median_times_interleaved(functions: list, repeats: int = 9, warmup: int = 1) -> list[float]:
    """Medians for several functions timed in turn, so a noisy spell hits them all alike."""
    for fn in functions:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for fn, bucket in zip(functions, samples):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in samples]


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "ours", "reference", "speed-up", "target", "note")
    table = [header] + [
        (r.name, f"{r.value:.4g} {r.unit}", f"{r.reference:.4g} {r.unit}" if r.reference else "", r.ratio, r.target, r.note)
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for index, row in enumerate(table):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def bundled_photo_context(sample: str = "chelsea"):
    """The bundled model, a sample photo and a method context over them, on 2 threads
    (this machine's cores), as most benchmarks start."""
    import torch

    from engine.data.images import load_image
    from engine.methods import MethodContext
    from engine.models.registry import load_model
    from engine.data.samples import sample_path

    torch.set_num_threads(2)
    model = load_model()
    image = load_image(sample_path(sample))
    return model, image, MethodContext(model=model, image=image)
