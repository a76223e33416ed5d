"""``sanity-check``: does an explanation depend on what the model learned? (Adebayo et al. 2018)

Cascading randomisation: the weights of a *copy* of the model are re-initialised block by
block from the classifier down to the first convolution (``engine.attribution.randomise``), and after
each step every chosen attribution method is run again, through its own ``SPEC.start``, on
the same image for the same class (the original model's top-1, or ``--target``). A map
that stays the same while the network under it turns into noise explains the image, not
the model.

Each map is compared with the original model's map of the same method by

- ``spearman``: the Spearman rank correlation of the absolute values (as in the paper);
- ``ssim``: the structural similarity of the absolute maps, each scaled to 0..1 by its
  own minimum and maximum (``skimage.metrics.structural_similarity``, data range 1).

A map that becomes constant (a dead network has no gradient) has no rank correlation:
its Spearman value is NaN (None in the JSON), shown as "n/a". A method that refuses to
give a map for a randomised network (saliency refuses a gradient that is zero
everywhere) counts as an all-zero map, and ``metrics["blank"]`` says where and why; on the
trained model its refusal ends the check.

What comes out: a grid, one row per method and one column per step after the original,
each tile captioned with the lowest block randomised so far and its similarity (the one
``--metric`` picks), and beneath it the paper's figure: that similarity against the
randomisation's depth, one line per method, starting from the original's 1 (a map is
identical to itself). Both are one picture, so the window and ``--out`` show the same.
``Result.array`` is that methods x steps matrix; the metrics hold both similarities per
method and step, and ``summary`` the chosen one as text, one line per method, which is
what the panel shows when the run ends (the steps it showed one at a time while running).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from engine.attribution import randomise
from engine.evaluation.similarity import spearman_similarity, ssim_similarity
from engine.core.errors import MethodInputError
from engine.view.gallery import Tile, render_gallery
from engine.core.jobs import Frame, Progress, Result
from engine.view.display import Picture
from engine.view.colormaps import BACKGROUND, apply_colormap
from engine.view.plots import line_plot_picture
from engine.methods.registry import METHODS  # read when run: engine.methods fills it after importing this module
from engine.methods.base import MethodContext
from engine.methods.params import SEED, TARGET, MethodSpec, Param

# The attribution methods compared by default, those of them that exist when it runs.
ATTRIBUTION_METHODS = ("saliency", "guided-backprop", "integrated-gradients", "gradcam", "smoothgrad")
METRICS = ("spearman", "ssim")
TILE = 160  # a map tile, in pixels: captions of about 25 characters fit under it


def choose_methods(asked: tuple[str, ...] | None, available: dict) -> list[str]:
    """The method ids to check: those asked for, or every attribution method that exists."""
    if not asked:
        chosen = [method_id for method_id in ATTRIBUTION_METHODS if method_id in available]
        if not chosen:
            raise MethodInputError("no attribution method is available to check")
        return chosen
    chosen = []
    for method_id in asked:
        if method_id in chosen:
            continue
        if method_id not in available or method_id == SPEC.id:
            known = ", ".join(m for m in ATTRIBUTION_METHODS if m in available)
            raise MethodInputError(f"--methods: there is no attribution method '{method_id}'; "
                                   f"give a comma-separated list of method ids such as {known}")
        chosen.append(method_id)
    return chosen


def as_map(array, method_id: str) -> np.ndarray:
    """A method's result as one HxW map; a per-colour map (3xHxW or HxWx3) keeps its largest |value|."""
    values = np.squeeze(np.asarray(array, dtype=np.float64)) if array is not None else np.zeros(0)
    if values.ndim == 3 and 3 in (values.shape[0], values.shape[-1]):
        axis = 0 if values.shape[0] == 3 else -1
        values = np.abs(values).max(axis=axis)
    if values.ndim != 2:
        raise MethodInputError(f"{method_id} does not give a map over the image (its result has shape "
                               f"{tuple(np.shape(array)) if array is not None else 'none'}), so it cannot be sanity-checked")
    return values


def _run_method(spec, ctx, target: int, seed: int) -> np.ndarray:
    """One attribution method run to its result; returns its map. Progress stays inside."""
    names = {param.name for param in spec.params}
    values = {key: value for key, value in (("target", target), ("seed", seed)) if key in names}
    job = spec.start(ctx, values)
    while True:
        try:
            next(job)  # its own frames and progress are not this job's
        except StopIteration as stop:
            return as_map(stop.value.array, spec.id)


def _tile(values: np.ndarray) -> Image.Image:
    magnitude = np.abs(values)
    top = float(np.percentile(magnitude, 99)) or float(magnitude.max()) or 1.0
    return Image.fromarray(apply_colormap(magnitude, (0.0, top), "inferno"))


def _caption(label: str, value: float) -> str:
    return f"{label} {value:.2f}" if np.isfinite(value) else f"{label} n/a"


def _grid(method_ids, originals, maps, labels, scores) -> np.ndarray:
    rows = []
    for i, method_id in enumerate(method_ids):
        tiles = [Tile(_tile(originals[i]), caption="original")]
        tiles += [Tile(_tile(step_maps[i]), caption=_caption(labels[k], scores[i][k])) for k, step_maps in enumerate(maps)]
        rows.append((method_id, tiles))
    rgb, _regions = render_gallery(rows, tile=TILE)
    return rgb


def similarity_figure(method_ids, labels, scores, metric: str) -> tuple[np.ndarray, dict]:
    """The paper's figure: each method's similarity to its trained map against how far down
    the model is randomised, from the original (1: the map itself). Returns the picture and
    where each point was drawn (``line_plot_picture``)."""
    series = {method_id: [1.0, *scores[i]] for i, method_id in enumerate(method_ids)}
    name = "Spearman rank correlation of |map|" if metric == "spearman" else "SSIM of |map|"
    return line_plot_picture(series, ["original", *labels], title="similarity to the trained model's map, "
                             "randomised from the top down to the block named", y_label=name, y_range=(0.0, 1.0),
                             width=max(640, 96 * (len(labels) + 1) + 200))


def summary_text(method_ids, labels, scores, metric: str) -> str:
    """One line per method: its similarity after each step, named by the lowest block randomised."""
    return "\n".join(f"{method_id} {metric}: " + ", ".join(_caption(label, value) for label, value in zip(labels, scores[i]))
                     for i, method_id in enumerate(method_ids))


def _picture(method_ids, originals, maps, labels, scores, metric: str) -> np.ndarray:
    """The grid of maps with the figure beneath it, as one picture."""
    grid = _grid(method_ids, originals, maps, labels, scores)
    figure, _points = similarity_figure(method_ids, labels[:len(maps)], scores, metric)
    width = max(grid.shape[1], figure.shape[1])
    picture = np.empty((grid.shape[0] + figure.shape[0], width, 3), dtype=np.uint8)
    picture[...] = BACKGROUND
    picture[:grid.shape[0], :grid.shape[1]] = grid
    picture[grid.shape[0]:, :figure.shape[1]] = figure
    return picture


def run(ctx, p):
    image = ctx.require_image()
    steps, metric, seed = p.steps, p.metric, p.seed
    asked = p.methods
    method_ids = choose_methods(asked, METHODS)
    specs = [METHODS[method_id] for method_id in method_ids]
    resolved = ctx.resolve_target(p.target)
    index = resolved["index"]
    p.record(methods=method_ids, target=index)

    blocks = randomise.parameter_blocks(ctx.model.module, list(ctx.output_shapes()))
    if not blocks:
        raise MethodInputError(f"{ctx.model.name} has no parameters to randomise")
    groups = randomise.cascade_groups(blocks, steps)
    labels = [group[-1].name or "(model)" for group in groups]  # how far down the randomisation has reached
    total = (len(groups) + 1) * len(specs)
    done = 0
    yield Progress(0.0, f"maps of the trained model for '{resolved['label']}'")
    originals, left_out = [], {}
    for spec in list(specs):
        ctx.cancel.check()
        try:
            originals.append(_run_method(spec, ctx, index, seed))
        except MethodInputError as exc:
            if asked:  # asked for by name: its refusal is the answer
                raise
            # A default method this model cannot run (guided backprop on a GELU network)
            # is left out, and the result says why.
            left_out[spec.id] = str(exc)
            specs.remove(spec)
            method_ids.remove(spec.id)
            total -= len(groups) + 1
            continue
        done += 1
        yield Progress(done / total, f"{spec.id} on the trained model")
    if not specs:
        raise MethodInputError(f"none of {', '.join(left_out)} runs on this model: {next(iter(left_out.values()))}")

    twin = randomise.model_copy(ctx.model)
    maps: list[list[np.ndarray]] = []
    spearman = [[] for _ in specs]
    ssim = [[] for _ in specs]
    chosen = spearman if metric == "spearman" else ssim
    blank: dict[str, list[dict]] = {}  # method -> the steps where it gave no map
    for step, group in enumerate(groups):
        ctx.cancel.check()
        for block in group:
            randomise.reinitialise(twin.module, block, seed)
        # A fresh context: its feature cache must not hold the previous weights' activations.
        step_ctx = MethodContext(model=twin, image=image, cancel=ctx.cancel)
        step_maps = []
        for i, spec in enumerate(specs):
            ctx.cancel.check()
            try:
                values = _run_method(spec, step_ctx, index, seed)
            except MethodInputError as exc:
                # A method refusing a randomised network (a gradient zero or NaN everywhere)
                # is an answer, not a failure: its map has changed beyond recognition.
                values = np.zeros_like(originals[i])
                blank.setdefault(spec.id, []).append({"step": labels[step], "reason": str(exc)})
            if values.shape != originals[i].shape:
                raise MethodInputError(f"{spec.id} gave a {values.shape} map after randomisation, "
                                       f"{originals[i].shape} before: the maps cannot be compared")
            step_maps.append(values)
            spearman[i].append(spearman_similarity(originals[i], values))
            ssim[i].append(ssim_similarity(originals[i], values))
            done += 1
            yield Progress(done / total, f"randomised down to {labels[step]}: {spec.id}")
        maps.append(step_maps)
        yield Frame(Picture(rgb=_picture(method_ids, originals, maps, labels, chosen, metric), note=f"randomised down to {labels[step]} ({step + 1} of {len(groups)} steps)"),
                    step=step + 1, metrics={f"{m} {metric}": chosen[i][-1] for i, m in enumerate(method_ids)})

    matrix = np.array(chosen, dtype=np.float32)
    metrics = {
        "methods": method_ids,
        "layers": labels,
        "groups": [[path for block in group for path in block.paths] for group in groups],
        "metric": metric,
        "similarity": {m: chosen[i] for i, m in enumerate(method_ids)},
        "spearman": {m: spearman[i] for i, m in enumerate(method_ids)},
        "ssim": {m: ssim[i] for i, m in enumerate(method_ids)},
        "blank": blank,
        "left_out": left_out,
        "summary": summary_text(method_ids, labels, chosen, metric),
    }
    note = (f"cascading randomisation of a copy of {ctx.model.name}, from {labels[0]} down to {labels[-1]}; "
            f"captions: the lowest block randomised and the {metric} similarity to the trained model's map "
            f"for '{resolved['label']}'; beneath, that similarity against the depth randomised")
    if left_out:
        note += f"; left out, as this model cannot run them: {', '.join(left_out)}"
    return Result(display=Picture(rgb=_picture(method_ids, originals, maps, labels, chosen, metric), note=note),
                  array=matrix,
                  metrics=metrics, target=resolved)


SPEC = MethodSpec(
    id="sanity-check",
    title="Sanity check (randomised model)",
    summary="Randomise the model's weights from the top down and see whether each attribution map changes "
            "(Adebayo et al. 2018).",
    params=(
        Param("methods", "methods", None, "comma-separated method ids (default: every attribution method available: "
              + ", ".join(ATTRIBUTION_METHODS) + ")"),
        Param("steps", "int", 0, "randomisation steps from the classifier down (0: one per block)", minimum=0,
              maximum=1000, special="one per block"),
        TARGET,
        Param("metric", "choice", "spearman", "the similarity shown: Spearman rank correlation of |map|, or SSIM",
              choices=METRICS),
        SEED,
    ),
    run=run,
    streams_frames=True,
)
