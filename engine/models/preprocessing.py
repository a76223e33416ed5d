"""How an image becomes a model input, and back.

The whole image is used (never centre-cropped) so that every map lines up with the
picture the user sees: the shorter side is scaled to the model's ``size`` and the aspect
ratio is kept. A model that takes one size only (an ONNX graph with a fixed input size) is
``exact``: every image is resized to exactly ``size`` x ``size``, a photo that is not square
squashed rather than cropped, so a map still covers the whole photo (stretched back over
it). Each model carries its own ``Preprocessing``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    size: int = 224  # the shorter side of the model input, in pixels
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_aspect: float = 3.0  # longer side is capped at size * max_aspect
    exact: bool = False  # every input is size x size: images are squashed to the square

    def input_size(self, width: int, height: int, size: int | None = None) -> tuple[int, int]:
        """(width, height) of the model input for an image of the given size."""
        size = size or self.size
        if self.exact:
            return size, size
        scale = size / min(width, height)
        new_w, new_h = round(width * scale), round(height * scale)
        cap = round(size * self.max_aspect)
        return max(1, min(new_w, cap)), max(1, min(new_h, cap))

    def resize(self, image: Image.Image, size: int | None = None) -> Image.Image:
        target = self.input_size(*image.size, size=size)
        if target == image.size:
            return image
        return image.resize(target, Image.Resampling.BICUBIC, reducing_gap=3.0)

    def to_unit_tensor(self, image: Image.Image, size: int | None = None) -> torch.Tensor:
        """1x3xHxW float tensor in 0..1, resized for the model but not normalised."""
        array = np.asarray(self.resize(image, size), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()

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
        resize = "squashed to size x size, no crop" if self.exact else "shorter side, no crop"
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std), "resize": resize}


def unit_tensor_to_rgb(unit: torch.Tensor) -> np.ndarray:
    """1x3xHxW (or 3xHxW) tensor in 0..1 to an HxWx3 uint8 array."""
    if unit.dim() == 4:
        unit = unit[0]
    array = unit.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (array * 255 + 0.5).astype(np.uint8)
