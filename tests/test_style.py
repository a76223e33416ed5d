"""style: Gatys style transfer, checked against its losses written out and against YIQ."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2yiq

from engine.core.errors import MethodInputError
from engine.style.activation_transforms import feature_transform, softmax_smoothing
from engine.style.gram import gram_matrix
from engine.anatomy.hooks import capture_outputs
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken, drive
from engine.view.display import Picture
from engine.methods import METHODS, MethodContext
from engine.models.preprocessing import Preprocessing, unit_tensor_to_rgb
from engine.models.model import LoadedModel
from engine.models.zoo import build_architecture
from engine.optvis.loop import optimisation_loop
from engine.style.perceptual import PixelDescent, blend_grams, choose_transform, perceptual_layers
from tests.conftest import make_tiny_model

from tests.cancelling import frames_before_cancel

SPEC = METHODS["style"]
SIZE = 24
LAYERS = {"content_layers": "features.4", "style_layers": "features.1,features.4"}


def run(ctx, **params):
    frames = []
    result = drive(SPEC.start(ctx, {**LAYERS, **params}), on_frame=frames.append)
    return result, frames


def picture(kind: str, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    if kind == "content":  # a smooth, colourful scene: a warm disc on a cool gradient
        rgb = np.stack([x / size, 0.5 + 0 * x, 1 - y / size], axis=-1)
        rgb[(y - size / 2) ** 2 + (x - size / 2) ** 2 < (size / 4) ** 2] = (0.9, 0.5, 0.2)
    elif kind == "stripes":
        rgb = np.where(((x + y) // 2 % 2)[..., None] == 0, (0.9, 0.9, 0.1), (0.1, 0.2, 0.8))
    else:  # "dots": noisy speckle
        rgb = rng.random((size, size, 3)) ** 3
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def save(tmp_path, name: str, kind: str, seed: int = 0) -> str:
    path = tmp_path / f"{name}.png"
    Image.fromarray(picture(kind, seed=seed)).save(path)
    return str(path)


@pytest.fixture
def ctx():
    return MethodContext(model=make_tiny_model(size=SIZE), image=LoadedImage(Image.fromarray(picture("content")), path="c.png"))


def test_losses_fall_and_every_step_reports_its_parts(ctx, tmp_path):
    style = save(tmp_path, "stripes", "stripes")
    result, frames = run(ctx, style=[style], steps=15, tv_weight=0.1)
    assert len(frames) == 15
    assert all(set(f.metrics) == {"loss", "content_loss", "style_loss", "tv_loss"} for f in frames)
    for f in frames:
        parts = f.metrics["content_loss"] + f.metrics["style_loss"] + f.metrics["tv_loss"]
        assert f.metrics["loss"] == pytest.approx(parts, rel=1e-5)
    m = result.metrics
    assert m["style_loss_last"] < m["style_loss_first"] / 10  # the style loss falls tenfold in 15 steps
    assert m["loss_last"] < m["loss_first"] / 5
    assert m["content_loss_first"] == 0.0 and m["content_loss_last"] > 0  # it starts from the content image
    assert result.array.shape == (SIZE, SIZE, 3) and result.array.std() > 0.05
    assert np.array_equal(result.frames[-1], result.display.rgb)


def test_noise_init_is_seeded_and_adam_also_descends(ctx, tmp_path):
    style = save(tmp_path, "dots", "dots")
    first, _ = run(ctx, style=[style], steps=4, init="noise", seed=5)
    again, _ = run(ctx, style=[style], steps=4, init="noise", seed=5)
    other, _ = run(ctx, style=[style], steps=4, init="noise", seed=6)
    assert np.array_equal(first.array, again.array) and not np.array_equal(first.array, other.array)
    adam, _ = run(ctx, style=[style], steps=30, optimizer="adam", lr=0.02)
    assert adam.metrics["loss_last"] < adam.metrics["loss_first"] / 3


def layer_outputs(model, unit, layers, transform=None):
    with torch.no_grad(), capture_outputs(model.module, layers) as captured:
        model.module(model.preprocessing.normalise(unit))
    return {layer: (transform(captured[layer]) if transform else captured[layer]) for layer in layers}


def test_style_weights_blend_the_gram_matrices(ctx, tmp_path):
    """The first step's style loss is that of the content image against 0.7 G(A) + 0.3 G(B),
    written out here from hooks, relative to the blend's size and summed over the layers."""
    a, b = save(tmp_path, "stripes", "stripes"), save(tmp_path, "dots", "dots")
    result, _ = run(ctx, style=[a, b], style_weights="0.7,0.3", steps=1, style_weight=10.0, feature_transform="none")
    assert result.metrics["style_weights"] == pytest.approx([0.7, 0.3])
    layers = LAYERS["style_layers"].split(",")
    prep = ctx.model.preprocessing
    content = prep.to_unit_tensor(ctx.image.image)
    grams = [
        {layer: gram_matrix(f) for layer, f in layer_outputs(ctx.model, prep.to_unit_tensor(Image.open(path).convert("RGB"), SIZE),
                                                             layers).items()}
        for path in (a, b)
    ]
    ours = {layer: gram_matrix(f) for layer, f in layer_outputs(ctx.model, content, layers).items()}
    expected = 0.0
    for layer in layers:
        blend = 0.7 * grams[0][layer] + 0.3 * grams[1][layer]
        expected += float(((ours[layer] - blend) ** 2).mean() / (blend ** 2).mean())
    assert result.metrics["style_loss_first"] == pytest.approx(10.0 * expected, rel=1e-4)
    # 7,3 is the same blend; the blend itself is linear in the weights.
    scaled, _ = run(ctx, style=[a, b], style_weights="7,3", steps=1, style_weight=10.0, feature_transform="none")
    assert scaled.metrics["style_loss_first"] == pytest.approx(result.metrics["style_loss_first"], rel=1e-6)
    blended = blend_grams(grams, [7, 3])
    for layer in layers:
        assert torch.allclose(blended[layer], 0.7 * grams[0][layer] + 0.3 * grams[1][layer], atol=1e-7)


def test_preserve_color_keeps_the_contents_chroma(ctx, tmp_path):
    style = save(tmp_path, "stripes", "stripes")  # saturated yellow and blue
    content = ctx.model.preprocessing.to_unit_tensor(ctx.image.image)[0].permute(1, 2, 0).numpy()
    kept, frames = run(ctx, style=[style], steps=10, preserve_color=True)
    plain, _ = run(ctx, style=[style], steps=10)
    chroma = rgb2yiq(content)[..., 1:]
    kept_error = np.abs(rgb2yiq(kept.array)[..., 1:] - chroma)
    plain_error = np.abs(rgb2yiq(plain.array)[..., 1:] - chroma)
    # Only pixels pushed out of the RGB cube (clipped) may lose a little chroma.
    assert np.median(kept_error) < 1e-3 and kept_error.mean() < 0.01
    assert plain_error.mean() > 10 * kept_error.mean()
    # The luminance changed: the style was transferred, in luminance only.
    assert np.abs(rgb2yiq(kept.array)[..., 0] - rgb2yiq(content)[..., 0]).mean() > 0.01
    assert kept.metrics["style_loss_last"] < kept.metrics["style_loss_first"] / 3


def test_style_scale_resizes_the_style_pictures(ctx, tmp_path):
    style = save(tmp_path, "dots", "dots")
    result, _ = run(ctx, style=[style], steps=1, style_scale=2.0)
    assert result.metrics["style_size"] == [[2 * SIZE, 2 * SIZE]]


def test_bad_style_inputs_say_what_to_do(ctx, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    with pytest.raises(MethodInputError, match="--style: broken.png is not an image"):
        run(ctx, style=[str(broken)], steps=1)
    with pytest.raises(MethodInputError, match="--style: missing.png: no such file"):
        run(ctx, style=[str(tmp_path / "missing.png")], steps=1)
    style = save(tmp_path, "dots", "dots")
    with pytest.raises(MethodInputError, match="gives 2 weights for 1 style picture; give one weight per picture"):
        run(ctx, style=[style], style_weights="0.5,0.5", steps=1)
    with pytest.raises(MethodInputError, match="numbers separated by commas"):
        run(ctx, style=[style], style_weights="a,b", steps=1)
    with pytest.raises(MethodInputError, match="--style-layers: the model has no layer"):
        run(ctx, style=[style], style_layers="features.77", steps=1)


def test_the_default_style_is_the_shipped_picture(ctx):
    from engine.style.style_library import BUILTIN_DIR, style_picture

    shipped = BUILTIN_DIR / "stained-glass.png"
    assert SPEC.param("style").default == "stained-glass" and style_picture("stained-glass") == str(shipped)
    by_default, _ = run(ctx, steps=2)
    named, _ = run(ctx, style=[str(shipped)], steps=2)
    unstyled, _ = run(ctx, style=[str(shipped)], steps=2, style_weight=0.0)
    assert by_default.params["style"] == ["stained-glass"]
    assert np.array_equal(by_default.array, named.array)
    assert not np.array_equal(by_default.array, unstyled.array)  # the picture's style term moved it


def test_cancelled_style_returns_no_result(ctx, tmp_path):
    cancel = CancelToken()
    ctx.cancel = cancel
    job = SPEC.start(ctx, {**LAYERS, "style": [save(tmp_path, "dots", "dots")], "steps": 20})
    assert frames_before_cancel(job, cancel, after=2) == 2


def test_vgg_defaults_are_gatys_layers_without_the_softmax(bundled):
    vgg = LoadedModel("vgg19", build_architecture("vgg19"), Preprocessing(), [], "random")
    layers = perceptual_layers(vgg, {})
    assert layers.style == ("features.1", "features.6", "features.11", "features.20", "features.29")  # relu1_1..relu5_1
    assert layers.content == ("features.22",)  # relu4_2
    assert choose_transform("auto", layers, 1.0)[0] == "none"
    # The bundled model's ReLU6 layers stylise well with plain Grams (see engine.style.perceptual);
    # other networks' default layers are block outputs and get the softmax.
    assert choose_transform("auto", perceptual_layers(bundled, {}), 1.0)[0] == "none"
    tiny = make_tiny_model(size=SIZE)
    shapes = {"features.1": (1, 8, 24, 24), "features.2": (1, 8, 12, 12), "features.4": (1, 16, 12, 12)}
    generic = perceptual_layers(tiny, shapes)
    assert generic.style == ("features.1", "features.4") and choose_transform("auto", generic, 1.0)[0] == "softmax"
    name, transform = choose_transform("softmax", layers, 2.0)
    f = torch.randn(1, 2, 3, 3)
    assert name == "softmax" and torch.allclose(transform(f), softmax_smoothing(f, 2.0))


def test_softmax_smoothing_is_the_softmax_over_the_whole_layer_times_its_size():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5) * 3
    s = softmax_smoothing(f, temperature=2.0)
    for n in range(2):
        e = torch.exp(f[n] / 2.0)
        assert torch.allclose(s[n], e / e.sum() * 60, rtol=1e-5)
    assert torch.allclose(s.mean(dim=(1, 2, 3)), torch.ones(2))
    assert torch.allclose(softmax_smoothing(f + 7.0, 2.0), s, rtol=1e-5)  # shift-invariant, as a softmax
    assert feature_transform("none") is None
    with pytest.raises(ValueError):
        softmax_smoothing(f, 0.0)


def test_descent_reaches_a_quadratic_minimum_and_reports_the_picture_it_leaves():
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1

    def loss(pixels):
        total = ((pixels - target) ** 2).sum() * 1e-6  # tiny units: the first gradient is rescaled
        return total, {"fit": float(total.detach())}

    for optimizer in ("lbfgs", "adam"):
        pixels = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
        descent = PixelDescent(pixels, loss, optimizer=optimizer, lr=0.02 if optimizer == "adam" else None)
        frames = []
        trace = drive(optimisation_loop(descent.step, 60 if optimizer == "lbfgs" else 300, keep_best=descent,
                                        show=lambda _number, step: Picture(rgb=unit_tensor_to_rgb(step.picture))),
                      on_frame=frames.append)
        steps = [frame.step for frame in frames]
        assert steps == list(range(1, len(steps) + 1))
        assert trace.last_loss == pytest.approx(float(loss(pixels)[0].detach()), rel=1e-6)
        assert torch.allclose(pixels, target, atol=1e-2)
