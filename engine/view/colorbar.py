"""The colour bar beside a map: its ticks, its end labels and what its range leaves out.

One source for the canvas's colour bar (``gui.canvas``) and the exported picture's
(``engine.view.figure``), so the two always carry the same ticks and say the same thing.

Ticks are "nice" numbers (1, 2 or 5 times a power of ten, as in Heckbert's "Nice
numbers for graph labels"), at most ``MAX_TICKS`` of them: a bar 600 px tall labelled
every 30 px is unreadable, and a reader only needs a few values to read the rest.

A map's colours often stop short of its values: attribution maps top out at the 99th
percentile of |map|, because a few pixels are far larger than the rest and would leave the
map black otherwise. Values beyond the ends draw in the end colours. That is stated, not
left for the reader to discover: the clipped end's label reads "> 0.14" (ASCII, which
every font the export may draw with has), the bar ends in a triangle there, and ``caption``
says where the range stops, why (when the display says: ``clipped_at``) and how far the
values go (the same maximum the result's text reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_TICKS = 6
STEPS = (1.0, 2.0, 5.0)  # nice step mantissas, finest first: ticks read 0.05, 0.1, never 0.075
# An interior tick closer than this fraction of the bar to a labelled clipped end is left out:
# two labels that close overlap on a bar a few hundred pixels tall.
END_CLEARANCE = 0.12


@dataclass(frozen=True)
class ColourBar:
    """What a colour bar shows: the colours between ``levels``, the ``ticks`` (value, label)
    from bottom to top, and the clipping stated."""

    levels: tuple[float, float]
    colormap: str
    legend: str  # what the values mean
    ticks: tuple[tuple[float, str], ...]
    clipped_low: bool  # values below levels[0] draw in the bottom colour
    clipped_high: bool  # values above levels[1] draw in the top colour
    value_range: tuple[float, float]  # the finite values' smallest and largest
    caption: str  # the clipping statement; "" when every value is inside the levels


def colour_bar(levels: tuple[float, float], colormap: str, legend: str = "", values: np.ndarray | None = None,
               clipped_at: str = "") -> ColourBar:
    """The colour bar of a map drawn through ``colormap`` between ``levels``.

    ``values`` are the map's values (to tell whether the levels clip them); ``clipped_at``
    says how the levels were chosen ("the 99th percentile of |map|"), for the caption.
    """
    low, high = float(levels[0]), float(levels[1])
    if not high > low:  # a constant map: one colour; give the bar a span to draw
        high = low + 1.0
    value_range = _finite_range(values, (low, high))
    tolerance = 1e-6 * (high - low)
    clipped_low = value_range[0] < low - tolerance
    clipped_high = value_range[1] > high + tolerance
    ticks = nice_ticks(low, high, clipped_low=clipped_low, clipped_high=clipped_high)
    return ColourBar(levels=(low, high), colormap=colormap, legend=legend, ticks=ticks, clipped_low=clipped_low,
                     clipped_high=clipped_high, value_range=value_range,
                     caption=clipping_caption(low, high, value_range, clipped_low, clipped_high, clipped_at))


def nice_ticks(low: float, high: float, *, clipped_low: bool = False, clipped_high: bool = False,
               most: int = MAX_TICKS) -> tuple[tuple[float, str], ...]:
    """At most ``most`` ticks between ``low`` and ``high`` at nice values, with labels.

    A clipped end always carries a tick, labelled "< low" or "> high"; interior ticks too
    close to it are dropped so the labels do not overlap.
    """
    span = high - low
    if not (math.isfinite(span) and span > 0):
        return ((low, format_value(low, 1.0)),)
    for step in _candidate_steps(span):
        first = math.ceil(low / step - 1e-9)
        last = math.floor(high / step + 1e-9)
        values = [index * step for index in range(first, last + 1)]
        if clipped_low:
            values = [v for v in values if v - low > END_CLEARANCE * span]
        if clipped_high:
            values = [v for v in values if high - v > END_CLEARANCE * span]
        count = len(values) + clipped_low + clipped_high
        if not (2 <= count <= most or (count <= most and step > span)):
            continue  # labels are only formatted for the step that is kept: a frame's bar is drawn live
        ticks = [(v, format_value(v, step)) for v in values]
        if clipped_low:
            ticks.insert(0, (low, "< " + format_value(low, step / 10)))  # a digit finer than the ticks
        if clipped_high:
            ticks.append((high, "> " + format_value(high, step / 10)))
        return tuple(ticks)
    return ((low, format_value(low, span)), (high, format_value(high, span)))


def _candidate_steps(span: float):
    """Nice steps from about span / 20 upwards, finest first."""
    exponent = math.floor(math.log10(span)) - 2
    for power in range(exponent, exponent + 4):
        for mantissa in STEPS:
            yield mantissa * 10.0 ** power


def _decimals(step: float) -> int:
    """Decimals enough to tell ticks ``step`` apart."""
    return max(0, -math.floor(math.log10(step) + 1e-9))


def format_value(value: float, step: float, decimals: int | None = None) -> str:
    """``value`` as a tick reads: fixed decimals for everyday magnitudes, 3 significant
    digits in exponent form for very large or very small ones; never "-0"."""
    if value == 0 or abs(value) < step * 1e-6:
        return "0"
    if abs(value) >= 1e5 or (abs(value) < 1e-3 and step < 1e-3):
        return f"{value:.3g}"
    decimals = _decimals(step) if decimals is None else decimals
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text  # 0.1, not 0.10


def clipping_caption(low: float, high: float, value_range: tuple[float, float], clipped_low: bool,
                     clipped_high: bool, clipped_at: str = "") -> str:
    """One sentence on what the colour range leaves out ("" when it leaves nothing out)."""
    if not (clipped_low or clipped_high):
        return ""
    why = f" ({clipped_at})" if clipped_at else ""
    parts = []
    if clipped_high:
        parts.append(f"values above {number(high)} (up to the max {number(value_range[1])}) draw in the top colour")
    if clipped_low:
        parts.append(f"values below {number(low)} (down to the min {number(value_range[0])}) in the bottom colour")
    return f"Colour scale clipped at {_ends(low, high, clipped_low, clipped_high)}{why}: " + "; ".join(parts) + "."


def _ends(low: float, high: float, clipped_low: bool, clipped_high: bool) -> str:
    if clipped_low and clipped_high:
        return f"{number(low)} and {number(high)}"
    return number(high) if clipped_high else number(low)


def number(value: float) -> str:
    """A value as the caption quotes it: three significant digits, as a person reads them
    (1150, not 1.15e+03; exponents only beyond everyday magnitudes)."""
    if value != 0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.3g}"
    return np.format_float_positional(value, precision=3, unique=True, fractional=False, trim="-")


def _finite_range(values: np.ndarray | None, fallback: tuple[float, float]) -> tuple[float, float]:
    if values is None:
        return fallback
    values = np.asarray(values, dtype=np.float32)
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else fallback


def display_colour_bar(display, view=None) -> ColourBar | None:
    """The colour bar of ``display`` as ``render(display, view)`` draws it; None for the
    kinds drawn in their own colours (pictures, galleries, plots, RGB tiles)."""
    from engine.view.display import TileGrid
    from engine.view.render import colour_scale

    scale = colour_scale(display, view)
    if scale is None:
        return None
    drawn = display.tiles if isinstance(display, TileGrid) else display
    return colour_bar(scale.levels, scale.colormap, scale.legend, values=drawn.values,
                      clipped_at=getattr(drawn, "clipped_at", ""))
