"""Galleries: rows of image tiles with captions, as one picture plus clickable regions.

Nearest neighbours, maximally activating patches and the t-SNE grid all show many small
images. Rendering them here, into one RGB mosaic with the captions drawn in, means the
canvas, the PNG export and the CLI's ``--out`` all show the same thing, and each tile's
``Region`` tells the window which image a click means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.view.colormaps import BACKGROUND
from engine.view.display import Region

TEXT = (225, 225, 225)
BOX = (255, 210, 0)


@dataclass
class Tile:
    image: Image.Image  # any size; fitted into the tile square, aspect kept
    path: str = ""
    caption: str = ""
    box: Optional[tuple[float, float, float, float]] = None  # in the source image's pixels, for the click


# Captions are read at 100% on a screen: 13 px is the smallest size at which "motorcycle"
# and "3.38" stay legible (the cap height is then 9 px), whatever the tile's size.
MIN_FONT = 13


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    # Pillow's built-in scalable font (Pillow >= 10.1): the same glyphs on every machine, offline.
    return ImageFont.load_default(size=size)


def caption_font_size(tile: int) -> int:
    """The captions' and headers' font size, in pixels, for tiles of ``tile`` pixels."""
    return max(MIN_FONT, tile // 9)


def _line_height(size: int) -> int:
    ascent, descent = _font(size).getmetrics()
    return ascent + descent + 2


def render_gallery(rows: list[tuple[str, list[Tile]]], tile: int = 96, gap: int = 4, caption_lines: int = 1,
                   header_width: int = 0) -> tuple[np.ndarray, list[Region]]:
    """Lay out rows of tiles; each row may start with a header (e.g. "channel 12").

    A caption may have several lines ("motorcycle\n17.6"); each is shortened with an
    ellipsis to its tile's width, and the strip under the tiles is as tall as the longest
    caption (at least ``caption_lines`` lines). Returns the mosaic (H x W x 3 uint8) and
    one Region per tile, in mosaic pixels.
    """
    font_size = caption_font_size(tile)
    font, line_height = _font(font_size), _line_height(font_size)
    captions = [t.caption for _h, ts in rows for t in ts if t.caption]
    lines = max([caption_lines, *(len(c.split("\n")) for c in captions)]) if captions else 0
    caption_height = line_height * lines + 2 if lines else 0
    if not header_width and any(header for header, _tiles in rows):
        header_width = max(_text_width(header, font_size) for header, _tiles in rows) + 2 * gap
    columns = max((len(tiles) for _header, tiles in rows), default=0)
    cell_h = tile + caption_height + gap
    width = header_width + columns * (tile + gap) + gap
    height = len(rows) * cell_h + gap
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    regions: list[Region] = []
    for row_index, (header, tiles) in enumerate(rows):
        top = gap + row_index * cell_h
        if header:
            draw.text((gap, top + tile // 2), header, fill=TEXT, font=font, anchor="lm")
        for column, item in enumerate(tiles):
            left = header_width + gap + column * (tile + gap)
            thumbnail = fit_into(item.image, tile)
            offset = (left + (tile - thumbnail.width) // 2, top + (tile - thumbnail.height) // 2)
            canvas.paste(thumbnail, offset)
            for number, line in enumerate(item.caption.split("\n") if item.caption else []):
                draw.text((left + tile // 2, top + tile + 2 + number * line_height), _fit(line, font_size, tile),
                          fill=TEXT, font=font, anchor="ma")
            regions.append(Region(left=left, top=top, right=left + tile, bottom=top + tile, path=item.path,
                                  caption=item.caption, box=item.box))
    return np.asarray(canvas), regions


def fit_into(image: Image.Image, side: int) -> Image.Image:
    """Scale to fit a side x side square, aspect kept; small images (digits) stay crisp."""
    image = image.convert("RGB")
    scale = side / max(image.size)
    if scale == 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS
    return image.resize(size, resample)


def draw_boxes(rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Rectangles (top, left, bottom, right; bottom and right exclusive) drawn on a copy of a picture.

    A box narrower than a pixel (a small image's receptive field at an early layer) still
    shows as the pixel its centre falls in; a box reaching past the picture keeps its
    outer edges outside, as a receptive field that covers padding does; a box wholly
    outside the picture, or with a coordinate that is not a finite number, is not drawn.
    """
    if not boxes:
        return rgb
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 250))
    for top, left, bottom, right in boxes:
        rows = _pixel_span(top, bottom, image.height, width)
        columns = _pixel_span(left, right, image.width, width)
        if rows is None or columns is None:
            continue
        corners = [columns[0], rows[0], columns[1], rows[1]]
        if min(columns[1] - columns[0], rows[1] - rows[0]) < 2 * width:
            # The outline would cover the box; Pillow draws such outlines past the corners.
            draw.rectangle(corners, fill=BOX)
        else:
            draw.rectangle(corners, outline=BOX, width=width)
    return np.asarray(image)


def _pixel_span(start: float, end: float, size: int, margin: int) -> tuple[int, int] | None:
    """The first and last pixel (inclusive) of the edges [start, end) along an axis of ``size``
    pixels, or None when nothing of it lies in the picture.

    The pixels are those Pillow drew for [start, end - 1] before sub-pixel boxes were
    handled, so ordinary boxes land exactly where they always did. Edges beyond the
    picture are pulled in to ``margin`` pixels outside it (an outline ``margin`` wide
    drawn there stays invisible) so that huge coordinates never reach Pillow's integers.
    """
    try:
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(start) and math.isfinite(end)):
        return None
    start, end = min(start, end), max(start, end)
    if end <= 0 or start >= size:
        return None
    first, last = math.floor(start), math.floor(end - 1)
    if last < first:  # under a pixel wide: the one pixel its centre falls in
        first = last = min(max(math.floor((start + end) / 2), 0), size - 1)
    return max(first, -margin), min(last, size - 1 + margin)


def _text_width(text: str, size: int) -> int:
    return int(np.ceil(_font(size).getlength(text)))


def _fit(text: str, size: int, width: int) -> str:
    """Shorten a caption with an ellipsis until it fits under its tile."""
    if _text_width(text, size) <= width:
        return text
    while text and _text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"
