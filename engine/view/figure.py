"""The exported picture: what the canvas shows, with its colour bar and a caption strip.

A PNG of a map without its scale cannot be read: nobody can tell what a colour means.
So an export (the window's File > Export, the command line's ``--out``) writes, by
default, the rendered picture at its top left, pixel for pixel what the canvas shows,
the colour bar to its right (the same ticks and clipping statement as the canvas's,
from ``engine.view.colorbar``) and a caption strip under both: the method, the target
and the layer, then what the colour scale clips. Turned off, the export is the bare
picture.

Needs only numpy and Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.view.colorbar import ColourBar
from engine.view.colormaps import BACKGROUND, colormap_lut
from engine.view.gallery import TEXT, _font

FONT_SIZE = 13
LINE = FONT_SIZE + 5
MARGIN = 10
BAR_WIDTH = 18
TICK = 5
MIN_BAR_HEIGHT = 160  # a bar beside a small picture still has room for its labels
ARROW = 9  # the height of the triangle that marks a clipped end (as matplotlib's extend="max")
CAPTION_WRAP_MIN = 360  # a caption beside a narrow picture wraps at this width, not the picture's


def bar_column(bar: ColourBar, height: int) -> np.ndarray:
    """The bar's colours from top (the high level) to bottom, ``height`` x 3 uint8: row
    y has the colormap's entry round(255 * (1 - y / (height - 1)))."""
    fractions = 1.0 - np.arange(height) / max(height - 1, 1)
    return colormap_lut(bar.colormap)[np.rint(fractions * 255).astype(int)]


def compose(picture: np.ndarray, bar: ColourBar | None, caption: list[str]) -> np.ndarray:
    """``picture`` at the top left, ``bar`` to its right (when there is one), the
    ``caption`` lines (and the bar's clipping statement) wrapped in a strip below."""
    height, width = picture.shape[:2]
    font = _font(FONT_SIZE)
    bar_width = 0
    if bar is not None:
        labels = [label for _value, label in bar.ticks]
        label_width = max((font.getlength(label) for label in labels), default=0)
        legend_width = font.getlength(bar.legend) if bar.legend else 0
        bar_width = int(MARGIN + max(BAR_WIDTH + TICK + 4 + label_width, legend_width) + MARGIN)
    body_height = max(height, MIN_BAR_HEIGHT + 2 * MARGIN + 2 * LINE) if bar is not None else height
    lines = [line for line in caption if line] + ([bar.caption] if bar is not None and bar.caption else [])
    total_width = max(width + bar_width, CAPTION_WRAP_MIN if lines else 0)
    wrapped = [piece for line in lines for piece in wrap(line, total_width - 2 * MARGIN, font)]
    strip = len(wrapped) * LINE + 2 * MARGIN if wrapped else 0
    figure = Image.new("RGB", (total_width, body_height + strip), BACKGROUND)
    figure.paste(Image.fromarray(np.ascontiguousarray(picture)), (0, 0))
    draw = ImageDraw.Draw(figure)
    if bar is not None:
        _draw_bar(draw, figure, bar, left=width + MARGIN, top=MARGIN + LINE, bottom=body_height - MARGIN - LINE)
    for row, text in enumerate(wrapped):
        draw.text((MARGIN, body_height + MARGIN + row * LINE), text, fill=TEXT, font=font)
    return np.asarray(figure)


def _draw_bar(draw: ImageDraw.ImageDraw, figure: Image.Image, bar: ColourBar, left: int, top: int, bottom: int) -> None:
    font = _font(FONT_SIZE)
    if bar.legend:
        draw.text((left, top - LINE), bar.legend, fill=TEXT, font=font)
    inner_top = top + (ARROW if bar.clipped_high else 0)
    inner_bottom = bottom - (ARROW if bar.clipped_low else 0)
    column = bar_column(bar, inner_bottom - inner_top)
    figure.paste(Image.fromarray(np.repeat(column[:, None, :], BAR_WIDTH, axis=1)), (left, inner_top))
    lut = colormap_lut(bar.colormap)
    right = left + BAR_WIDTH - 1
    if bar.clipped_high:  # a triangle in the top colour: values go on beyond the bar
        draw.polygon([(left, inner_top - 1), (right, inner_top - 1), ((left + right) / 2, top)], fill=tuple(lut[-1]))
    if bar.clipped_low:
        draw.polygon([(left, inner_bottom), (right, inner_bottom), ((left + right) / 2, bottom)], fill=tuple(lut[0]))
    low, high = bar.levels
    span = inner_bottom - 1 - inner_top
    for value, label in bar.ticks:
        y = inner_top + (high - value) / (high - low) * span
        draw.line((right + 1, y, right + TICK, y), fill=TEXT)
        draw.text((right + TICK + 4, y), label, fill=TEXT, font=font, anchor="lm")


def wrap(text: str, width: float, font) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (a longer word
    stands on its own line)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + ([current] if current else [])
