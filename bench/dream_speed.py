"""DeepDream on a 1,024 px photo: seconds per step and peak memory, whole image against tiles.

Seconds per step are the gaps between the dream's frames (one gradient step, its update
and the frame), both settings timed in turn in one process. Peak memory cannot come from
tracemalloc (torch's CPU tensors bypass Python's allocator), so each setting runs one dream
step in a fresh process, with the model loaded and a small dream already run: the process
resets its peak resident size to its current one (``/proc/self/clear_refs``), runs the
step, and reports the peak (``VmHWM``) minus that baseline. Not ``ru_maxrss``: Linux keeps
it across ``exec``, so a child would report its parent's peak. The engine's glibc setting
(keep freed memory) is in force, as in the application. Linux only.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import Row

SIZE = 1024
LAYER = "middle"
TILE = 512
REPEATS = 3


def _setup():
    from engine.data.images import load_image
    from engine.methods import MethodContext
    from engine.models.registry import load_model
    from engine.data.samples import sample_path

    model = load_model()
    image = load_image(sample_path("chelsea"))
    image.image = image.image.resize((SIZE, SIZE))
    return model, MethodContext(model=model, image=image)


def _dream(ctx, steps: int, tile: int, size: int = SIZE) -> list[float]:
    """Run a one-octave dream; the times at which its frames arrived."""
    from engine.core.jobs import drive
    from engine.methods import METHODS

    spec = METHODS["dream"]
    stamps: list[float] = []
    drive(spec.start(ctx, {"layer": LAYER, "steps": steps, "octaves": 1, "size": size, "tile": tile}),
          on_frame=lambda _frame: stamps.append(time.perf_counter()))
    return stamps


def run() -> list[Row]:
    torch.set_num_threads(2)
    model, ctx = _setup()
    _dream(ctx, 1, 0, size=128)  # warm-up
    settings = {"whole image": 0, f"tiles of {TILE} px": TILE}
    samples: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(REPEATS):  # in turn, so a noisy spell hits both alike
        for name, tile in settings.items():
            stamps = _dream(ctx, 3, tile)
            samples[name] += [b - a for a, b in zip(stamps, stamps[1:])]
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    peaks = {name: _peak_in_child(tile) for name, tile in settings.items()}
    agreement = _gradient_agreement(model, ctx)
    whole, tiled = seconds["whole image"], seconds[f"tiles of {TILE} px"]
    rows = [
        Row(f"dream step, {SIZE} px, {LAYER}, whole image", whole, "s", note=f"peak +{peaks['whole image']:.0f} MB"),
        Row(f"dream step, {SIZE} px, {LAYER}, tiles of {TILE} px", tiled, "s", reference=whole,
            note=f"peak +{peaks[f'tiles of {TILE} px']:.0f} MB; reference: the whole image at once"),
    ]
    for layer, (cosine, windows) in agreement.items():
        rows.append(Row(f"tiled gradient vs whole, {SIZE} px, {layer}", cosine, "cosine", note=f"{windows} windows"))
    return rows


def _gradient_agreement(model, ctx) -> dict[str, tuple[float, int]]:
    """Cosine between the tiled and the whole image's gradient, per preset layer, with the
    margin the dream uses (exact for layers whose field fits in it, close for deeper ones)."""
    from engine.methods.dream import DreamObjective, _Tiles
    from engine.optvis.tiling import tiled_gradient

    unit = model.preprocessing.to_unit_tensor(ctx.image.image, SIZE)
    agreement = {}
    for keyword in ("early", "middle", "late"):
        path = model.layer_presets[keyword]
        objective = DreamObjective(model, {path: 1.0}, path)
        pixels = unit.clone().requires_grad_(True)
        loss, _ = objective(pixels)
        whole, = torch.autograd.grad(loss, pixels)
        tiles = _Tiles(ctx, objective, TILE, *unit.shape[-2:])
        windows = tiles.windows((TILE // 3, TILE // 5))
        tiled, _, _ = tiled_gradient(lambda crop, window: objective(crop, window, tiles.numel), unit, windows)
        cosine = float(torch.nn.functional.cosine_similarity(tiled.flatten(), whole.flatten(), dim=0))
        agreement[f"{keyword} ({path}, margin {tiles.margin} px)"] = (cosine, len(windows))
    return agreement


def _peak_in_child(tile: int) -> float:
    """MB the resident size grew by during one dream step at SIZE px, in a fresh process."""
    root = Path(__file__).resolve().parents[1]
    output = subprocess.run([sys.executable, "-m", "bench.dream_speed", "--peak", str(tile)], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_mb"]


def _memory_mb(field: str) -> float:
    """A line of /proc/self/status in MB: VmRSS (resident now) or VmHWM (its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure_peak(tile: int) -> None:
    from engine.core.runtime import configure_process

    configure_process()
    torch.set_num_threads(2)
    _, ctx = _setup()
    _dream(ctx, 1, tile, size=128)  # the model's first run and the feature cache, before the baseline
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak resident size starts again from the current one
    before = _memory_mb("VmRSS")
    _dream(ctx, 1, tile)
    peak = _memory_mb("VmHWM")
    print(json.dumps({"tile": tile, "baseline_mb": round(before, 1), "peak_mb": round(max(0.0, peak - before), 1)}))


if __name__ == "__main__":  # the child process of _peak_in_child; the table comes from `python -m bench dream_speed`
    if len(sys.argv) != 3 or sys.argv[1] != "--peak":
        sys.exit("run it as: python -m bench dream_speed")
    _measure_peak(int(sys.argv[2]))
