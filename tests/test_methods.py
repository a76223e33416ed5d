"""The four foundation methods checked against their definitions."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.errors import MethodInputError
from engine.anatomy.activations import compute_features
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken, Frame, drive
from engine.methods import METHODS, MethodContext
from engine.view.display import Bars, MapOverPhoto
from tests.conftest import make_tiny_model

from tests.cancelling import frames_before_cancel


def run(spec_id, ctx, **params):
    spec = METHODS[spec_id]
    frames = []
    result = drive(spec.start(ctx, params), on_frame=frames.append)
    return result, frames


def random_image(size=(20, 16), seed=0):
    rng = np.random.default_rng(seed)
    return LoadedImage(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), path="noise.png")


# -- filters ------------------------------------------------------------------------------
def test_first_layer_filters_are_rgb_tiles_scaled_each_on_its_own(bundled):
    result, _ = run("filters", MethodContext(model=bundled, image=None))
    weight = bundled.module.stem.conv.weight.numpy()
    assert result.layer == "stem.conv"
    np.testing.assert_array_equal(result.array, weight)
    rows, columns = result.display.shape
    assert rows * columns >= 32 and result.display.tiles.rgb.shape == (rows * 4 - 1, columns * 4 - 1, 3)
    # Tile 0 is filter 0 min-max scaled: its darkest channel value is 0, its brightest 255.
    tile = result.display.tiles.rgb[:3, :3].astype(int)
    expected = weight[0].transpose(1, 2, 0)
    expected = (expected - expected.min()) / (expected.max() - expected.min()) * 255
    assert np.abs(tile - expected).max() <= 1


def test_deeper_filters_are_one_row_per_output_channel_one_tile_per_input(tiny_model):
    result, _ = run("filters", MethodContext(model=tiny_model, image=None), layer="features.3")
    assert result.display.shape == (16, 8)  # 16 output x 8 input channels of 3x3
    assert result.display.tiles.values.shape == (16 * 4 - 1, 8 * 4 - 1)
    w = tiny_model.module.features[3].weight.numpy()
    tile = result.display.tiles.values[4 * 2:4 * 2 + 3, 4 * 5:4 * 5 + 3]  # output 2, input 5
    expected = (w[2, 5] - w[2, 5].min()) / (w[2, 5].max() - w[2, 5].min())
    np.testing.assert_allclose(tile, expected, atol=1e-6)


def test_filters_of_a_non_conv_layer_show_the_conv_feeding_it(tiny_model):
    result, _ = run("filters", MethodContext(model=tiny_model, image=None), layer="features.4")
    assert result.layer == "features.3"


def test_large_filter_banks_are_paged_and_say_so(bundled):
    result, _ = run("filters", MethodContext(model=bundled, image=None), layer="head.conv", page=2)
    assert result.display.shape == (64, 64)
    assert "page 2 of 20" in result.display.note
    with pytest.raises(MethodInputError, match="past the last"):
        run("filters", MethodContext(model=bundled, image=None), layer="head.conv", page=21)


# -- activations ----------------------------------------------------------------------------
def test_activation_tiles_are_the_layers_channels(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    result, _ = run("activations", ctx, layer="stages.1.1.expand_relu6")
    x = bundled.preprocessing.to_tensor(chelsea.image)
    with torch.no_grad():
        expected = bundled.module.stages[1][1].expand_relu6(bundled.module.stages[1][1].expand_bn(
            bundled.module.stages[1][1].expand_conv(bundled.module.stages[1][0](bundled.module.stages[0](bundled.module.stem(x))))))
    np.testing.assert_allclose(result.array, expected[0].numpy(), rtol=1e-5, atol=1e-5)
    channels, height, width = result.array.shape
    assert (height, width) == (x.shape[2] // 4, -(-x.shape[3] // 4))
    rows, columns = result.display.shape
    assert rows * columns >= channels and result.display.tiles.values.shape == (rows * (height + 1) - 1, columns * (width + 1) - 1)


def test_sorting_by_mean_puts_the_strongest_channel_first(bundled, chelsea):
    result, _ = run("activations", MethodContext(model=bundled, image=chelsea), layer="late", sort="mean")
    means = result.array.reshape(result.array.shape[0], -1).mean(axis=1)
    order = result.metrics["channel_order"]
    assert order[0] == int(means.argmax())
    assert all(means[a] >= means[b] for a, b in zip(order, order[1:]))


def test_one_channel_lies_over_the_image(bundled, chelsea):
    result, _ = run("activations", MethodContext(model=bundled, image=chelsea), layer="late", channel=7)
    assert isinstance(result.display, MapOverPhoto) and result.display.photo.shape[:2] == (chelsea.size[1], chelsea.size[0])
    assert result.array.shape == (7, 11)


def test_fully_connected_layers_show_bars(bundled, chelsea):
    result, _ = run("activations", MethodContext(model=bundled, image=chelsea), layer="classifier")
    assert isinstance(result.display, Bars) and result.display.values.shape == (1000,)


def test_switching_layers_reuses_one_forward(bundled, chelsea, monkeypatch):
    import engine.anatomy.activations as features

    calls = []
    original = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    ctx = MethodContext(model=bundled, image=chelsea)
    for layer in ("early", "middle", "late", "stem.relu6"):
        run("activations", ctx, layer=layer)
    assert len(calls) == 1


def test_unknown_layer_is_a_clear_error(bundled, chelsea):
    with pytest.raises(MethodInputError, match="did you mean"):
        run("activations", MethodContext(model=bundled, image=chelsea), layer="stages.3.2.expand_relu")


# -- saliency ---------------------------------------------------------------------------------
def test_saliency_matches_finite_differences():
    model = make_tiny_model(size=16)
    image = random_image((16, 16))
    result, _ = run("saliency", MethodContext(model=model, image=image), target="3")
    assert result.target == {"index": 3, "label": "class 3"}
    assert result.array.shape == (16, 16)

    double = make_tiny_model(size=16, dtype=torch.float64)
    x = model.preprocessing.to_unit_tensor(image.image).double()
    eps = 1e-6
    rng = np.random.default_rng(1)
    for _ in range(6):
        y, xx = rng.integers(0, 16, 2)
        partials = []
        for c in range(3):
            plus, minus = x.clone(), x.clone()
            plus[0, c, y, xx] += eps
            minus[0, c, y, xx] -= eps
            with torch.no_grad():
                partials.append((double.module(plus)[0, 3] - double.module(minus)[0, 3]).item() / (2 * eps))
        assert result.array[y, xx] == pytest.approx(max(abs(p) for p in partials), rel=1e-3, abs=1e-6)


def test_saliency_defaults_to_the_top_class_and_peaks_on_the_cat(bundled, chelsea):
    # The cat photo shrunk into a corner of a plain gray canvas: the gradient of the
    # cat class must concentrate on the cat, not spread evenly over the gray.
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(chelsea.image.resize((200, 133)), (20, 30))
    image = LoadedImage(canvas, path="cat-in-a-corner.png")
    result, _ = run("saliency", MethodContext(model=bundled, image=image))
    top = compute_features(bundled, image).top_k(bundled.labels, 1)[0]
    assert result.target["index"] == top[0] and "cat" in top[1]
    saliency = result.array
    h, w = saliency.shape
    inside = saliency[30 * h // 448:163 * h // 448, 20 * w // 448:220 * w // 448].sum() / saliency.sum()
    area = (133 * 200) / (448 * 448)
    assert inside > 3 * area  # measured: 0.50 of the mass in 0.13 of the area


def test_target_by_label(bundled, chelsea):
    result, _ = run("saliency", MethodContext(model=bundled, image=chelsea), target="tabby")
    assert result.target == {"index": 281, "label": "tabby"}
    with pytest.raises(MethodInputError, match="several classes"):
        run("saliency", MethodContext(model=bundled, image=chelsea), target="cat")


# -- dream --------------------------------------------------------------------------------------
def test_dream_raises_the_layers_norm_and_streams_frames(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    result, frames = run("dream", ctx, layer="middle", steps=4, octaves=2, size=160)
    assert len(frames) == 8 and all(isinstance(f, Frame) for f in frames)
    assert result.metrics["norm_last"] > 1.1 * result.metrics["norm_first"]
    assert result.array.min() >= 0 and result.array.max() <= 1 and result.array.std() > 0.05
    # Frames are shown at the final size, so the canvas does not jump between octaves.
    assert {f.display.rgb.shape for f in frames} == {result.display.rgb.shape}


def test_dream_is_reproducible_for_a_seed(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    first, _ = run("dream", ctx, steps=2, octaves=1, size=96, seed=3)
    again, _ = run("dream", ctx, steps=2, octaves=1, size=96, seed=3)
    other, _ = run("dream", ctx, steps=2, octaves=1, size=96, seed=4)
    np.testing.assert_array_equal(first.array, again.array)
    assert not np.array_equal(first.array, other.array)


def test_cancelled_dream_returns_no_result(bundled, chelsea):
    cancel = CancelToken()
    ctx = MethodContext(model=bundled, image=chelsea, cancel=cancel)
    job = METHODS["dream"].start(ctx, {"steps": 50, "size": 96})
    assert frames_before_cancel(job, cancel, after=2) == 2


def test_methods_that_need_an_image_say_so(bundled):
    for method in ("activations", "saliency", "dream"):
        with pytest.raises(MethodInputError, match="needs an image"):
            run(method, MethodContext(model=bundled, image=None))


def test_bad_parameters_are_clear(bundled):
    with pytest.raises(MethodInputError, match="--steps must be at least 1"):
        METHODS["dream"].bind({"steps": 0})
    with pytest.raises(MethodInputError, match="--sort must be one of"):
        METHODS["activations"].bind({"sort": "median"})
    with pytest.raises(MethodInputError, match="expects a number"):
        METHODS["dream"].bind({"lr": "fast"})


def test_activations_are_not_overwritten_by_later_in_place_operations(chelsea):
    """ResNet adds the shortcut in place (``out += identity``) onto bn2's output."""
    import torchvision

    from engine.models.preprocessing import Preprocessing
    from engine.models.model import LoadedModel

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    model = LoadedModel(name="resnet18", module=resnet, preprocessing=Preprocessing(size=64), labels=[str(i) for i in range(1000)],
                        weights="random")
    block = resnet.layer1[0]
    x = model.preprocessing.to_tensor(chelsea.image)
    with torch.no_grad():
        stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        expected = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(stem)))))
    for _ in range(2):  # the first image learns which outputs need copying, the second reuses it
        features = compute_features(model, chelsea, size=64)
        torch.testing.assert_close(features.activations["layer1.0.bn2"], expected)


def test_a_new_image_never_reuses_the_old_images_activations(bundled, chelsea):
    from engine.anatomy.activations import FeatureCache
    from engine.data.images import LoadedImage

    cache = FeatureCache()
    first = cache.get(bundled, LoadedImage(chelsea.image.copy(), path="a"))
    second = cache.get(bundled, LoadedImage(chelsea.image.transpose(Image.Transpose.FLIP_TOP_BOTTOM), path="b"))
    assert not torch.equal(first.logits, second.logits)


@pytest.mark.parametrize("name, expected", [("vgg16", "classifier.4"), ("resnet18", "avgpool"), ("mobilenet_v3_large", "classifier.1")])
def test_penultimate_is_what_feeds_the_classifier(name, expected):
    import torchvision

    from engine.anatomy.hooks import capture_outputs
    from engine.anatomy.layers import resolve_layer

    model = torchvision.models.get_model(name, weights=None).eval()
    with torch.no_grad(), capture_outputs(model) as captured:
        model(torch.zeros(1, 3, 64, 64))
    shapes = {path: tuple(t.shape) for path, t in captured.items()}
    assert resolve_layer(model, "penultimate", {}, shapes) == expected


def test_penultimate_of_the_bundled_model_is_the_pooled_head(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    assert ctx.resolve_layer("penultimate") == "pool"
