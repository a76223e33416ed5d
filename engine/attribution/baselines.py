"""The pictures that stand for "no information": where integrated gradients' path starts,
and what deletion and insertion put in place of the pixels they remove.

In 0..1 pixel units, for a 1 x 3 x H x W input: ``black`` (all 0), ``white`` (all 1),
``gray`` (all 0.5), or ``blur``: the image under a Gaussian blur of sigma 10% of its
shorter side, which keeps colours and layout and takes the object's detail away (a
black or gray picture is itself far from every photo the model saw).
"""

from __future__ import annotations

import torch

from engine.optvis.regularisers import gaussian_blur

BASELINES = ("black", "white", "gray", "blur")
BLUR_FRACTION = 0.1  # the blur baseline's sigma, as a fraction of the input's shorter side
_FLAT = {"black": 0.0, "white": 1.0, "gray": 0.5}


def baseline_image(unit: torch.Tensor, kind: str, allowed: tuple[str, ...] = BASELINES) -> torch.Tensor:
    """The baseline ``kind`` for ``unit``; ``allowed``: the kinds the caller offers, named in
    the message when ``kind`` is not one of them."""
    if kind not in allowed:
        raise ValueError(f"the baseline must be one of {', '.join(allowed)}, not '{kind}'")
    if kind == "blur":
        return gaussian_blur(unit, BLUR_FRACTION * min(unit.shape[-2:]))
    return torch.full_like(unit, _FLAT[kind])


def is_flat(kind: str) -> bool:
    """Whether baseline ``kind`` is one colour: the same picture for every photo of a size."""
    return kind in _FLAT
