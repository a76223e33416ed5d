"""texture: Gram matching from noise (Gatys 2015) and Efros & Leung's classic synthesis."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.style.efros_leung import gaussian_window, synthesise
from engine.core.errors import MethodInputError
from engine.style.gram import gram_matrix
from engine.anatomy.hooks import capture_outputs
from engine.data.images import LoadedImage, load_image
from engine.core.jobs import CancelToken, drive
from engine.methods import METHODS, MethodContext
from engine.models.zoo import build_architecture
from engine.style.perceptual import Features, perceptual_layers
from engine.data.samples import sample_path
from tests.conftest import make_tiny_model

from tests.cancelling import frames_before_cancel

SPEC = METHODS["texture"]
TINY_LAYERS = "features.1,features.4"


def run(ctx, **params):
    frames = []
    result = drive(SPEC.start(ctx, params), on_frame=frames.append)
    return result, frames


def stripes_image(size=24, seed=0):
    """Noisy coloured diagonal stripes: a texture with structure at two scales."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    base = ((x + y) // 3 % 2)[..., None] * np.array([200, 60, 30]) + 30
    pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    return LoadedImage(Image.fromarray(pixels), path="stripes.png")


def tiny_context(size=24):
    return MethodContext(model=make_tiny_model(size=size), image=stripes_image(size))


def grams(model, unit, layers):
    with torch.no_grad(), capture_outputs(model.module, layers) as captured:
        model.module(model.preprocessing.normalise(unit))
    return {layer: gram_matrix(captured[layer]) for layer in layers}


def gram_distance(model, a, b, layers):
    ga, gb = grams(model, a, layers), grams(model, b, layers)
    return sum(float(((ga[layer] - gb[layer]) ** 2).sum() / (gb[layer] ** 2).sum()) for layer in layers)


BUNDLED_LAYERS = "stem.relu6,stages.1.1.expand_relu6,stages.2.1.expand_relu6"


def test_gram_loss_falls_twentyfold_and_the_texture_has_the_samples_statistics(bundled):
    ctx = MethodContext(model=bundled, image=load_image(sample_path("brick")))
    result, frames = run(ctx, layers=BUNDLED_LAYERS, sample_size=48, steps=40, seed=1)
    assert len(frames) == 40 and all("loss" in f.metrics for f in frames)
    assert result.metrics["loss_last"] < result.metrics["loss_first"] / 20
    # Measured independently of the method: raw Grams from hooks, the synthesis against
    # the sample and white noise against the sample.
    layers = BUNDLED_LAYERS.split(",")
    sample = bundled.preprocessing.to_unit_tensor(ctx.image.image, 48)
    texture = torch.from_numpy(result.array).permute(2, 0, 1)[None]
    noise = torch.rand(sample.shape, generator=torch.Generator().manual_seed(7))
    assert gram_distance(bundled, texture, sample, layers) < 0.05 * gram_distance(bundled, noise, sample, layers)
    assert result.array.min() >= 0 and result.array.max() <= 1 and result.array.std() > 0.05


def test_output_larger_than_the_sample_keeps_its_size_and_is_seeded():
    ctx = tiny_context(size=16)
    first, _ = run(ctx, layers=TINY_LAYERS, steps=5, size=40, seed=3)
    again, _ = run(ctx, layers=TINY_LAYERS, steps=5, size=40, seed=3)
    other, _ = run(ctx, layers=TINY_LAYERS, steps=5, size=40, seed=4)
    assert first.array.shape == (40, 40, 3) and first.display.rgb.shape == (40, 40, 3)
    assert first.metrics["size"] == [40, 40]
    assert np.array_equal(first.array, again.array)
    assert not np.array_equal(first.array, other.array)
    assert len(first.frames) >= 2  # the animation record ends on the result
    assert np.array_equal(first.frames[-1], first.display.rgb)


def test_strip_synthesises_each_layer_alone_beside_the_sample():
    ctx = tiny_context()
    result, frames = run(ctx, layers=TINY_LAYERS, steps=25, strip=True, seed=0)
    layers = TINY_LAYERS.split(",")
    assert result.array.shape == (2, 24, 24, 3)
    assert len(frames) == 50
    assert all(last < first / 5 for first, last in zip(result.metrics["loss_first"], result.metrics["loss_last"]))
    # Each synthesis matches the Grams of its own layer better than the other one does.
    sample = ctx.model.preprocessing.to_unit_tensor(ctx.image.image)
    pictures = [torch.from_numpy(a).permute(2, 0, 1)[None] for a in result.array]
    for own, picture in enumerate(pictures):
        other = pictures[1 - own]
        assert gram_distance(ctx.model, picture, sample, [layers[own]]) < gram_distance(ctx.model, other, sample, [layers[own]])
    # The mosaic: sample + one tile per layer in one row, captions with receptive fields.
    assert result.display.rgb.shape[1] > 3 * result.display.rgb.shape[0] / 2
    assert "features.1" in result.display.note and "features.4" in result.display.note


def test_default_layers_per_backbone(bundled):
    vgg = build_architecture("vgg19")
    from engine.models.model import LoadedModel
    from engine.models.preprocessing import Preprocessing

    layers = perceptual_layers(LoadedModel("vgg19", vgg, Preprocessing(), [], "random"), {})
    assert layers.texture == ("features.1", "features.4", "features.9", "features.18", "features.27")  # conv1_1, pool1-4
    assert layers.plain_gram
    bundled_layers = perceptual_layers(bundled, {})
    assert bundled_layers.plain_gram  # ReLU6 layers: plain Grams work (see engine.style.perceptual)
    assert all(bundled.named_module(path) is not None for path in bundled_layers.texture + bundled_layers.style)


def test_features_stop_after_the_deepest_layer(tiny_model):
    calls = []
    handle = tiny_model.module.classifier.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = Features(tiny_model, ["features.1", "features.4"])(torch.rand(1, 3, 16, 16))
    finally:
        handle.remove()
    assert not calls and set(out) == {"features.1", "features.4"}


def test_unknown_layer_and_cancel():
    ctx = tiny_context()
    with pytest.raises(MethodInputError, match="--layers: the model has no layer 'features.9'"):
        run(ctx, layers="features.9", steps=2)
    cancel = CancelToken()
    ctx = MethodContext(model=make_tiny_model(size=24), image=stripes_image(), cancel=cancel)
    assert frames_before_cancel(SPEC.start(ctx, {"layers": TINY_LAYERS, "steps": 20}), cancel, after=2) == 2


# -- classic ------------------------------------------------------------------------------------
def grow(sample, shape, window, seed):
    job = synthesise(sample, shape, window, np.random.default_rng(seed))
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def test_classic_copies_pixels_from_the_sample_and_reproduces_its_period():
    rng = np.random.default_rng(0)
    cell = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)  # 20 distinct colours, period 4 x 5
    sample = np.tile(cell, (9, 7, 1))  # 36 x 35
    texture = grow(sample, (40, 44), window=7, seed=1)
    assert texture.shape == (40, 44, 3)
    assert np.array_equal(texture[4:], texture[:-4]) and np.array_equal(texture[:, 5:], texture[:, :-5])
    colours = {tuple(c) for c in sample.reshape(-1, 3)}
    assert all(tuple(c) in colours for c in texture.reshape(-1, 3))


def test_classic_method_is_seeded_and_every_pixel_comes_from_the_sample():
    image = LoadedImage(Image.fromarray(np.random.default_rng(5).integers(0, 256, (30, 30, 3), dtype=np.uint8)))
    ctx = MethodContext(model=make_tiny_model(), image=image)
    first, frames = run(ctx, classic=True, size=24, sample_size=20, window=5, seed=2)
    again, _ = run(ctx, classic=True, size=24, sample_size=20, window=5, seed=2)
    other, _ = run(ctx, classic=True, size=24, sample_size=20, window=5, seed=3)
    assert first.display.rgb.shape == (24, 24, 3) and frames
    assert np.array_equal(first.display.rgb, again.display.rgb)
    assert not np.array_equal(first.display.rgb, other.display.rgb)
    sample = np.asarray(ctx.model.preprocessing.resize(image.image, 20))
    colours = {tuple(c) for c in sample.reshape(-1, 3)}
    assert all(tuple(c) in colours for c in first.display.rgb.reshape(-1, 3))
    assert np.allclose(first.array * 255, first.display.rgb)


def test_classic_on_a_real_texture_keeps_its_local_statistics():
    """Grown from a brick-like sample, the texture has the sample's mean and contrast."""
    y, x = np.mgrid[:32, :32]
    mortar = ((y % 8) == 0) | (((x + 6 * ((y // 8) % 2)) % 12) == 0)
    sample = np.where(mortar[..., None], 220, 90).astype(np.uint8).repeat(3, axis=2)
    texture = grow(sample, (40, 40), window=9, seed=0)
    assert abs(texture.mean() - sample.mean()) < 15
    horizontal_rows = (texture[..., 0] > 150).mean(axis=1)
    assert horizontal_rows.max() > 0.8  # whole mortar lines, as in the sample


def test_gaussian_window_and_classic_errors():
    g = gaussian_window(11)
    assert g.shape == (11, 11) and g[5, 5] == 1 and np.allclose(g, g.T)
    assert g[5, 0] == pytest.approx(np.exp(-25 / (2 * (11 / 6.4) ** 2)))
    ctx = tiny_context()
    with pytest.raises(MethodInputError, match="--window must be odd"):
        run(ctx, classic=True, window=6)
    with pytest.raises(MethodInputError, match="larger than the sample"):
        run(ctx, classic=True, window=31, sample_size=16)
    with pytest.raises(MethodInputError, match="at most 160 px"):
        run(ctx, classic=True, size=512)
