"""Bar charts and embedding scatters as pictures: what export writes for bars and scatters.

The window draws a vector layer's bars and an embedding's scatter live with pyqtgraph
(hover, click to open an image); what it exports, like the command line's ``--out``, is
the picture drawn here with Pillow, in the window's colours: the same palette, groups in
the same order. So one result exports one way.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.view.gallery import BACKGROUND, TEXT, _font
from engine.view.display import Scatter

# Qualitative colours: Tableau's ten, then lighter companions; no two alike among the first ten.
PALETTE = ["#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#BDBDBD", "#BCBD22", "#17BECF",
           "#AEC7E8", "#FFBB78", "#98DF8A", "#FF9896", "#C5B0D5", "#C49C94", "#F7B6D2", "#DBDB8D", "#9EDAE5"]
AXIS = (110, 110, 110)
BAR = (31, 119, 180)
FONT_SIZE = 13


def group_order(groups: list[str]) -> list[str]:
    """The distinct groups in the order their colours are given: numbers by value, then names."""
    return sorted(set(groups), key=lambda text: (0, int(text)) if text.isdigit() else (1, text))


def scatter_picture(scatter: Scatter, width: int = 900, height: int = 640, radius: int = 3) -> np.ndarray:
    """The embedding as an RGB picture: one dot per image coloured by its group, a legend
    when the groups have a colour each, the title above."""
    names = group_order(scatter.groups)
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    legend = names if len(names) <= len(PALETTE) else []
    font = _font(FONT_SIZE)
    legend_width = max((int(font.getlength(name)) for name in legend), default=0) + 40 if legend else 0
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top, left, bottom, right = 32, 16, height - 16, width - 16 - legend_width
    draw.text((left, 8), scatter.title, fill=TEXT, font=font)
    draw.rectangle((left, top, right, bottom), outline=AXIS)
    xy = np.asarray(scatter.xy, dtype=np.float64).reshape(-1, 2)
    if len(xy):
        low, high = xy.min(axis=0), xy.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        inner = np.array([right - left - 4 * radius, bottom - top - 4 * radius], dtype=np.float64)
        # y grows upwards in a plot and downwards in a picture
        placed = (xy - low) / span * inner
        xs = np.rint(left + 2 * radius + placed[:, 0]).astype(np.int64)
        ys = np.rint(bottom - 2 * radius - placed[:, 1]).astype(np.int64)
        index = {name: i for i, name in enumerate(names)}
        groups = np.fromiter((index[group] for group in scatter.groups), dtype=np.int64, count=len(xy))
        picture = Image.fromarray(_stamp_discs(np.asarray(picture).copy(), xs, ys, groups, _rgb(
            [colour[name] for name in names]), radius))
        draw = ImageDraw.Draw(picture)
    for row, name in enumerate(legend):
        y = top + 6 + row * (FONT_SIZE + 6)
        x = right + 14
        draw.ellipse((x, y + 3, x + 8, y + 11), fill=colour[name])
        draw.text((x + 14, y), name, fill=TEXT, font=font)
    return np.asarray(picture)


def _stamp_discs(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, groups: np.ndarray, colours: np.ndarray,
                 radius: int) -> np.ndarray:
    """A disc of ``radius`` pixels at each (x, y) in its group's colour, later points on top.

    One array assignment per pixel of the disc, over every point at once: a million points
    take about a second, where drawing them one ellipse at a time took many.
    """
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
               if dx * dx + dy * dy <= radius * radius + radius]
    rgb = colours[groups]
    height, width = canvas.shape[:2]
    for dy, dx in offsets:
        y, x = ys + dy, xs + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        # Fancy assignment keeps the last of repeated indices: draw order, as one ellipse after another.
        canvas[y[inside], x[inside]] = rgb[inside]
    return canvas


def _rgb(hex_colours: list[str]) -> np.ndarray:
    return np.array([[int(text[i:i + 2], 16) for i in (1, 3, 5)] for text in hex_colours], dtype=np.uint8).reshape(-1, 3)


def bar_picture(values: np.ndarray, legend: str = "", width: int = 900, height: int = 360) -> np.ndarray:
    """A vector as bars from a zero line, its largest and smallest values marked."""
    values = np.asarray(values, dtype=np.float64).ravel()
    font = _font(FONT_SIZE)
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top, left, bottom, right = 28, 64, height - 24, width - 16
    draw.text((left, 6), f"{legend or 'value'} of {values.size} units", fill=TEXT, font=font)
    draw.rectangle((left, top, right, bottom), outline=AXIS)
    if values.size:
        low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
        scale = (bottom - top) / (high - low) if high > low else 0.0
        zero = bottom - (0.0 - low) * scale
        step = (right - left) / values.size
        gap = 1 if step >= 3 else 0  # bars apart where there is room, touching where there is not
        for index, value in enumerate(values):
            x0 = left + round(index * step)
            x1 = max(x0, left + round((index + 1) * step) - 1 - gap)
            y = round(zero - value * scale)
            draw.rectangle((x0, min(y, round(zero)), x1, max(y, round(zero))), fill=BAR)
        draw.line((left, zero, right, zero), fill=AXIS)
        draw.text((6, top - 6), f"{high:.3g}", fill=TEXT, font=font)
        draw.text((6, bottom - 8), f"{low:.3g}", fill=TEXT, font=font)
    return np.asarray(picture)


def _ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values from a tick at or below low to one at or above high, at most ``most``."""
    for step in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0):
        first, last = np.floor(low / step + 1e-9), np.ceil(high / step - 1e-9)
        if last - first + 1 <= most:
            break
    return [round(float(index * step), 6) + 0.0 for index in np.arange(first, last + 1)]  # + 0.0: no "-0"


def line_plot_picture(series: dict[str, list[float]], x_labels: list[str], title: str = "", y_label: str = "",
                      y_range: tuple[float, float] = (0.0, 1.0), width: int = 900,
                      height: int = 360) -> tuple[np.ndarray, dict[str, list[tuple[int, int] | None]]]:
    """Lines over named x positions, one per series, each point marked; the legend beside the
    plot, so it never covers a line.

    ``y_range`` is widened to take every finite value; a NaN is a gap in its line. Returns
    the picture and, per series, where each value was drawn (x, y in picture pixels; None
    for a NaN), so what the figure shows can be checked against the numbers.
    """
    font = _font(FONT_SIZE)
    names = list(series)
    finite = [float(v) for values in series.values() for v in values if v is not None and np.isfinite(v)]
    low, high = min([y_range[0], *finite]), max([y_range[1], *finite])
    ticks = _ticks(low, high)
    low, high = ticks[0], ticks[-1]
    tick_width = max(int(font.getlength(f"{t:g}")) for t in ticks)
    legend_width = max((int(font.getlength(name)) for name in names), default=0) + 44
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    top, left = 30 + (FONT_SIZE + 4 if y_label else 0), 14 + tick_width
    bottom, right = height - 2 * FONT_SIZE - 8, width - legend_width
    draw.text((left, 8), title, fill=TEXT, font=font)
    if y_label:
        draw.text((left, 8 + FONT_SIZE + 4), y_label, fill=TEXT, font=font)
    draw.rectangle((left, top, right, bottom), outline=AXIS)

    def to_y(value: float) -> int:
        return round(bottom - 6 - (value - low) / (high - low or 1.0) * (bottom - top - 12))

    count = max(len(x_labels), 1)
    xs = [round(left + 24 + index * (right - left - 48) / max(count - 1, 1)) for index in range(count)]
    for value in ticks:
        y = to_y(value)
        draw.line((left - 4, y, left, y), fill=AXIS)
        draw.line((left + 1, y, right - 1, y), fill=(60, 60, 60))
        draw.text((left - 6, y), f"{value:g}", fill=TEXT, font=font, anchor="rm")
    # Labels that would run into each other are thinned out, the first and last kept.
    widest = max((font.getlength(label) for label in x_labels), default=0.0) + 8
    every = max(1, int(np.ceil(widest / max((right - left - 48) / max(count - 1, 1), 1.0))))
    for index, (x, label) in enumerate(zip(xs, x_labels)):
        draw.line((x, bottom, x, bottom + 4), fill=AXIS)
        if index % every == 0 or index == count - 1:
            draw.text((x, bottom + 6), label, fill=TEXT, font=font, anchor="ma")
    drawn: dict[str, list[tuple[int, int] | None]] = {}
    for index, name in enumerate(names):
        colour = PALETTE[index % len(PALETTE)]
        points = [(x, to_y(float(v))) if v is not None and np.isfinite(v) else None for x, v in zip(xs, series[name])]
        for start, end in zip(points, points[1:]):
            if start and end:
                draw.line((*start, *end), fill=colour, width=2)
        for point in points:
            if point:
                draw.ellipse((point[0] - 4, point[1] - 4, point[0] + 4, point[1] + 4), fill=colour)
        drawn[name] = points
        y = top + 6 + index * (FONT_SIZE + 6)
        draw.line((right + 12, y + 7, right + 30, y + 7), fill=colour, width=2)
        draw.text((right + 36, y), name, fill=TEXT, font=font)
    return np.asarray(picture), drawn
