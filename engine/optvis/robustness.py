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

from engine.models.model import LoadedModel
from engine.optvis.transforms import random_crops

SMALLEST_CROP = 0.6  # the smallest crop's side, as a fraction of the picture's


def class_probability_under_crops(model: LoadedModel, picture: torch.Tensor, index: int, crops: int = 32,
                                  seed: int = 0, batch: int = 16) -> float:
    """The mean softmax probability of class ``index`` over ``crops`` random crops of the
    1 x 3 x H x W picture (0..1 pixels), ``batch`` crops per forward."""
    generator = torch.Generator().manual_seed(seed)
    views = random_crops(picture.detach().float().cpu(), crops, generator, SMALLEST_CROP)
    total = 0.0
    with torch.no_grad():
        for start in range(0, crops, batch):
            chunk = views[start:start + batch].to(model.device)
            logits = model.module(model.preprocessing.normalise(chunk))
            total += float(torch.softmax(logits, dim=1)[:, index].sum())
    return total / crops
