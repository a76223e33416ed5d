"""RISE: the mean probability under random masks, a map from the model's outputs alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.errors import JobCancelled
from engine.core.jobs import CancelToken, drive
from engine.data.images import LoadedImage
from engine.methods import METHODS, MethodContext
from engine.methods.rise import rise_masks
from tests.test_evaluation import REGION, SIDE_PX, RegionNet, photo, region_model


def region_photo() -> LoadedImage:
    pixels = (photo()[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    from PIL import Image

    return LoadedImage(image=Image.fromarray(pixels), path="region.png", original_size=(SIDE_PX, SIDE_PX))


def run(ctx, **params):
    return drive(METHODS["rise"].start(ctx, params))


def test_rise_is_brightest_where_the_model_looks():
    model = region_model()
    result = run(MethodContext(model=model, image=region_photo()), target=0, masks=400, cells=6)
    values = result.array
    inside = np.zeros_like(values, bool)
    inside[REGION] = True
    assert inside[np.unravel_index(np.argmax(values), values.shape)]
    assert values[inside].mean() > values[~inside].mean() + 0.05
    assert result.metrics["masks"] == 400


def test_rise_is_the_probability_weighted_mean_of_its_masks_whatever_the_batch():
    model, image = region_model(), region_photo()
    ctx = MethodContext(model=model, image=image)
    first = run(ctx, target=0, masks=10, cells=4, keep=0.4, seed=3, batch=3)
    again = run(ctx, target=0, masks=10, cells=4, keep=0.4, seed=3, batch=10)
    np.testing.assert_allclose(first.array, again.array, rtol=1e-5)
    masks = rise_masks(10, SIDE_PX, SIDE_PX, 4, 0.4, torch.Generator().manual_seed(3))
    unit = model.preprocessing.to_unit_tensor(image.image)
    with torch.no_grad():
        probabilities = torch.softmax(RegionNet()(unit * masks), dim=1)[:, 0]  # mean 0, std 1: normalised = unit
    expected = (probabilities.view(-1, 1, 1) * masks[:, 0]).sum(dim=0) / (10 * 0.4)
    np.testing.assert_allclose(first.array, expected.numpy(), rtol=1e-5)
    assert not np.allclose(run(ctx, target=0, masks=10, cells=4, keep=0.4, seed=4).array, first.array)


def test_rise_masks_are_soft_grids_kept_in_the_asked_proportion():
    masks = rise_masks(300, 40, 50, 5, 0.3, torch.Generator().manual_seed(0))
    assert masks.shape == (300, 1, 40, 50) and masks.min() >= 0 and masks.max() <= 1 + 1e-6
    assert float(masks.mean()) == pytest.approx(0.3, abs=0.03)
    assert ((masks > 0.05) & (masks < 0.95)).float().mean() > 0.1  # bilinear edges, not hard cells


def test_rise_streams_its_map_and_stops_when_cancelled():
    model, image = region_model(), region_photo()
    frames = []
    drive(METHODS["rise"].start(MethodContext(model=model, image=image), {"masks": 9, "batch": 4}), on_frame=frames.append)
    assert [frame.step for frame in frames] == [4, 8, 9]
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(JobCancelled):
        run(MethodContext(model=model, image=image, cancel=cancel), masks=9)
