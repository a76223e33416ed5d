"""Score several attribution methods on one image, beside maps that know nothing.

``score_image`` runs each method on its defaults for one class (the image's top-1 unless
a target is given), reads its map at the model input's size, and scores it with the
chosen metrics; the reference maps (``reference_maps``: random, centre, edges) are scored
the same way, so every report carries its own floor. ``summarise_scores`` gives the mean
and spread per method over many images.

Metrics (``METRICS``), each a number per map:

- ``deletion`` / ``insertion``: the area under the curve (``perturbation``): lower /
  higher is better;
- ``road``: ROAD's LeRF minus MoRF mean probability: higher is better (``road_morf``
  and ``road_lerf`` are reported too);
- ``pointing``: 1 for a hit, 0 for a miss, against the image's boxes (given in the
  photo's pixels, scored in the model input's, with the tolerance in those pixels);
- ``randomisation``: the Spearman rank correlation of the map's magnitudes with those of
  the same method's map on a copy of the model whose every weight is re-initialised
  (the end of Adebayo et al.'s cascade, as the sanity check computes it): lower is
  better, a map that stays the same explains the photo, not the model. A method that
  gives no map for the random network has changed beyond recognition: 0. The reference
  maps ignore the model by construction: 1.

A method *beats the edges* when it is better than the edge map on every perturbation
metric scored: a map that does not only shows where the image has edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from engine.core.errors import MethodInputError
from engine.attribution import randomise
from engine.attribution.maps import map_display
from engine.core.jobs import Frame, Progress, Result, within
from engine.evaluation.perturbation import ROAD_FRACTIONS, perturbation_curve, road_curve
from engine.evaluation.pointing import TOLERANCE, pointing_game
from engine.evaluation.reference_maps import REFERENCE_MAPS, reference_map
from engine.evaluation.similarity import spearman_similarity

METRICS = ("deletion", "insertion", "road", "pointing", "randomisation")
DEFAULT_METRICS = ("deletion", "insertion")
DEFAULT_METHODS = ("saliency", "smoothgrad", "integrated-gradients", "gradcam", "guided-backprop", "rise")
LOWER_IS_BETTER = {"deletion", "road_morf", "randomisation"}
PERTURBATION = ("deletion", "insertion", "road")


@dataclass
class MapScores:
    """One map's scores on one image."""

    name: str  # a method id, or "reference: edges" and the like
    reference: bool
    values: np.ndarray  # the map at the model input's size
    scores: dict[str, float] = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # metric -> Curve
    refused: str = ""  # why the method gave no map (the rest of the report stands)
    result: object = None  # the method's Result (a reference map's own, made here), to open it whole


@dataclass
class ImageReport:
    image: str
    target: dict
    maps: list[MapScores]
    # The boxes around the object the maps were scored against, (x0, y0, x1, y1) in the
    # photo's pixels: drawn over the maps wherever the report is shown or exported.
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def edges(self) -> MapScores | None:
        return next((m for m in self.maps if m.name == reference_name("edges")), None)

    def beats_edges(self, scores: MapScores) -> bool | None:
        """Better than the edge map on every perturbation metric both have; None when
        there is nothing to compare."""
        edges = self.edges()
        if edges is None or scores.reference or scores.refused:
            return None
        compared = [metric for metric in PERTURBATION if metric in scores.scores and metric in edges.scores]
        if not compared:
            return None
        return all(scores.scores[m] < edges.scores[m] if m in LOWER_IS_BETTER else scores.scores[m] > edges.scores[m]
                   for m in compared)


def check_metrics(metrics) -> None:
    """Refuse a metric there is none of, naming those there are."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise MethodInputError(f"no metric {', '.join(unknown)}: there are {', '.join(METRICS)}")


def reference_name(kind: str) -> str:
    return f"reference: {kind}"


def input_map(result, height: int, width: int, method: str) -> np.ndarray:
    """A method's map at the model input's size: its array, or its picture's values (occlusion's
    array is its grid of windows, its picture the map per pixel), else the array resized."""
    candidates = [result.array, getattr(result.display, "values", None)]
    for candidate in candidates:
        if candidate is not None and np.ndim(candidate) == 2 and np.shape(candidate) == (height, width):
            return np.asarray(candidate, dtype=np.float32)
    array = result.array
    if array is None or np.ndim(array) != 2:
        raise MethodInputError(f"{method} gives no map of the image to score")
    resized = F.interpolate(torch.as_tensor(np.asarray(array, np.float32))[None, None], size=(height, width),
                            mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def boxes_in_input(boxes, image_size: tuple[int, int], input_size: tuple[int, int]) -> list[tuple]:
    """(x0, y0, x1, y1) boxes in the photo's pixels -> (top, left, bottom, right) in the
    model input's (``input_size`` and ``image_size`` as (width, height))."""
    sx, sy = input_size[0] / image_size[0], input_size[1] / image_size[1]
    return [(y0 * sy, x0 * sx, y1 * sy, x1 * sx) for x0, y0, x1, y1 in boxes]


def score_image(ctx, methods=DEFAULT_METHODS, metrics=DEFAULT_METRICS, boxes=None, target=None, baseline: str = "blur",
                steps: int = 50, seed: int = 0):
    """Job: the ``ImageReport`` of ``methods`` (ids of ``engine.methods``) and the reference
    maps on ``ctx``'s image, with ``metrics``. A method that refuses the image (guided
    backprop on a network without ReLUs) is reported with its reason. After each map is
    scored a ``Frame`` shows that map, its metrics holding the report so far ("report")."""
    from engine.methods.base import MethodContext
    from engine.methods.registry import METHODS

    check_metrics(metrics)
    if "pointing" in metrics and not boxes:
        raise MethodInputError("the pointing game needs boxes around the object in this image")
    image = ctx.require_image()
    kept = [tuple(float(v) for v in box) for box in boxes or ()]
    resolved = ctx.resolve_target(target)
    index = resolved["index"]
    unit = ctx.model.preprocessing.to_unit_tensor(image.image)
    height, width = unit.shape[-2:]
    maps: list[MapScores] = []
    randomised = None  # the model with every weight re-initialised, made when first needed
    names = list(methods) + [reference_name(kind) for kind in REFERENCE_MAPS]
    # Progress in proportion to the passes each part makes, so the time left follows the
    # run: RISE's 1,000 masks are most of a default comparison, the reference maps a sliver.
    scoring = _scoring_passes(metrics, steps)
    runs = 2 if "randomisation" in metrics else 1  # the randomised model's map as well
    making = {name: _map_passes(ctx, METHODS.get(name), index, (height, width)) * runs for name in methods}
    weights = [making.get(name, 0.0) + scoring for name in names]
    starts = np.concatenate([[0.0], np.cumsum(weights)]) / sum(weights)
    for position, name in enumerate(names):
        low, share = float(starts[position]), float(starts[position + 1] - starts[position])
        split = making.get(name, 0.0) / weights[position]  # where making the map ends and scoring begins
        half = split / runs
        yield Progress(low, f"{name}: its map")
        if name in methods:
            spec = METHODS.get(name)
            if spec is None:
                raise MethodInputError(f"no method '{name}'")
            params = {"target": index} if any(p.name == "target" for p in spec.params) else {}
            try:
                result = yield from within(_progress_only(spec.start(ctx, params)), low, low + half * share)
            except MethodInputError as refusal:
                maps.append(MapScores(name, False, np.zeros((height, width), np.float32), refused=str(refusal)))
                yield Frame(None, step=position + 1,
                            metrics={"report": ImageReport(image.path, resolved, list(maps), kept)})
                continue
            scores = MapScores(name, False, input_map(result, height, width, name), result=result)
            display = result.display
            if "randomisation" in metrics:
                if randomised is None:
                    randomised = randomise.randomised_model(ctx.model, seed)
                on_random = MethodContext(model=randomised, image=image, cancel=ctx.cancel)
                try:
                    again = yield from within(_progress_only(spec.start(on_random, params)), low + half * share,
                                              low + split * share)
                    similarity = spearman_similarity(scores.values, input_map(again, height, width, name))
                except MethodInputError:  # no map for the random network: nothing of the trained one's is left
                    similarity = 0.0
                scores.scores["randomisation"] = 0.0 if math.isnan(similarity) else similarity
        else:
            kind = name.removeprefix("reference: ")
            pixels = unit[0].permute(1, 2, 0).numpy()
            scores = MapScores(name, True, reference_map(kind, pixels, seed=seed))
            display = map_display(image, scores.values, signed=False, legend=name,
                                  note=f"{name}: a map that knows nothing of the model")
            scores.result = Result(display=display, array=scores.values, target=resolved)
            if "randomisation" in metrics:
                scores.scores["randomisation"] = 1.0
        yield from within(_score(ctx, unit, scores, index, metrics, boxes, image, baseline, steps, seed),
                          low + split * share, low + share)
        maps.append(scores)
        # The report so far, with the map just scored: a window shows the curves as they come.
        yield Frame(display, step=position + 1, metrics={"report": ImageReport(image.path, resolved, list(maps), kept)})
    yield Progress(1.0, "scored")
    return ImageReport(image=image.path, target=resolved, maps=maps, boxes=kept)


BACKWARD_PASS = 3.0  # a forward and backward pass, in inference passes
ROAD_PASS = 12.0  # one removal's imputation and pass, in inference passes (measured: 10 s for 108 at 224 px)


def _map_passes(ctx, spec, index: int, input_size: tuple[int, int]) -> float:
    """The inference passes a method's map costs on its defaults at ``input_size`` (H, W)
    (``engine.methods.cost``, with a backward pass as three); one where the method declares no cost."""
    from engine.methods.cost import Machine, method_cost

    if spec is None:
        return 1.0
    machine = Machine(input_size=input_size,
                      model_size=ctx.model.preprocessing.size, forward_s=1.0, backward_s=BACKWARD_PASS,
                      shapes=dict(ctx.output_shapes()), presets=dict(ctx.model.presets))
    cost = method_cost(spec, {"target": index} if any(p.name == "target" for p in spec.params) else {}, machine)
    return max(1.0, cost.forwards + BACKWARD_PASS * cost.backwards) if cost is not None else 1.0


def _scoring_passes(metrics, steps: int) -> float:
    curves = sum(1 for metric in metrics if metric in ("deletion", "insertion")) * (steps + 1)
    return max(1.0, curves + (2 * len(ROAD_FRACTIONS) * ROAD_PASS if "road" in metrics else 0))


def _progress_only(job):
    """Job: ``job``'s progress, without its frames: a comparison's frames carry its report, and
    a window shows only the newest frame, so a method's own (RISE's growing map) would hide one."""
    try:
        while True:
            event = next(job)
            if isinstance(event, Progress):
                yield event
    except StopIteration as stop:
        return stop.value


def _score(ctx, unit, scores: MapScores, index: int, metrics, boxes, image, baseline, steps, seed):
    model = ctx.model
    jobs = [metric for metric in metrics if metric in PERTURBATION]
    for number, metric in enumerate(jobs):
        low, high = number / len(jobs), (number + 1) / len(jobs)
        if metric in ("deletion", "insertion"):
            curve = yield from within(perturbation_curve(model, unit, scores.values, index, metric, baseline, steps,
                                                         ctx.cancel), low, high)
            scores.curves[metric] = curve
            scores.scores[metric] = curve.score
        else:
            morf = yield from within(road_curve(model, unit, scores.values, index, "morf", seed=seed,
                                                cancel=ctx.cancel), low, (low + high) / 2)
            lerf = yield from within(road_curve(model, unit, scores.values, index, "lerf", seed=seed,
                                                cancel=ctx.cancel), (low + high) / 2, high)
            scores.curves["road_morf"], scores.curves["road_lerf"] = morf, lerf
            scores.scores.update(road_morf=morf.score, road_lerf=lerf.score, road=lerf.score - morf.score)
    if "pointing" in metrics:
        height, width = unit.shape[-2:]
        found = pointing_game(scores.values, boxes_in_input(boxes, image.size, (width, height)), TOLERANCE)
        scores.scores["pointing"] = float(found.hit)


def summarise_scores(reports: list[ImageReport]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Map name -> metric -> (mean, standard deviation, images), over the reports."""
    return summarise((scores.name, metric, value) for report in reports for scores in report.maps
                     for metric, value in scores.scores.items())


def summarise(values) -> dict[str, dict[str, tuple[float, float, int]]]:
    """(map name, metric, value) triples -> map name -> metric -> (mean, standard deviation,
    count), leaving out values that are not finite."""
    gathered: dict[str, dict[str, list[float]]] = {}
    for name, metric, value in values:
        if value is not None and math.isfinite(value):
            gathered.setdefault(name, {}).setdefault(metric, []).append(float(value))
    return {name: {metric: (float(np.mean(v)), float(np.std(v)), len(v)) for metric, v in by_metric.items()}
            for name, by_metric in gathered.items()}
