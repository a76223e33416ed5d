"""``occlusion``: how much the class probability drops when a patch of the image is hidden.

Zeiler & Fergus 2014, with the window positions of Captum's ``Occlusion``
(``sliding_window_shapes=(3, window, window)``, ``strides=(3, stride, stride)``): along
each axis of the model input (the whole image resized by the model's preprocessing, no
crop) windows start at 0, stride, 2*stride, ... until one reaches the far edge, so there
are ceil((size - window) / stride) + 1 of them and, when stride does not divide
size - window, the last one is cut off by the edge (it covers only the pixels that are
left). Each window is filled (``gray``: 0.5 in 0..1 pixel units; ``mean``: the model
input's mean colour; ``blur``: the same pixels of a Gaussian-blurred copy, sigma =
window / 2) and the softmax probability of the target class is recorded.

What comes out:

- ``Result.array``: the probability at each window position, rows x cols of positions.
- The picture: the *drop* (base probability minus probability) as a map over the photo,
  at the model input's resolution. Each pixel holds the mean drop over the windows that
  cover it, which is exactly Captum's ``Occlusion`` attribution of
  ``softmax(model(x))[target]`` with the same fill as baseline. Since the windows together
  cover every pixel of the model input, and the model input is the whole image resized,
  the map lies exactly over the picture: the canvas stretches it from the input's size to
  the photo's, corner to corner. (A map of one cell per position stretched over the
  picture would be off by up to half a window, because the positions' centres run from
  window/2 to size - window/2, not from edge to edge.)

Speed (729 windows on a 224 px input, 2 cores: 3.8-4.1 s; Captum's Occlusion at its best
``perturbations_per_eval`` in the same process 6.6-7.2 s, and 18 s without engine.core.memory's
settings; see bench/occlusion_speed.py):

- occluded inputs are built in one preallocated batch buffer (the base input copied in,
  then one window per image pasted from the filled copy, both already normalised and
  channels-last), so nothing is allocated per position;
- batches run under ``torch.inference_mode`` in channels-last layout (a 1.4x faster
  forward on the CPU than the default layout), through the model's fast copy
  (``engine.anatomy.fast_copy``), with BatchNorm folded into the convolutions and activations in place
  (1.25x), and glibc is told to keep freed memory (``engine.core.memory``), so one batch's
  activations reuse the previous batch's pages instead of faulting in fresh ones (2.5x);
- the map shown after each batch is summed with prefix sums, not matrix products: numpy's
  BLAS threads would otherwise spin on the two cores the next forward needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from engine.core.device import is_out_of_memory
from engine.core.errors import MethodInputError
from engine.attribution.gradients import class_probabilities
from engine.core.jobs import Frame, Progress, Result
from engine.view.display import MapOverPhoto
from engine.core.memory import keep_freed_memory
from engine.methods.params import TARGET, MethodSpec, Param, ParamError

FILLS = ("gray", "mean", "blur")
GRAY = 0.5  # in 0..1 pixel units
# Automatic batch: this many 224x224 inputs' worth of pixels per forward. Measured on the
# bundled model, 729 windows, 2 cores, glibc keeping freed memory: from the main thread 8,
# 16 and 32 images per forward all take 4.3 s (4 take 4.9 s); from a worker thread that
# allocated before engine.core.memory took effect 8 takes 7.1 s and 16 or 32 take 9.9 s (its
# arena's heaps hold at most 64 MiB, and at 16 the largest activations no longer fit).
# Small batches also mean more frames and cancel checks.
CPU_BATCH_PIXELS = 8 * 224 * 224
CUDA_BATCH_PIXELS = 64 * 224 * 224
MAX_BATCH = 256


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """First pixel of each window along one axis (Captum's positions; the last may be cut off)."""
    return np.arange(-(-(size - window) // stride) + 1) * stride


def covering(size: int, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel along one axis, the first and the last window covering it.

    The windows covering a pixel are consecutive, and with stride <= window every pixel
    has at least one.
    """
    starts = window_starts(size, window, stride)
    pixels = np.arange(size)
    first = np.searchsorted(starts + window, pixels, side="right")  # the first window ending after the pixel
    last = np.searchsorted(starts, pixels, side="right") - 1  # the last window starting at or before it
    return first, last


def _window_sums(values: np.ndarray, rows, cols) -> np.ndarray:
    """Per pixel, the sum of ``values`` (one per window position) over the windows covering it."""
    prefix = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    prefix[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    r0, r1 = rows[0][:, None], rows[1][:, None] + 1
    c0, c1 = cols[0], cols[1] + 1
    return prefix[r1, c1] - prefix[r0, c1] - prefix[r1, c0] + prefix[r0, c0]


def drop_map(drops: np.ndarray, rows, cols) -> np.ndarray:
    """Per pixel, the mean drop over the finished windows covering it; NaN where none is finished.

    ``rows`` and ``cols`` are ``covering()`` of the two axes. With every position finished
    this is Captum's ``Occlusion`` attribution: each window's output difference added onto
    the pixels it covers, divided by the number of windows covering each pixel. Summed
    with 2-D prefix sums, not matrix products: numpy's BLAS threads would spin on the cores
    the next forward pass needs (measured: forwards twice as slow between such frames).
    """
    done = np.isfinite(drops)
    total = _window_sums(np.where(done, drops, 0.0), rows, cols)
    count = _window_sums(done.astype(np.float64), rows, cols)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def gaussian_blur(unit: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 1x3xHxW image; radius round(3 sigma), edges replicated.

    The same as ``scipy.ndimage.gaussian_filter(..., mode="nearest", truncate=3)``.
    """
    radius = int(3 * sigma + 0.5)
    if radius < 1:
        return unit.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(unit.dtype).to(unit.device)
    channels = unit.shape[1]
    x = F.pad(unit, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def fill_image(unit: torch.Tensor, fill: str, window: int) -> torch.Tensor:
    """The image whose pixels replace the window's, in 0..1 units, the input's size."""
    if fill == "gray":
        return torch.full_like(unit, GRAY)
    if fill == "mean":
        return unit.mean(dim=(2, 3), keepdim=True).expand_as(unit).contiguous()
    if fill == "blur":
        return gaussian_blur(unit, blur_sigma(window))
    raise MethodInputError(f"--fill must be one of {', '.join(FILLS)}, not '{fill}'")


def blur_sigma(window: int) -> float:
    return max(window / 2.0, 1.0)


def automatic_batch(device: torch.device, height: int, width: int) -> int:
    budget = CUDA_BATCH_PIXELS if device.type == "cuda" else CPU_BATCH_PIXELS
    return max(1, min(MAX_BATCH, budget // (height * width)))


def check(p) -> None:
    if p.stride > p.window:
        raise ParamError("stride", f"{p.stride} is larger than --window {p.window}: pixels between the windows "
                                   f"would never be hidden; use a stride of at most {p.window}")


def run(ctx, p):
    image = ctx.require_image()
    window, stride, fill, show = p.window, p.stride, p.fill, p.show
    preprocessing = ctx.model.preprocessing
    unit = preprocessing.to_unit_tensor(image.image).to(ctx.device)
    height, width = unit.shape[-2:]
    if window > min(height, width):
        raise ParamError("window", f"{window} is larger than the model input ({width}x{height} pixels): "
                                   f"use at most {min(height, width)}")
    resolved = ctx.resolve_target(p.target)
    index = resolved["index"]
    keep_freed_memory()

    row_starts, col_starts = window_starts(height, window, stride), window_starts(width, window, stride)
    rows, cols = len(row_starts), len(col_starts)
    total = rows * cols
    row_cover, col_cover = covering(height, window, stride), covering(width, window, stride)
    batch = min(p.batch or automatic_batch(ctx.device, height, width), total)
    p.record(target=index, batch=batch)

    # Normalisation is per pixel, so pasting normalised fill pixels into the normalised
    # input gives exactly the normalised occluded image. Channels-last, as the batches are.
    plain = preprocessing.normalise(unit)
    base = plain.contiguous(memory_format=torch.channels_last)
    module = ctx.model.state.fast_copy(plain)
    filler = preprocessing.normalise(fill_image(unit, fill, window)).contiguous(memory_format=torch.channels_last)
    probabilities = np.full((rows, cols), np.nan, dtype=np.float32)
    rgb = image.to_array()
    label = resolved["label"]
    yield Progress(0.0, f"occluding {total} positions for '{label}'")

    base_prob = float(class_probabilities(module, plain, index)[0])
    # Built in place batch after batch: the base input copied in, one window per image
    # pasted over it. The copy also undoes anything a model might do to its input in place.
    layouts = [torch.channels_last, torch.contiguous_format]
    buffer = torch.empty((batch, *base.shape[1:]), dtype=base.dtype, device=base.device, memory_format=layouts[0])
    done = 0
    while done < total:
        ctx.cancel.check()
        count = min(batch, total - done)
        occluded = buffer[:count]
        occluded.copy_(base.expand(count, -1, -1, -1))
        for slot in range(count):
            row, col = divmod(done + slot, cols)
            y, x = int(row_starts[row]), int(col_starts[col])
            occluded[slot, :, y:y + window, x:x + window] = filler[0, :, y:y + window, x:x + window]
        try:
            scores = class_probabilities(module, occluded, index)
        except RuntimeError as exc:
            # A model that reshapes with .view() cannot take channels-last input: fall
            # back to the ordinary layout once and for all (only on the first batch, so
            # that a real error later on is not run twice).
            if done or len(layouts) == 1 or is_out_of_memory(exc):
                raise
            layouts.pop(0)
            buffer = buffer.contiguous(memory_format=layouts[0])
            continue
        probabilities.reshape(-1)[done:done + count] = scores
        done += count
        display = _display(rgb, probabilities, base_prob, row_cover, col_cover, label, f"{done} of {total} positions", show)
        yield Frame(display, step=done, metrics={"positions_done": done, "base_prob": base_prob})
        yield Progress(done / total, f"{done} of {total} positions")

    drops = base_prob - probabilities.astype(np.float64)
    worst = np.unravel_index(int(np.argmax(drops)), drops.shape)
    y, x = int(row_starts[worst[0]]), int(col_starts[worst[1]])
    sx, sy = image.size[0] / width, image.size[1] / height  # model input pixels to image pixels
    box = [x * sx, y * sy, min(x + window, width) * sx, min(y + window, height) * sy]
    note = (f"occlusion of '{label}': {rows}x{cols} windows of {window} px, stride {stride}, {fill} fill; "
            f"each pixel the mean drop over the windows covering it")
    display = _display(rgb, probabilities, base_prob, row_cover, col_cover, label, note, show)
    metrics = {
        "base_prob": base_prob,
        "max_drop": float(drops.max()),
        "min_prob": float(probabilities.min()),
        "positions": total,
        "grid": [rows, cols],
        "max_drop_position": [int(worst[0]), int(worst[1])],
        "max_drop_box": [round(v, 1) for v in box],  # x0, y0, x1, y1 of that window in image pixels
        "input_size": [int(width), int(height)],
        "batch": batch,
    }
    return Result(display=display, array=probabilities, target=resolved, metrics=metrics)


def _display(rgb, probabilities, base_prob, row_cover, col_cover, label, note, show="drop") -> MapOverPhoto:
    if show == "probability":
        pixels = drop_map(probabilities.astype(np.float64), row_cover, col_cover)  # the mean over covering windows
        return MapOverPhoto(photo=rgb, values=pixels, colormap="inferno", levels=(0.0, max(base_prob, 1e-6)),
                            legend=f"p({label}) with the patch there", note=note)
    drops = base_prob - probabilities.astype(np.float64)
    pixels = drop_map(drops, row_cover, col_cover)
    finite = drops[np.isfinite(drops)]
    bound = float(np.abs(finite).max()) if finite.size else 0.0
    bound = bound or 1.0
    # Diverging colours: red where hiding the patch lowers the probability, blue where it raises it.
    return MapOverPhoto(photo=rgb, values=pixels, colormap="blue-white-red", levels=(-bound, bound),
                        legend=f"drop in p({label}) when hidden", note=note)


SPEC = MethodSpec(
    id="occlusion",
    title="Occlusion",
    summary="Slide a patch over the image and map how much the class probability drops where it hides (Zeiler & Fergus 2014).",
    params=(
        TARGET,
        Param("window", "int", 16, "side of the square patch, in model-input pixels", minimum=1, maximum=4096),
        Param("stride", "int", 8, "step between patch positions, in model-input pixels (at most the window)", minimum=1,
              maximum=4096),
        Param("fill", "choice", "gray", "what hides the patch: gray (0.5), the image's mean colour, or a blurred copy",
              choices=FILLS),
        Param("batch", "int", 0, "occluded images per forward pass (0: automatic)", minimum=0, maximum=MAX_BATCH,
              special="automatic"),
        Param("show", "choice", "drop", "the map drawn: the drop in probability, or the probability itself",
              ("drop", "probability")),
    ),
    run=run,
    gradients=False,
    streams_frames=True,
    check=check,
)
