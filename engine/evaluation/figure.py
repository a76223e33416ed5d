"""A comparison as one picture and as a table: what the Compare view exports.

The picture: each map over the photo in a row of tiles, captioned with its name and
scores (the reference maps after the methods), the boxes around the object drawn on
each, then the deletion and insertion curves of every map, one plot each. The table: one
row per map, its scores, whether it beat the edge map, and why a method gave no map.
"""

from __future__ import annotations

import csv
import dataclasses
import io

import numpy as np
from PIL import Image

from engine.evaluation.report import ImageReport, MapScores, boxes_in_input
from engine.view.colormaps import apply_colormap
from engine.view.display import Display, MapOverPhoto, Picture, ScalarMap
from engine.view.gallery import Tile, draw_boxes, render_gallery
from engine.view.plots import line_plot_picture
from engine.view.render import render

TILE = 200
SHORT = {"deletion": "del", "insertion": "ins", "road": "ROAD", "pointing": "point", "randomisation": "rand"}


def score_text(scores: MapScores) -> str:
    """'del 0.081  ins 0.412' and the like, in the report's order of metrics."""
    if scores.refused:
        return "no map: see the table"
    return "  ".join(f"{SHORT.get(metric, metric)} {value:.3f}" for metric, value in scores.scores.items()
                     if metric in SHORT)


def boxed_display(display: Display, boxes, photo_size: tuple[int, int]) -> Display:
    """``display`` with ``boxes`` ((x0, y0, x1, y1) in the pixels of a photo of ``photo_size``,
    (width, height)) drawn on it in its own pixels: a map over the photo takes them as
    they are, a map or picture at the model input's size scaled to it. Other kinds (a grid
    of tiles) are no picture of the photo: returned as they are."""
    if not boxes:
        return display
    if isinstance(display, MapOverPhoto):
        size = photo_size
    elif isinstance(display, (ScalarMap, Picture)):
        height, width = (display.values if isinstance(display, ScalarMap) else display.rgb).shape[:2]
        size = (width, height)
    else:
        return display
    return dataclasses.replace(display, boxes=[*display.boxes, *boxes_in_input(boxes, photo_size, size)])


def map_tile(scores: MapScores, photo: np.ndarray, boxes=()) -> Image.Image:
    """The map as its method draws it (its colours, over the photo), or, for a map without a
    picture of its own, in colour over a dimmed copy of the photo; ``boxes`` (x0, y0, x1, y1
    in the photo's pixels) drawn on it."""
    photo_size = (photo.shape[1], photo.shape[0])
    display = getattr(scores.result, "display", None)
    if display is not None:
        try:
            return Image.fromarray(render(boxed_display(display, boxes, photo_size)))
        except TypeError:  # a display that is no map (a method's grid of tiles): drawn below
            pass
    values = scores.values
    low, high = float(np.min(values)), float(np.percentile(values, 99))
    coloured = apply_colormap(values, (low, max(high, low + 1e-12)), "inferno").astype(np.float32)
    base = np.asarray(Image.fromarray(photo).resize((values.shape[1], values.shape[0])), np.float32)
    blended = (0.35 * base + 0.65 * coloured).clip(0, 255).astype(np.uint8)
    return Image.fromarray(draw_boxes(blended, boxes_in_input(boxes, photo_size, (values.shape[1], values.shape[0]))))


def comparison_figure(report: ImageReport, photo: np.ndarray) -> np.ndarray:
    """The picture of a comparison (see the module); ``photo`` the H x W x 3 photo."""
    tiles = [Tile(image=map_tile(scores, photo, report.boxes), caption=f"{scores.name}\n{score_text(scores)}")
             for scores in report.maps if not scores.refused]
    mosaic, _ = render_gallery([("", tiles)], tile=TILE, caption_lines=2)
    parts = [mosaic]
    labels = [f"{p:.1f}" for p in np.linspace(0, 1, 11)]
    for kind, better in (("deletion", "lower"), ("insertion", "higher")):
        series = {f"{scores.name} ({scores.scores[kind]:.3f})": list(np.interp(np.linspace(0, 1, 11),
                                                                               scores.curves[kind].fractions,
                                                                               scores.curves[kind].probabilities))
                  for scores in report.maps if kind in scores.curves}
        if series:
            picture, _ = line_plot_picture(series, labels, title=f"{kind} of '{report.target['label']}': area in "
                                                                 f"brackets, {better} is better",
                                           y_label="probability of the class", width=mosaic.shape[1])
            parts.append(picture)
    width = max(part.shape[1] for part in parts)
    padded = [np.pad(part, ((0, 0), (0, width - part.shape[1]), (0, 0)), constant_values=0) for part in parts]
    return np.concatenate(padded, axis=0)


def comparison_csv(report: ImageReport) -> str:
    """The comparison's table: one row per map."""
    metrics = sorted({metric for scores in report.maps for metric in scores.scores})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["map", "reference", *metrics, "beats_edges", "refused"])
    for scores in report.maps:
        beats = report.beats_edges(scores)
        writer.writerow([scores.name, scores.reference, *(f"{scores.scores[m]:.6f}" if m in scores.scores else ""
                                                          for m in metrics),
                         "" if beats is None else beats, scores.refused])
    return buffer.getvalue()
