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
        xs = left + 2 * radius + placed[:, 0]
        ys = bottom - 2 * radius - placed[:, 1]
        for x, y, group in zip(xs, ys, scatter.groups):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour[group])
    for row, name in enumerate(legend):
        y = top + 6 + row * (FONT_SIZE + 6)
        x = right + 14
        draw.ellipse((x, y + 3, x + 8, y + 11), fill=colour[name])
        draw.text((x + 14, y), name, fill=TEXT, font=font)
    return np.asarray(picture)


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
