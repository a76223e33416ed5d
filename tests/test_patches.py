"""Maximally activating patches: the crop is the receptive field around the maximum."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.core.errors import MethodInputError
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.methods.params import require_channel
from engine.models.preprocessing import Preprocessing
from engine.models.model import LoadedModel


def colour_detector() -> LoadedModel:
    """Channel 0 sums red over a 5x5 window, channel 1 green: a known field of 5 px."""
    conv = nn.Conv2d(3, 2, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1
        conv.weight[1, 1] = 1
    module = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return LoadedModel(name="colours", module=module, preprocessing=Preprocessing(size=64, mean=(0, 0, 0), std=(1, 1, 1)),
                       labels=["red", "green"], weights="hand-made")


@pytest.fixture
def squares(tmp_path, monkeypatch):
    """Black pictures, each with one 5x5 square: red ones brighter the later they come."""
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "squares"
    folder.mkdir()
    rng = np.random.default_rng(0)
    where = {}
    for index in range(6):
        pixels = np.zeros((64, 64, 3), np.uint8)
        top, left = (int(v) for v in rng.integers(4, 55, 2))
        channel = 0 if index % 2 == 0 else 1
        pixels[top:top + 5, left:left + 5, channel] = 100 + 25 * index
        path = folder / f"square{index}.png"
        Image.fromarray(pixels).save(path)
        where[str(path)] = (top, left)
    return folder, where


def test_patches_are_the_field_around_each_maximum(squares):
    folder, where = squares
    spec = METHODS["patches"]
    result = drive(spec.start(MethodContext(model=colour_detector(), image=None),
                              dataset=str(folder), layer="0", channels="0", top=3))
    red = result.metrics["patches"]["0"]
    assert [p["path"].rsplit("/", 1)[1] for p in red] == ["square4.png", "square2.png", "square0.png"]
    assert [p["value"] for p in red] == sorted((p["value"] for p in red), reverse=True)
    for patch in red:
        top, left = where[patch["path"]]
        assert patch["box"] == [top, left, top + 5, left + 5]  # exactly the square
    assert result.metrics["receptive_field"].startswith("5 px")
    np.testing.assert_allclose(result.array[0], [p["value"] for p in red])
    # The gallery tile of the strongest patch is the red square itself, and opens its picture.
    region = result.display.regions[0]
    tile = result.display.rgb[region.top:region.bottom, region.left:region.right]
    assert tile[..., 0].max() == 200 and tile[..., 1].max() == 0
    assert region.path == red[0]["path"] and region.box == tuple(float(v) for v in red[0]["box"])


def test_channels_are_parsed_and_checked():
    channels = METHODS["patches"].param("channels")
    assert channels.coerce("0-3,7") == (0, 1, 2, 3, 7)
    with pytest.raises(MethodInputError, match="channels 0-9"):
        require_channel("channels", 12, 10, "features.3")
    with pytest.raises(MethodInputError, match="0-7"):
        channels.coerce("a-b")


def test_a_layer_without_a_map_is_refused(squares):
    folder, _ = squares
    spec = METHODS["patches"]
    with pytest.raises(MethodInputError, match="no spatial map"):
        drive(spec.start(MethodContext(model=colour_detector(), image=None), dataset=str(folder), layer="2"))
