"""How a layer's output lies over the image: ``MapLayout``, and finding it from the traced shapes.

Convolutional layers give N x C x H x W maps. Other layers hold the same kind of map laid
out differently, and every method that reads a layer (activations, Grad-CAM, a unit's
gradient, DeepDream, neighbours...) sees it through ``MapLayout.as_map`` as N x C x h x w:

- **channels-last** (N x H x W x C): Swin's stages, ConvNeXt's LayerNorms and MLPs;
- **tokens** (N x L x C) of a vision transformer: a few *prefix* tokens (the class token,
  DeiT's distillation token, register tokens) and then one token per patch, row by row;
  the prefix tokens are set aside and the patch tokens become the grid.

The layout is found once per model from the shapes of one traced pass (``find_layouts``,
kept by ``ModelState.layouts``). A 4-D output is channels-last when only its middle axes
could be the image's grid at some stride (224 px in, 56 x 56 out: stride 4). A 3-D output
is tokens when its length is the size of a grid seen earlier in the pass (the patch
embedding's convolution, 14 x 14 for ViT-B/16) plus at most ``MAX_PREFIX_TOKENS``, or a
grid at a whole stride of the input. The grid itself is worked out again for each input
(``grid_for``), so a photo of another shape gives its own, non-square grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

MAP, CHANNELS_LAST, TOKENS, VECTOR, OTHER = "map", "channels-last", "tokens", "vector", "other"
SPATIAL_KINDS = (MAP, CHANNELS_LAST, TOKENS)
# Tokens before the patch grid: a class token, a distillation token, up to 8 registers.
MAX_PREFIX_TOKENS = 10
# Strides (input pixels per unit) a grid may be at; 1 for layers at the input's resolution.
MAX_STRIDE = 64


@dataclass(frozen=True)
class MapLayout:
    """How one layer's output lies over the image.

    ``grid`` is (h, w) at the size the layouts were found at; ``stride`` the input pixels
    per grid unit, which ``grid_for`` uses at other sizes. ``prefix``: tokens before the
    grid (tokens layouts only); ``registers``: how many of those are register tokens.
    """

    kind: str
    channels: int = 0
    grid: tuple[int, int] | None = None
    stride: float = 0.0
    prefix: int = 0
    registers: int = 0

    @property
    def spatial(self) -> bool:
        return self.kind in SPATIAL_KINDS

    @property
    def cells(self) -> int:
        """Units per channel on the grid (0 for a layout without one)."""
        return self.grid[0] * self.grid[1] if self.grid else 0

    def grid_for(self, tensor: torch.Tensor, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) of ``tensor``'s map, for an input of ``input_size`` (height, width)."""
        if self.kind == MAP:
            return int(tensor.shape[2]), int(tensor.shape[3])
        if self.kind == CHANNELS_LAST:
            return int(tensor.shape[1]), int(tensor.shape[2])
        if self.kind != TOKENS:
            raise ValueError(f"a {self.kind} output has no grid")
        return self.token_grid(int(tensor.shape[1]), input_size)

    def token_grid(self, length: int, input_size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(h, w) of a sequence of ``length`` tokens (prefix included) from an input of
        ``input_size`` (height, width)."""
        count = length - self.prefix
        if input_size is None or self.grid is None:
            return _factor_pair(count, self.grid[0] / self.grid[1] if self.grid else 1.0)
        height, width = input_size
        for rows in (math.floor(height / self.stride), math.ceil(height / self.stride), round(height / self.stride)):
            if rows > 0 and count % rows == 0 and abs(count // rows - width / self.stride) <= 1:
                return rows, count // rows
        return _factor_pair(count, height / width)

    def as_map(self, tensor: torch.Tensor, input_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``tensor`` (this layer's output) as N x C x h x w, a view where it can be one
        (gradients flow through it); prefix tokens are left out."""
        if self.kind == MAP:
            return tensor
        if self.kind == CHANNELS_LAST:
            return tensor.permute(0, 3, 1, 2)
        if self.kind == TOKENS:
            rows, columns = self.grid_for(tensor, input_size)
            patches = tensor[:, self.prefix:]
            return patches.reshape(tensor.shape[0], rows, columns, tensor.shape[2]).permute(0, 3, 1, 2)
        raise ValueError(f"a {self.kind} output is not a map")

    def prefix_tokens(self, tensor: torch.Tensor) -> torch.Tensor:
        """N x prefix x C: the tokens set aside (the class token first, in ViTs)."""
        return tensor[:, :self.prefix]

    def describe(self) -> str:
        """What the layer is, in a few words: "spatial 14x14", "tokens 14x14 + class token"."""
        if self.kind == VECTOR:
            return f"vector of {self.channels:,}"
        if self.grid is None:
            return "not a map"
        size = f"{self.grid[0]}x{self.grid[1]}"
        if self.kind == MAP:
            return f"spatial {size}"
        if self.kind == CHANNELS_LAST:
            return f"spatial {size}, channels last"
        return f"tokens {size}{self.prefix_words()}"

    def prefix_words(self) -> str:
        others = self.prefix - self.registers
        parts = []
        if others == 1:
            parts.append("class token")
        elif others == 2:
            parts.append("class and distillation tokens")
        elif others > 2:
            parts.append(f"{others} extra tokens")
        if self.registers:
            parts.append(f"{self.registers} register token{'s' if self.registers != 1 else ''}")
        return "".join(f" + {part}" for part in parts)


def registers_of(module) -> int:
    """How many register tokens the model says it has (timm's ``num_reg_tokens``; 0 without)."""
    return int(getattr(module, "num_reg_tokens", 0) or 0)


def find_layouts(output_shapes: Mapping[str, tuple], input_size: tuple[int, int],
                 registers: int = 0) -> dict[str, MapLayout]:
    """The layout of every layer in ``output_shapes`` (module path -> shape of its output for
    one 1 x 3 x H x W input of ``input_size`` (H, W), in execution order). ``registers``:
    how many of a token sequence's prefix tokens are registers, where the model says."""
    height, width = input_size
    grids: list[tuple[int, int]] = []  # every map's grid so far, newest last
    layouts = {}
    for path, shape in output_shapes.items():
        layout = _layout_of(tuple(shape), height, width, grids, registers)
        if layout.kind in (MAP, CHANNELS_LAST) and layout.grid not in grids[-1:]:
            grids.append(layout.grid)
        layouts[path] = layout
    return layouts


def _layout_of(shape: tuple, height: int, width: int, grids: list[tuple[int, int]], registers: int) -> MapLayout:
    if len(shape) == 2:
        return MapLayout(VECTOR, channels=int(shape[1]))
    if len(shape) == 4:
        channels_first = _stride_of(shape[2:], height, width)
        if channels_first is None and shape[0] == 1:
            stride = _stride_of(shape[1:3], height, width)
            if stride is not None:
                return MapLayout(CHANNELS_LAST, channels=int(shape[3]), grid=(int(shape[1]), int(shape[2])),
                                 stride=stride)
        if shape[2] * shape[3] == 1:
            return MapLayout(VECTOR, channels=int(shape[1]))  # a pooled map: one value per channel
        if channels_first is None:
            return MapLayout(OTHER)  # a transformer's per-head attention, (N, heads, tokens, tokens)
        return MapLayout(MAP, channels=int(shape[1]), grid=(int(shape[2]), int(shape[3])), stride=channels_first)
    if len(shape) == 3 and shape[0] == 1:
        length = int(shape[1])
        for grid in reversed(grids):
            prefix = length - grid[0] * grid[1]
            if 0 <= prefix <= MAX_PREFIX_TOKENS and grid[0] * grid[1] > 1:
                return _tokens(shape, grid, height, prefix, registers)
        for stride in range(1, MAX_STRIDE + 1):
            for rows, columns in ((height // stride, width // stride), (-(-height // stride), -(-width // stride))):
                prefix = length - rows * columns
                if 0 <= prefix <= MAX_PREFIX_TOKENS and rows * columns > 1:
                    return _tokens(shape, (rows, columns), height, prefix, registers)
    return MapLayout(OTHER)


def _tokens(shape: tuple, grid: tuple[int, int], height: int, prefix: int, registers: int) -> MapLayout:
    return MapLayout(TOKENS, channels=int(shape[2]), grid=grid, stride=height / grid[0], prefix=prefix,
                     registers=registers if registers < prefix else 0)


def _stride_of(grid: tuple, height: int, width: int) -> float | None:
    """The stride at which (h, w) is the input's grid, or None when it is not one: both axes
    within a few units of the input's size over one whole stride (padding, valid
    convolutions and odd sizes move a grid by a unit or two)."""
    rows, columns = int(grid[0]), int(grid[1])
    if rows < 1 or columns < 1:
        return None
    for stride in range(1, MAX_STRIDE + 1):
        expected_rows, expected_columns = height / stride, width / stride
        slack_rows, slack_columns = max(2.0, 0.1 * expected_rows), max(2.0, 0.1 * expected_columns)
        if abs(rows - expected_rows) <= slack_rows and abs(columns - expected_columns) <= slack_columns:
            return float(stride)
    if rows == 1 and columns == 1:
        return float(max(height, width))
    return None


def _factor_pair(count: int, aspect: float) -> tuple[int, int]:
    """(h, w) with h * w == count and h / w nearest ``aspect``."""
    best = (1, count)
    for rows in range(1, int(math.isqrt(count)) + 1):
        if count % rows:
            continue
        for pair in ((rows, count // rows), (count // rows, rows)):
            if abs(math.log(pair[0] / pair[1]) - math.log(aspect)) < abs(math.log(best[0] / best[1]) - math.log(aspect)):
                best = pair
    return best
