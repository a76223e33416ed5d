"""Does an optimised picture keep its class when it is cropped and shifted?

A class visualisation that only works pixel-exact is an adversarial pattern, not a picture
of the class (Olah et al. 2017, "Transformation robustness"). ``class_probability_under_crops``
measures it: the model's mean probability for the class over random crops of the picture,
each a square covering a random 60-100% of the side at a random place (so the crops also
shift the content), resized back to the picture's size. The draws are seeded, so one
picture always gets one number.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from engine.models.model import LoadedModel

SMALLEST_CROP = 0.6  # the smallest crop's side, as a fraction of the picture's


def random_crops(picture: torch.Tensor, count: int, generator: torch.Generator,
                 smallest: float = SMALLEST_CROP) -> torch.Tensor:
    """``count`` random square crops of a 1 x 3 x H x W picture, each resized to H x W."""
    height, width = picture.shape[-2:]
    crops = []
    for _ in range(count):
        fraction = smallest + (1.0 - smallest) * float(torch.rand((), generator=generator))
        side_y, side_x = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(0, height - side_y + 1, (), generator=generator))
        left = int(torch.randint(0, width - side_x + 1, (), generator=generator))
        crop = picture[..., top:top + side_y, left:left + side_x]
        crops.append(F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False))
    return torch.cat(crops)


def class_probability_under_crops(model: LoadedModel, picture: torch.Tensor, index: int, crops: int = 32,
                                  seed: int = 0, batch: int = 16) -> float:
    """The mean softmax probability of class ``index`` over ``crops`` random crops of the
    1 x 3 x H x W picture (0..1 pixels), ``batch`` crops per forward."""
    generator = torch.Generator().manual_seed(seed)
    views = random_crops(picture.detach().float().cpu(), crops, generator)
    total = 0.0
    with torch.no_grad():
        for start in range(0, crops, batch):
            chunk = views[start:start + batch].to(model.device)
            logits = model.module(model.preprocessing.normalise(chunk))
            total += float(torch.softmax(logits, dim=1)[:, index].sum())
    return total / crops
