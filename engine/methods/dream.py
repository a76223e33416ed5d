"""``dream``: DeepDream. Amplify whatever a layer already sees in the image.

At each step the layer's gradient is set equal to its activation (the image ascends
0.5 * ||a||^2), the image is shifted by a random jitter before the forward and shifted
back after, and the step is normalised by the gradient's mean magnitude so one learning
rate suits every layer. Octaves run from small to large; the detail dreamt at one octave
is carried up to the next, which is what gives the picture structure at several scales.

Several layers dream at once with ``--layers "early:1,late:0.5"``: the objective is the
weighted sum of each layer's 0.5 * ||a||^2 divided by the layer's size, so a weight means
the same on a small deep map as on a large shallow one. ``--guide IMG`` replaces each
layer's term by the guided objective of the Google DeepDream notebook: every position of
the dream is pulled towards the guide's feature vector that matches it best (largest dot
product), so the dream grows what the guide image contains. Large images are processed
in tiles (``engine.optvis.tiling``): exactly the whole image's gradient where the tiles' overlap
covers the layer's receptive field, and with a grid that moves at every step where it
cannot (deep layers), so no seam stays in one place.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from engine.view.animation import FrameRecorder
from engine.core.errors import ImageLoadError, MethodInputError
from engine.anatomy.hooks import capture_outputs, forward_to
from engine.data.images import load_image
from engine.core.jobs import Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.loop import Step, optimisation_loop
from engine.optvis.tiling import Window, tile_windows, tiled_gradient, tiled_statistics, tiling_geometry
from engine.optvis.transforms import random_shift, resize, roll
from engine.methods.params import JITTER_LIMIT, LAYER, SEED, MethodSpec, Param, ParamError

# Guide matching compares every dream position with every guide position; the comparison
# is done in chunks of at most this many dot products, so an early layer of a large tile
# never builds a gigabyte matrix.
_MATCH_CHUNK = 1 << 23


class DreamObjective:
    """The weighted sum over layers that the dream ascends, for a whole image or one tile.

    Called with the 0..1 pixels of an image (or of a tile's window), it returns the loss
    and, per layer, the sum of squared activations it counted (for the norms reported).
    With a tile, only the units the tile owns are counted and each layer is normalised by
    the whole image's map size (``numel``), so the tiles' losses add up to the image's.
    """

    def __init__(self, model, weights: dict[str, float], last: str, guides: dict[str, torch.Tensor] | None = None):
        self.model = model
        self.weights = weights
        self.last = last  # the layer that runs last: the forward stops there
        self.guides = guides
        self.jumps: dict[str, int] = {}
        self._copy: set[str] = set()

    def features(self, unit: torch.Tensor) -> dict[str, torch.Tensor]:
        module = self.model.module
        x = self.model.preprocessing.normalise(unit)
        with capture_outputs(module, self.weights, detach=False, copy=self._copy) as captured:
            forward_to(module, self.last, x)
        overwritten = captured.modified_in_place()
        if overwritten:  # a later in-place operation changed a captured map: capture copies instead
            self._copy |= overwritten
            return self.features(unit)
        size = tuple(unit.shape[-2:])
        return {path: self.model.state.as_map(path, output, size) for path, output in captured.items()}

    def __call__(self, unit: torch.Tensor, window: Window | None = None,
                 numel: dict[str, int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        features = self.features(unit)
        loss = unit.new_zeros(())
        squares: dict[str, float] = {}
        for path, weight in self.weights.items():
            activation = features[path]
            size = activation.numel() if numel is None else numel[path]
            if window is not None:
                rows, cols = window.units(self.jumps[path])
                activation = activation[:, :, rows, cols]
            squares[path] = float(activation.detach().pow(2).sum())
            if self.guides is None:
                term = 0.5 * activation.pow(2).sum()
            else:
                term = guided_term(activation, self.guides[path])
            loss = loss + weight * term / size
        return loss, squares


def guided_term(activation: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """sum over positions p of max_m <a_p, g_m>: the Google notebook's guided objective.

    ``guide`` is the guide's features as C x M (one column per guide position). The
    gradient at each position is the best-matching guide vector, exactly the notebook's
    ``dst.diff = y[:, A.argmax(1)]``.
    """
    flat = activation.reshape(activation.shape[1], -1)  # C x P
    with torch.no_grad():
        chunk = max(1, _MATCH_CHUNK // max(1, guide.shape[1]))
        best = torch.cat([(flat[:, start:start + chunk].T @ guide).argmax(dim=1)
                          for start in range(0, flat.shape[1], chunk)])
    return (flat * guide[:, best]).sum()


def check(p) -> None:
    if p.layers is not None and not any(weight for _name, weight in p.layers):
        raise ParamError("layers", "gives every layer weight 0, so there is nothing to dream; give one a weight",
                         "--layers: every weight is 0, so there is nothing to dream; give at least one layer a weight")


def _layer_weights(ctx, layer: str, layers: tuple[tuple[str, float], ...] | None) -> dict[str, float]:
    pairs = layers or ((layer, 1.0),)
    weights: dict[str, float] = {}
    for name, weight in pairs:
        path = ctx.resolve_layer(name)
        if path in weights:
            raise MethodInputError(f"--layers names {path} twice" + (f" ('{name}' is {path})" if name != path else "")
                                   + "; give each layer once with its weight")
        weights[path] = weight
    return weights


def _guide_features(ctx, guide: str, objective: DreamObjective) -> dict[str, torch.Tensor]:
    try:
        picture = load_image(guide)
    except ImageLoadError as exc:
        raise MethodInputError(f"--guide: {exc}") from None
    with torch.no_grad():
        unit = ctx.model.preprocessing.to_unit_tensor(picture.image).to(ctx.device)
        features = objective.features(unit)
    guides = {}
    for path in objective.weights:
        values = features[path].detach()
        guides[path] = values.reshape(values.shape[1], -1)
        if not guides[path].abs().max() > 0:
            raise MethodInputError(f"the guide image does not activate {path} at all, so it cannot guide the dream there; "
                                   "choose another layer or another guide image")
    return guides


class _Tiles:
    """Where the tile grid falls at one image size, and what the whole image's maps measure."""

    def __init__(self, ctx, objective: DreamObjective, tile: int, height: int, width: int):
        try:
            geometry = tiling_geometry(ctx.model, list(objective.weights))
        except ValueError as exc:
            raise MethodInputError(f"{exc}; dream on it without tiles (--tile 0) or choose a convolutional layer") from None
        objective.jumps = geometry.jumps
        self.tile, self.height, self.width = tile, height, width
        self.align = geometry.align
        # Half the receptive field makes tiling exact; a deep layer's field is larger than the
        # image, so the margin is capped at a quarter tile, and the grid then moves at every
        # step to spread what the tiles' edges miss. An exact grid stays put: moving it
        # costs a partly filled extra row and column of tiles.
        align = self.align
        self.margin = -(-min(geometry.reach, max(tile // 4, align)) // align) * align  # rounded up to the grid
        self.exact = self.margin >= geometry.reach
        shapes = ctx.model.state.output_shapes((height, width), until=objective.last)
        self.numel = {path: math.prod(shapes[path]) for path in objective.weights}

    def windows(self, offset: tuple[int, int] = (0, 0)) -> list[Window]:
        return tile_windows(self.height, self.width, self.tile, self.margin, self.align, offset)


def _statistics(objective: DreamObjective, unit: torch.Tensor, tiles: _Tiles | None) -> tuple[float, dict[str, float]]:
    if tiles is None:
        with torch.no_grad():
            loss, squares = objective(unit)
        return float(loss), squares
    return tiled_statistics(lambda crop, window: objective(crop, window, tiles.numel), unit, tiles.windows())


class Ascent:
    """DeepDream's update, one step of the loop each: octaves from small to large, the detail
    dreamt at one carried up to the next; at each step a jittered gradient of the objective
    (whole, or summed over tiles) normalised by its mean magnitude."""

    def __init__(self, objective: DreamObjective, pyramid: list[torch.Tensor], steps: int, jitter: int, lr: float,
                 generator: torch.Generator, grid_generator: torch.Generator,
                 tiles_for: Callable[[tuple[int, int]], "_Tiles | None"], full_tiles: "_Tiles | None",
                 check: Callable[[], None]) -> None:
        self.objective, self.pyramid, self.steps, self.jitter, self.lr = objective, pyramid, steps, jitter, lr
        self.generator, self.grid_generator, self.tiles_for, self.check = generator, grid_generator, tiles_for, check
        self.full_size = tuple(pyramid[-1].shape[-2:])
        self.full_tiles = full_tiles
        self.detail = torch.zeros_like(pyramid[0])
        self.dreamt = pyramid[-1]
        self.tiles: _Tiles | None = None
        self.windows = 1  # tiles in the newest step's grid

    def step(self, number: int) -> Step:
        octave, step = divmod(number - 1, self.steps)
        octave_base = self.pyramid[octave]
        if step == 0:  # a new octave: carry the detail up
            shape = tuple(octave_base.shape[-2:])
            self.detail = resize(self.detail, shape)
            self.dreamt = (octave_base + self.detail).clamp(0, 1)
            self.tiles = self.full_tiles if shape == self.full_size else self.tiles_for(shape)
        tiles, objective = self.tiles, self.objective
        shift = random_shift(self.generator, self.jitter)
        pixels = roll(self.dreamt, shift)
        if tiles is None:
            pixels.requires_grad_(True)
            loss, squares = objective(pixels)
            gradient, = torch.autograd.grad(loss, pixels)
            loss = float(loss.detach())
        else:
            offset = (0, 0) if tiles.exact else tuple(
                torch.randint(0, tiles.tile, (2,), generator=self.grid_generator).tolist())
            step_windows = tiles.windows(offset)
            self.windows = len(step_windows)
            gradient, loss, squares = tiled_gradient(lambda crop, window: objective(crop, window, tiles.numel),
                                                     pixels, step_windows, check=self.check)
        gradient = roll(gradient, (-shift[0], -shift[1]))
        with torch.no_grad():
            self.dreamt = (self.dreamt + self.lr * gradient / (gradient.abs().mean() + 1e-12)).clamp(0, 1)
        if step == self.steps - 1:
            self.detail = self.dreamt - octave_base
        shown = next(iter(objective.weights))
        return Step(loss=loss, picture=self.dreamt, metrics={"octave": octave + 1, "norm": math.sqrt(squares[shown])})


def run(ctx, p):
    image = ctx.require_image()
    guide, steps, lr, octaves, tile = p.guide, p.steps, p.lr, p.octaves, p.tile
    weights = _layer_weights(ctx, p.layer, p.layers)
    order = {path: index for index, path in enumerate(ctx.output_shapes())}
    last = max(weights, key=lambda path: order.get(path, -1))
    objective = DreamObjective(ctx.model, weights, last)
    if guide:
        objective.guides = _guide_features(ctx, guide, objective)
    shown = next(iter(weights))  # the layer whose norm the frames and metrics report
    generator = ctx.generator(p.seed)
    # The tile grid's offsets come from a stream of their own, so tiling leaves the jitter
    # unchanged: where tiling is exact, a tiled dream is the untiled dream.
    grid_generator = ctx.generator(p.seed + 1_000_003)
    base = ctx.model.preprocessing.to_unit_tensor(image.image, p.size or None).to(ctx.device)
    full_size = tuple(base.shape[-2:])
    pyramid = [base]
    for octave in range(1, octaves):
        factor = p.octave_scale ** octave
        octave_size = ctx.model.preprocessing.fit(max(1, round(full_size[0] / factor)), max(1, round(full_size[1] / factor)))
        pyramid.append(resize(base, octave_size))
    pyramid.reverse()  # smallest first

    def tiles_for(shape: tuple[int, int]) -> _Tiles | None:
        return _Tiles(ctx, objective, tile, *shape) if tile and max(shape) > tile else None

    full_tiles = tiles_for(full_size)
    _, squares_first = _statistics(objective, base, full_tiles)
    ascent = Ascent(objective, pyramid, steps, p.jitter, lr, generator, grid_generator, tiles_for, full_tiles,
                    ctx.cancel.check)
    total = octaves * steps

    def show(_number, step):
        return Picture(rgb=unit_tensor_to_rgb(resize(step.picture, full_size)))

    def describe(number, _step):
        octave, step = divmod(number - 1, steps)
        return f"octave {octave + 1}/{octaves}, step {step + 1}/{steps}"

    recorder = FrameRecorder()
    trace = yield from optimisation_loop(ascent.step, total, show=show, cancel=ctx.cancel, recorder=recorder,
                                         describe=describe)
    dreamt, windows, losses, done = ascent.dreamt, ascent.windows, trace.losses, trace.step or 0

    _, squares_last = _statistics(objective, dreamt, full_tiles)
    result = dreamt[0].permute(1, 2, 0).cpu().numpy()
    final_rgb = unit_tensor_to_rgb(dreamt)
    metrics = {"loss_first": losses[0] if losses else 0.0, "loss_last": losses[-1] if losses else 0.0,
               "norm_first": math.sqrt(squares_first[shown]), "norm_last": math.sqrt(squares_last[shown]),
               "steps": done, "size": [full_size[1], full_size[0]], "tiles": windows}
    if len(weights) > 1:
        metrics["layer_norms_first"] = {path: math.sqrt(value) for path, value in squares_first.items()}
        metrics["layer_norms_last"] = {path: math.sqrt(value) for path, value in squares_last.items()}
    p.record(layer=shown, layers=dict(weights))
    what = ", ".join(f"{path} x{weight:g}" for path, weight in weights.items()) if len(weights) > 1 else shown
    note = f"DeepDream on {what}" + (" guided by " + guide.replace("\\", "/").rsplit("/", 1)[-1] if guide else "")
    if full_tiles is not None:
        note += (f"; in {windows} tiles of {tile} px with {full_tiles.margin} px overlap"
                 + ("" if full_tiles.exact else ", the grid moving every step (the layer sees further than the overlap)"))
    return Result(display=Picture(rgb=final_rgb, note=note), array=result, layer=shown, metrics=metrics,
                  frames=recorder.finish(final_rgb))


SPEC = MethodSpec(
    id="dream",
    title="DeepDream",
    summary="Amplify what a layer sees: ascend 0.5*||activation||^2 with jitter and octaves.",
    params=(
        LAYER,
        Param("layers", "layer_weights", None, "several layers with weights, e.g. 'early:1,late:0.5' (replaces --layer)",
              minimum=-1000.0, maximum=1000.0),
        Param("guide", "image", None,
              "grow what this image contains: pull each position towards the guide's best-matching feature"),
        Param("steps", "int", 10, "gradient steps per octave", minimum=1, maximum=1000),
        Param("lr", "float", 0.01, "step size in 0..1 pixel units, after normalising the gradient", minimum=0.0,
              maximum=1.0),
        Param("octaves", "int", 3, "number of scales, smallest first", minimum=1, maximum=8),
        Param("octave_scale", "float", 1.4, "size ratio between octaves", minimum=1.0, maximum=3.0),
        Param("jitter", "int", 16, "random shift in pixels before each step", minimum=0, maximum=JITTER_LIMIT),
        Param("tile", "int", 512, "compute the gradient in tiles of this many pixels, so large images fit in memory",
              minimum=0, maximum=4096, special="whole image at once"),
        Param("size", "int", 0, "shorter side of the dreamt image in pixels (0: the model's input size)", minimum=0, maximum=2048,
              special="model's size"),
        SEED,
    ),
    run=run,
    streams_frames=True,
    check=check,
)
