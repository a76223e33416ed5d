"""``inversion`` against Mahendran & Vedaldi's definition, on the cat photo at a small size."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from engine.core.errors import MethodInputError
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.methods.inversion import psnr
from engine.optvis.optimise import probe_model
from tests.conftest import make_tiny_model

SPEC = METHODS["inversion"]


def run(ctx, **params):
    frames = []
    result = drive(SPEC.start(ctx, params), on_frame=frames.append)
    return result, frames


def test_psnr_is_10_log10_of_one_over_the_mean_squared_error():
    a = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(0))
    b = (a + 0.1 * torch.randn(1, 3, 8, 9, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert psnr(b, a) == pytest.approx(peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1.0), rel=1e-6)
    assert psnr(a, a) == float("inf")


def test_shallow_layers_reconstruct_the_photo_better_than_deep_ones(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    result, frames = run(ctx, strip="auto", size=64, steps=24)
    layers = result.metrics["layers"]
    assert [entry["layer"] for entry in layers] == ["stages.1.1.expand_relu6", "stages.3.2.expand_relu6", "head.relu6"]
    early, middle, late = (entry["psnr"] for entry in layers)
    # Measured at this size (seeds 0, 1): early 18.3 dB, middle 14.6-15.1, late 14.8.
    assert early > late + 2 and early > 15
    assert result.array.shape == (3, 64, 96, 3)
    original = bundled.preprocessing.to_unit_tensor(chelsea.image, 64)
    for entry, picture in zip(layers, result.array):
        picture = torch.from_numpy(picture).permute(2, 0, 1)[None]
        assert entry["psnr"] == pytest.approx(psnr(picture, original), abs=1e-3)  # to the photo at the same size
        with torch.no_grad():
            features = probe_model(bundled, picture, (entry["layer"],))[entry["layer"]]
            target = probe_model(bundled, original, (entry["layer"],))[entry["layer"]]
        expected = float(((features - target) ** 2).sum() / (target ** 2).sum())
        assert entry["feature_loss"] == pytest.approx(expected, rel=1e-3)
        assert entry["loss_last"] < entry["loss_first"]
    assert result.metrics["psnr"] == layers[0]["psnr"] and result.layer == ",".join(e["layer"] for e in layers)
    # One frame per step across the strip; each shows the photo and all three slots.
    assert len(frames) == 3 * 24 and frames[0].display.rgb.shape == (64, 4 * 96 + 3 * 4, 3)
    assert result.display.rgb.shape[1] >= 4 * 96


def test_inverting_one_layer_lowers_its_feature_loss_fivefold():
    model = make_tiny_model(size=16)
    rng = np.random.default_rng(0)
    from PIL import Image

    from engine.data.images import LoadedImage

    photo = LoadedImage(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)), path="noise.png")
    result, frames = run(MethodContext(model=model, image=photo), layer="features.3", steps=60, lr=0.05, tv=0.0)
    assert result.metrics["loss_last"] < result.metrics["loss_first"] / 5
    assert result.metrics["feature_loss"] < 0.2 and result.array.shape == (16, 16, 3)
    assert len(frames) == 60 and "features" in frames[0].metrics and "tv" in frames[0].metrics


def test_a_seed_reproduces_the_inversion():
    model = make_tiny_model(size=16)
    from engine.data.images import LoadedImage
    from PIL import Image

    photo = LoadedImage(Image.new("RGB", (16, 16), (200, 80, 20)), path="flat.png")
    ctx = MethodContext(model=model, image=photo)
    first, _ = run(ctx, layer="features.1", steps=4, seed=5)
    again, _ = run(ctx, layer="features.1", steps=4, seed=5)
    np.testing.assert_array_equal(first.array, again.array)


@pytest.mark.parametrize("params, message", [
    ({"strip": ", ,"}, "separated by commas"),
    ({"strip": "features.1,features.1"}, "one layer twice"),
    ({"layer": "features.9"}, "has no layer"),
])
def test_bad_requests_say_what_is_wrong(params, message):
    from engine.data.images import LoadedImage
    from PIL import Image

    ctx = MethodContext(model=make_tiny_model(size=16), image=LoadedImage(Image.new("RGB", (16, 16)), path="x.png"))
    with pytest.raises(MethodInputError, match=message):
        run(ctx, steps=1, **params)


def test_inversion_needs_an_image():
    with pytest.raises(MethodInputError, match="needs an image"):
        run(MethodContext(model=make_tiny_model(), image=None), steps=1)
