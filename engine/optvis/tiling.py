"""Gradients of large images computed tile by tile, so memory stays bounded by the tile.

An objective that sums over a layer's units (DeepDream's 0.5*||a||^2, the guided dot
product) splits exactly into per-tile parts if every unit of the layer is *owned* by one
tile. So the image is cut into a grid of cores; a tile reads its core plus an overlap
(``margin``) on every side, runs the network on that window, and counts only the units it
owns: those whose position falls inside its core. The gradients of the windows are added
where they overlap. When the margin is at least half the layer's receptive field, a unit
owned by a tile sees exactly what it sees in the whole image, so the sum of the tiles'
gradients *is* the whole image's gradient; there is no seam to blend away. For deep layers
whose theoretical field is larger than any sensible margin, units near a core's edge miss
some far context; moving the grid by a random offset at every step (as the Google
DeepDream notebook moves its tiles by rolling the image) keeps that small error from
landing in the same place twice, so no grid shows in the picture.

Owning units by position needs the windows to start on the layer's grid of units: every
core edge and every window's start is a multiple of ``align``, the layers' jump (stride in
input pixels) found by ``tiling_geometry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from engine.core.errors import MethodInputError
from engine.models.model import LoadedModel

# A loss function for one window: (pixels of the window, the window or None for the whole
# image) -> (scalar loss to differentiate, statistics to add up over the windows).
WindowLoss = Callable[[torch.Tensor, "Window | None"], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass(frozen=True)
class Window:
    """One tile: the pixels it reads (core plus margin) and the core whose units it owns.

    Coordinates are input pixels of the whole image, end exclusive.
    """

    top: int
    bottom: int
    left: int
    right: int
    core_top: int
    core_bottom: int
    core_left: int
    core_right: int
    last_row: bool  # the core reaches the image's bottom edge
    last_col: bool  # ... its right edge

    def units(self, jump: int) -> tuple[slice, slice]:
        """Rows and columns of this window's feature map (a layer of this jump) that it owns.

        Unit ``k`` of the window's map is unit ``top / jump + k`` of the whole image's map,
        because the window starts on the layer's grid. The last tile of a row or column
        also owns whatever units a network's rounding adds past the last full jump.
        """
        return (_owned(self.top, self.core_top, self.core_bottom, self.last_row, jump),
                _owned(self.left, self.core_left, self.core_right, self.last_col, jump))


def _owned(start: int, core_start: int, core_end: int, last: bool, jump: int) -> slice:
    first = (core_start - start) // jump
    return slice(first, None if last else (core_end - start) // jump)


def tile_windows(height: int, width: int, tile: int, margin: int, align: int = 1,
                 offset: tuple[int, int] = (0, 0)) -> list[Window]:
    """The grid of windows covering a ``height`` x ``width`` image, row by row.

    Cores are ``tile`` pixels (rounded down to a multiple of ``align``, at least ``align``)
    except the first and last of each axis; the grid is shifted by ``offset`` (taken modulo
    the tile and rounded to ``align``) so a caller can move the seams between steps. An axis
    no longer than one tile is not cut at all.

    Every window has the same size, ``tile + 2 * margin`` and the image's size modulo
    ``align`` (or the whole axis, if shorter); a window near an edge is moved inwards
    instead of being cut short. One size, because CPU convolutions (oneDNN) prepare every
    new input shape afresh: with windows cut to fit, every move of the grid brought new
    shapes and measured twice the time per step. The remainder modulo ``align``, because
    networks padded like TensorFlow's "SAME" (the bundled EfficientNet) pad one pixel more
    or less depending on the parity of each stage's input, and a window must be padded as
    the image is, or its units would sit half a stride away from the image's.
    """
    align = max(1, int(align))
    tile = max(align, tile // align * align)
    margin = -(-max(0, margin) // align) * align
    rows = _placed(_cuts(height, tile, offset[0] % tile // align * align, align), height,
                   tile + 2 * margin + height % align, margin)
    cols = _placed(_cuts(width, tile, offset[1] % tile // align * align, align), width,
                   tile + 2 * margin + width % align, margin)
    windows = []
    for row, (top, bottom, core_top, core_bottom) in enumerate(rows):
        for col, (left, right, core_left, core_right) in enumerate(cols):
            windows.append(Window(top=top, bottom=bottom, left=left, right=right,
                                  core_top=core_top, core_bottom=core_bottom, core_left=core_left, core_right=core_right,
                                  last_row=row == len(rows) - 1, last_col=col == len(cols) - 1))
    return windows


def _placed(cores: list[tuple[int, int]], length: int, size: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core start, core end) of each window along one axis.

    Each window starts ``margin`` before its core, moved inwards to stay inside the image;
    the start stays a multiple of the alignment (``length - size`` is one).
    """
    size = min(size, length)
    placed = []
    for core_start, core_end in cores:
        start = min(max(0, core_start - margin), length - size)
        placed.append((start, start + size, core_start, core_end))
    return placed


def _cuts(length: int, tile: int, offset: int, align: int) -> list[tuple[int, int]]:
    if length <= tile:
        return [(0, length)]
    edges = [0] + list(range(offset or tile, length, tile))
    if length - edges[-1] < align and len(edges) > 1:
        edges.pop()  # a sliver shorter than one unit joins the core before it
    edges.append(length)
    return list(zip(edges, edges[1:]))


def tiled_gradient(loss: WindowLoss, image: torch.Tensor, windows: Sequence[Window],
                   check: Callable[[], None] | None = None) -> tuple[torch.Tensor, float, dict[str, float]]:
    """d(sum of the windows' losses)/d(image), the summed loss and the summed statistics.

    Each window's graph is freed before the next one is built, so peak memory is that of
    one window. ``check`` runs between windows (a cancel token's check).
    """
    gradient = torch.zeros_like(image)
    total = 0.0
    stats: dict[str, float] = {}
    for window in windows:
        if check is not None:
            check()
        crop = image[..., window.top:window.bottom, window.left:window.right].detach().requires_grad_(True)
        value, window_stats = loss(crop, window)
        part, = torch.autograd.grad(value, crop)
        gradient[..., window.top:window.bottom, window.left:window.right] += part
        total += float(value.detach())
        _add(stats, window_stats)
    return gradient, total, stats


@torch.no_grad()
def tiled_statistics(loss: WindowLoss, image: torch.Tensor, windows: Iterable[Window]) -> tuple[float, dict[str, float]]:
    """The summed loss and statistics over the windows, without gradients."""
    total = 0.0
    stats: dict[str, float] = {}
    for window in windows:
        value, window_stats = loss(image[..., window.top:window.bottom, window.left:window.right], window)
        total += float(value)
        _add(stats, window_stats)
    return total, stats


def _add(into: dict[str, float], values: dict[str, float]) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0.0) + float(value)


@dataclass(frozen=True)
class TilingGeometry:
    align: int  # every window starts on a multiple of this: the least common multiple of the layers' jumps
    jumps: dict[str, int]  # per layer, its stride in input pixels
    reach: int  # half the largest receptive field, in pixels: the margin that makes tiling exact


def tiling_geometry(model: LoadedModel, paths: Sequence[str], size: int | None = None) -> TilingGeometry:
    """Jumps and receptive fields of ``paths`` at a ``size`` px square input (default: the
    model's own size), from the fields and shapes ``model.state`` traced.

    Raises ``ValueError`` for a layer without a regular grid of units over the image (a
    pooled vector, an adaptively pooled map of fixed size), which cannot be cut into tiles:
    a layer has a grid when ``jump`` more input pixels give it one more unit.
    """
    size = size or model.preprocessing.size
    state = model.state
    fields = state.receptive_fields(size)
    found = {}
    for path in paths:
        field = fields.get(path)
        jumps = field.jump if field is not None else (0.5, 0.5)
        if field is None or any(j != int(j) or j < 1 for j in jumps) or jumps[0] != jumps[1]:
            raise ValueError(f"layer '{path}' has no regular grid of units over the image, so it cannot be tiled")
        found[path] = (int(jumps[0]), max(field.size))
    step = math.lcm(*(jump for jump, _ in found.values()))
    small = state.output_shapes(size)
    order = list(small)
    last = max(paths, key=order.index)
    try:
        # Only as far as the deepest of the layers: a head that takes one input size only
        # (a Linear after a flatten) must not stop a dream on the layers before it.
        large = state.output_shapes((size + 2 * step, size + step), until=last)
    except MethodInputError:  # the layers take no other size: there is no grid to check
        large = {}
    for path, (jump, _) in found.items() if large else ():
        if (large[path][-2] - small[path][-2], large[path][-1] - small[path][-1]) != (2 * step // jump, step // jump):
            raise ValueError(f"layer '{path}' has no regular grid of units over the image, so it cannot be tiled")
    jumps = {path: jump for path, (jump, _) in found.items()}
    reach = math.ceil(max(field_size for _, field_size in found.values()) / 2)
    return TilingGeometry(align=math.lcm(*jumps.values()), jumps=jumps, reach=reach)
