"""Small image transforms shared by the optimisation methods."""

from __future__ import annotations

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
