"""``rise``: which pixels keep the class when the rest is hidden (Petsiuk, Das & Saenko 2018).

A black-box method: no gradient, only the model's outputs. ``--masks`` random masks are
drawn: each a ``--cells`` x ``--cells`` grid whose cells are kept with probability
``--keep``, upsampled bilinearly to (cells + 1) cell sizes and cropped at a random shift
of up to one cell, so the kept regions have soft edges at any position. Each masked input
is the model input times the mask in the model's normalised units, so a hidden pixel
takes the training set's mean colour (as the authors' code does). The map is

    S(x) = sum_i p_target(I * M_i) M_i(x) / (N * keep)

the expected probability of the class given that pixel x is visible. Masks follow the
seed whatever the batch size; the map is drawn after every batch, so it sharpens on the
canvas as masks accumulate.

It is the reference the deletion and insertion metrics were introduced with, and its
probabilities are what those metrics measure: a black-box map to hold the gradient
methods against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from engine.attribution.gradients import class_probabilities
from engine.attribution.maps import automatic_batch, map_display, map_metrics, refuse_blank
from engine.core.jobs import Frame, Progress, Result
from engine.methods.params import OVERLAY, SEED, TARGET, MethodSpec, Param


def rise_masks(count: int, height: int, width: int, cells: int, keep: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` x 1 x H x W soft masks in 0..1, drawn from ``generator`` (on the CPU, so a
    seed gives the same masks on every device)."""
    cell_h, cell_w = -(-height // cells), -(-width // cells)
    grids, shifts = [], []
    for _ in range(count):  # one mask's draws after another's: the same masks in batches of any size
        grids.append(torch.rand((1, cells, cells), generator=generator) < keep)
        shifts.append((int(torch.randint(0, cell_h, (1,), generator=generator)),
                       int(torch.randint(0, cell_w, (1,), generator=generator))))
    upsampled = F.interpolate(torch.stack(grids).float(), size=((cells + 1) * cell_h, (cells + 1) * cell_w),
                              mode="bilinear", align_corners=False)
    return torch.stack([upsampled[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(shifts)])


def run(ctx, p):
    image = ctx.require_image()
    resolved = ctx.resolve_target(p.target)
    index, label = resolved["index"], resolved["label"]
    unit = ctx.model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    height, width = unit.shape[-2:]
    batch = min(p.batch or automatic_batch(ctx.model, height, width, backward=False), p.masks)
    p.record(target=index, batch=batch)
    normalised = ctx.model.preprocessing.normalise(unit)
    network = ctx.model.state.fast_copy(normalised)
    generator = ctx.generator(p.seed)
    summed = torch.zeros((height, width), dtype=torch.float64, device=ctx.device)
    probabilities = []
    yield Progress(0.0, f"{p.masks} random masks of {p.cells}x{p.cells} cells for '{label}'")
    done = 0
    while done < p.masks:
        ctx.cancel.check()
        count = min(batch, p.masks - done)
        masks = rise_masks(count, height, width, p.cells, p.keep, generator).to(ctx.device)
        scores = ctx.model.state.run_in_fast_layout(lambda x: class_probabilities(network, x, index),
                                                    normalised * masks)
        probabilities.append(scores)
        summed += torch.einsum("n,nhw->hw", torch.from_numpy(scores).to(summed), masks[:, 0].to(summed))
        done += count
        values = (summed / (done * p.keep)).float().cpu().numpy()
        yield Frame(_display(image, values, label, f"{done} of {p.masks} masks", p.overlay), step=done,
                    metrics={"masks_done": done})
        yield Progress(done / p.masks, f"{done} of {p.masks} masks")
    values = (summed / (p.masks * p.keep)).float().cpu().numpy()
    refuse_blank(values, f"'{label}' has probability zero under every mask: try the top class")
    scores = np.concatenate(probabilities)
    note = (f"RISE of '{label}': {p.masks} masks of {p.cells}x{p.cells} cells, {p.keep:g} kept; "
            f"each pixel the mean probability when it is visible")
    metrics = {**map_metrics(values), "masks": p.masks, "mean_masked_prob": float(scores.mean()),
               "batch": batch}
    return Result(display=_display(image, values, label, note, p.overlay), array=values, target=resolved,
                  metrics=metrics)


def _display(image, values: np.ndarray, label: str, note: str, overlay: bool):
    # The map is a probability: its floor is what the class keeps wherever a pixel is, so
    # the colours run from the map's own minimum, not from zero.
    return map_display(image, values, signed=False, overlay=overlay, legend=f"p({label}) when visible", note=note,
                       top=float(values.max()) or 1.0, bottom=float(values.min()))


SPEC = MethodSpec(
    id="rise",
    title="RISE",
    summary="Hide the image under many random masks and average them, each weighted by the class probability it "
            "leaves (Petsiuk et al. 2018): a map from the model's outputs alone.",
    params=(
        TARGET,
        Param("masks", "int", 1000, "random masks averaged (more: a smoother map, in proportion longer)", minimum=1,
              maximum=100000),
        Param("cells", "int", 7, "each mask's grid of cells per side (more: finer detail, more masks needed)",
              minimum=2, maximum=64),
        Param("keep", "float", 0.5, "the chance that a cell is kept visible", minimum=0.05, maximum=0.95),
        Param("batch", "int", 0, "masked images per forward pass (0: automatic)", minimum=0, maximum=1024,
              special="automatic"),
        SEED,
        OVERLAY,
    ),
    run=run,
    gradients=False,
    streams_frames=True,
)
