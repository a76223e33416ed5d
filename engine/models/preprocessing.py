"""How an image becomes a model input, and back.

The whole image is used (never centre-cropped) so that every map lines up with the
picture the user sees: the shorter side is scaled to the model's ``size`` and the aspect
ratio is kept. Each model carries its own ``Preprocessing``.

A vision transformer cuts the picture into patches, so both sides of its input must be a
multiple of the patch size (``multiple_of``): they are rounded to the nearest one, which
changes the aspect ratio by a few percent at most. A model that only takes one input size (a ViT without interpolated position embeddings, an
ONNX graph exported with a static shape) has ``fixed_size``: every image is scaled to
exactly that size, squeezing its aspect ratio; the maps still cover the whole picture.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
               "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
               "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}

# Each image's model inputs, by (width, height) and interpolation, under the image's id
# (a PIL image is unhashable): dropped when the image is freed, before its id can be
# reused. An image is never drawn on after it is loaded (pictures made from it are new).
_MODEL_INPUTS: dict[int, dict] = {}


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224  # the shorter side of the model input, in pixels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_aspect: float = 3.0  # longer side is capped at size * max_aspect
    interpolation: str = "bicubic"  # how images are scaled: "bicubic", "bilinear" or "nearest"
    fixed_size: tuple[int, int] | None = None  # (height, width) the model takes, and only that
    crop_pct: float | None = None  # the centre crop the weights were evaluated with; recorded, never applied
    multiple_of: int = 1  # both sides a multiple of this (a transformer's patch size), rounded to the nearest

    def input_size(self, width: int, height: int, size: int | None = None) -> tuple[int, int]:
        """(width, height) of the model input for an image of the given size; ``size``, a
        shorter side to use instead of the model's own, is ignored by a fixed-size model."""
        if self.fixed_size is not None:
            return self.fixed_size[1], self.fixed_size[0]
        size = size or self.size
        scale = size / min(width, height)
        new_w, new_h = round(width * scale), round(height * scale)
        cap = round(size * self.max_aspect)
        new_w, new_h = max(1, min(new_w, cap)), max(1, min(new_h, cap))
        if self.multiple_of > 1:
            step = self.multiple_of
            new_w, new_h = (max(step, round(side / step) * step) for side in (new_w, new_h))
        return new_w, new_h

    def fit(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) nearest the given one that the model takes: the fixed size, or
        both sides rounded to ``multiple_of`` (DeepDream's smaller octaves)."""
        if self.fixed_size is not None:
            return self.fixed_size
        step = self.multiple_of
        return max(step, round(height / step) * step), max(step, round(width / step) * step)

    def resize(self, image: Image.Image, size: int | None = None) -> Image.Image:
        target = self.input_size(*image.size, size=size)
        if target == image.size:
            return image
        return image.resize(target, _RESAMPLING[self.interpolation], reducing_gap=3.0)

    def to_unit_tensor(self, image: Image.Image, size: int | None = None) -> torch.Tensor:
        """1x3xHxW float tensor in 0..1, resized for the model but not normalised: a copy of
        the one kept with the image, so only the first method run on a photo resizes it
        (about 2 ms of a 50 ms saliency map on a small network)."""
        key = (self.input_size(*image.size, size=size), self.interpolation)
        kept = _MODEL_INPUTS.get(id(image))
        if kept is None:
            kept = _MODEL_INPUTS[id(image)] = {}
            weakref.finalize(image, _MODEL_INPUTS.pop, id(image), None)
        if key not in kept:
            array = np.asarray(self.resize(image, size), dtype=np.float32) / 255.0
            kept[key] = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
        return kept[key].clone()

    def normalise(self, unit: torch.Tensor) -> torch.Tensor:
        mean, std = self._statistics_like(unit)
        return (unit - mean) / std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._statistics_like(x)
        return x * std + mean

    def _statistics_like(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std as 1x3x1x1 tensors of x's dtype and device, ready to broadcast."""
        def shaped(values):
            return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

        return shaped(self.mean), shaped(self.std)

    def to_tensor(self, image: Image.Image, size: int | None = None) -> torch.Tensor:
        return self.normalise(self.to_unit_tensor(image, size))

    def as_dict(self) -> dict:
        resize = f"squashed to exactly {self.fixed_size[1]}x{self.fixed_size[0]}, no crop" if self.fixed_size \
            else "shorter side, no crop"
        described = {"size": self.size, "mean": list(self.mean), "std": list(self.std), "resize": resize,
                     "interpolation": self.interpolation}
        if self.multiple_of > 1:
            described["sides_multiple_of"] = self.multiple_of
        if self.crop_pct is not None:
            described["weights_evaluated_with_crop_pct"] = self.crop_pct
        return described


def unit_tensor_to_rgb(unit: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) tensor in 0..1 to an HxWx3 uint8 array."""
    if unit.dim() == 4:
        unit = unit[0]
    array = unit.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (array * 255 + 0.5).astype(np.uint8)
