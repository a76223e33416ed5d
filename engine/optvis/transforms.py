"""Small image transforms shared by the optimisation methods."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional as F


def random_shift(generator: torch.Generator, max_shift: int) -> tuple[int, int]:
    if max_shift <= 0:
        return 0, 0
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    return dy, dx


def roll(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Circular shift of the spatial axes; rolling by the negated shift undoes it exactly."""
    return torch.roll(x, shifts=shift, dims=(-2, -1))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an NxCxHxW tensor to (height, width)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def scale_rotate_image(x: torch.Tensor, factor: float, degrees: float) -> torch.Tensor:
    """Zoom by ``factor`` (2: the central half fills the frame) and turn by ``degrees``
    (counter-clockwise as displayed) about the centre, keeping the size.

    Bilinear and differentiable in ``x``; edges are mirrored, so no black corners appear
    for the network to react to.
    """
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / factor, math.sin(angle) / factor
    # affine_grid maps output coordinates to input ones in -1..1 units of each axis; the
    # aspect ratio converts the rotation so non-square pictures turn without shearing.
    height, width = x.shape[-2:]
    aspect = width / height
    theta = torch.tensor([[cos, -sin / aspect, 0.0], [sin * aspect, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_scale_rotate(x: torch.Tensor, generator: torch.Generator, max_scale: float, max_degrees: float) -> torch.Tensor:
    """``scale_rotate_image`` by a factor drawn from [1 - max_scale, 1 + max_scale] and an
    angle drawn from [-max_degrees, max_degrees]; one draw for the whole batch."""
    if max_scale <= 0 and max_degrees <= 0:
        return x
    draws = torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1
    return scale_rotate_image(x, 1.0 + max_scale * float(draws[0]), max_degrees * float(draws[1]))


# Transforms as small closures (image, generator) -> image, joined with ``compose``: the
# optimisation loop applies them before every forward so the picture must work under
# small shifts, zooms and turns, which suppresses the pixel-exact patterns a CNN also
# responds to (Olah et al. 2017, "Transformation robustness").
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def jitter(max_shift: int) -> Transform:
    """A random circular shift of up to ``max_shift`` pixels in each direction."""
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return roll(x, random_shift(generator, max_shift))
    return apply


def pad(pixels: int, value: float = 0.5) -> Transform:
    """A border of ``pixels`` in a constant grey round the picture (Lucent's ``pad``): the
    shifts, zooms and turns after it then move the picture against a plain surround
    instead of wrapping its edges round or mirroring them, so nothing that matters to the
    class can hide at the border."""
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if pixels <= 0:
            return x
        return F.pad(x, (pixels, pixels, pixels, pixels), mode="constant", value=value)
    return apply


def scale_rotate(max_scale: float, max_degrees: float) -> Transform:
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_scale_rotate(x, generator, max_scale, max_degrees)
    return apply


def random_crops(picture: torch.Tensor, count: int, generator: torch.Generator, smallest: float,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """``count`` random square crops of an N x 3 x H x W batch, each covering a random
    ``smallest``-100% of the side at a random place (the same box for every item) and
    resized to ``size`` (default H x W); the result is view-major, count * N items."""
    height, width = picture.shape[-2:]
    size = size or (height, width)
    crops = []
    for _ in range(count):
        fraction = smallest + (1.0 - smallest) * float(torch.rand((), generator=generator))
        side_y, side_x = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(0, height - side_y + 1, (), generator=generator))
        left = int(torch.randint(0, width - side_x + 1, (), generator=generator))
        crops.append(resize(picture[..., top:top + side_y, left:left + side_x], size))
    return torch.cat(crops)


def crops(count: int, smallest: float, size: int) -> Transform:
    """Score ``count`` crops of the picture at once, each ``smallest``-100% of the side,
    resized to ``size`` x ``size`` (0: the picture's own size): the picture must show its
    class at several scales and places in every step, not only as a whole, which is what
    turns a class's texture into its objects (the multi-crop robustness of Fel et al. 2023,
    "MACO"). Crops of a quarter fewer pixels than the picture cost less per view."""
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if count <= 1:
            return x
        return random_crops(x, count, generator, smallest, (size, size) if size else None)
    return apply


def compose(*transforms: Transform) -> Transform:
    def apply(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for transform in transforms:
            x = transform(x, generator)
        return x
    return apply
