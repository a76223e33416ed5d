"""occlusion: checked against a one-window-at-a-time loop, Captum's definition and the picture."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.core.errors import MethodInputError
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken, Frame, Progress, drive
from engine.core.memory import keep_freed_memory
from engine.methods import METHODS, MethodContext
from engine.methods.occlusion import blur_sigma, window_starts
from engine.models.preprocessing import Preprocessing
from engine.models.model import LoadedModel
from engine.view.display import MapOverPhoto
from engine.view.render import overlay_map
from tests.conftest import make_tiny_model

from tests.cancelling import frames_before_cancel

SPEC = METHODS["occlusion"]


def run(ctx, **params):
    frames, progress = [], []
    result = drive(SPEC.start(ctx, params), on_progress=progress.append, on_frame=frames.append)
    return result, frames, progress


def noise_image(width=27, height=20, seed=0):
    rng = np.random.default_rng(seed)
    return LoadedImage(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), path="noise.png")


def block_image(seed=0):
    """Dark noise with a bright block: hiding the block moves the tiny model's class 2 a lot."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (20, 27, 3), dtype=np.uint8)
    pixels[5:12, 9:17] = 255 - pixels[5:12, 9:17]
    return LoadedImage(Image.fromarray(pixels), path="block.png")


def sharp_tiny_model(size=20):
    """The tiny model with a steep classifier, so that the probabilities are not all alike."""
    model = make_tiny_model(size=size)
    model.module.classifier.weight.mul_(100)
    return model


def unit_input(model, image):
    return model.preprocessing.to_unit_tensor(image.image)


def probability(model, unit, target):
    with torch.no_grad():
        return torch.softmax(model.module(model.preprocessing.normalise(unit)), dim=1)[:, target]


# The input is 20x27; windows of 6 with stride 4 fit neither side exactly, so the last row
# and column of windows are cut off by the edge, as in Captum.
WINDOW, STRIDE = 6, 4


def test_positions_are_captums():
    assert list(window_starts(224, 16, 8)) == list(range(0, 209, 8))  # 27 windows, the last ends at 224
    assert list(window_starts(20, 6, 4)) == [0, 4, 8, 12, 16]  # the last covers 16..19 only
    assert list(window_starts(16, 16, 8)) == [0]


def test_map_equals_one_window_at_a_time():
    model, image = sharp_tiny_model(), block_image()
    result, frames, _ = run(MethodContext(model=model, image=image), target=2, window=WINDOW, stride=STRIDE, batch=4)
    unit = unit_input(model, image)
    rows, cols = window_starts(20, WINDOW, STRIDE), window_starts(27, WINDOW, STRIDE)
    expected = np.zeros((len(rows), len(cols)), dtype=np.float32)
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            occluded = unit.clone()
            occluded[:, :, y:y + WINDOW, x:x + WINDOW] = 0.5
            expected[i, j] = probability(model, occluded, 2)
    assert result.array.shape == (5, 7)
    np.testing.assert_allclose(result.array, expected, atol=1e-6)
    base = float(probability(model, unit, 2))
    drops = base - expected
    assert np.ptp(expected) > 0.05  # the test would prove little if nothing moved
    assert result.metrics["base_prob"] == pytest.approx(base, abs=1e-6)
    assert result.metrics["max_drop"] == pytest.approx(drops.max(), abs=1e-6)
    assert result.metrics["min_prob"] == pytest.approx(expected.min(), abs=1e-6)
    assert result.metrics["positions"] == 35 and result.metrics["grid"] == [5, 7]
    assert tuple(result.metrics["max_drop_position"]) == np.unravel_index(drops.argmax(), drops.shape)
    assert result.target == {"index": 2, "label": "class 2"}


@pytest.mark.parametrize("fill", ["gray", "mean", "blur"])
def test_map_is_captums_occlusion_attribution(fill):
    """Captum's Occlusion on softmax(model(x))[target], with the same fill as baseline.

    Captum adds each window's output drop onto the pixels it covers and divides by the
    number of windows covering each pixel; the map we draw must be exactly that.
    """
    captum_attr = pytest.importorskip("captum.attr")
    model, image = sharp_tiny_model(), block_image()
    result, _, _ = run(MethodContext(model=model, image=image), target=2, window=WINDOW, stride=STRIDE, fill=fill, batch=8)
    unit = unit_input(model, image)
    baselines = {
        "gray": 0.5,
        "mean": unit.mean(dim=(2, 3), keepdim=True),
        "blur": torch.from_numpy(_scipy_blur(unit[0].numpy(), blur_sigma(WINDOW))).unsqueeze(0),
    }[fill]
    occlusion = captum_attr.Occlusion(lambda x: probability(model, x, 2))
    attribution = occlusion.attribute(unit, sliding_window_shapes=(3, WINDOW, WINDOW), strides=(3, STRIDE, STRIDE),
                                      baselines=baselines, perturbations_per_eval=6)[0]
    # One window covers all three channels, so Captum's attribution is the same in each.
    assert torch.equal(attribution[0], attribution[1]) and torch.equal(attribution[0], attribution[2])
    assert float(attribution.abs().max()) > 0.02
    assert result.display.values.shape == (20, 27)
    np.testing.assert_allclose(result.display.values, attribution[0].numpy(), atol=1e-4)
    assert float(np.abs(result.display.values - attribution[0].numpy()).max()) < 1e-6  # measured: 3e-8


def _scipy_blur(chw, sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    return np.stack([ndimage.gaussian_filter(channel, sigma, mode="nearest", truncate=3.0) for channel in chw])


class Recorder(nn.Module):
    """Passes through to a model, keeping every batch it was given."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches = []

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("fill", ["gray", "mean", "blur"])
def test_each_fill_hides_the_window_with_what_it_says(fill):
    # A normalisation that is not the identity, so the fill is checked in pixel units.
    preprocessing = Preprocessing(size=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    tiny = make_tiny_model(size=16)
    recorder = Recorder(tiny.module)
    model = LoadedModel(name="recorder", module=recorder, preprocessing=preprocessing, labels=tiny.labels, weights="random")
    image = noise_image(16, 16, seed=2)
    run(MethodContext(model=model, image=image), target=0, window=8, stride=4, fill=fill, batch=9)
    occluded = torch.cat(recorder.batches[1:])  # the first forward is the unoccluded image
    assert occluded.shape == (9, 3, 16, 16)
    pixels = preprocessing.denormalise(occluded)
    unit = unit_input(model, image)
    expected_fill = {
        "gray": torch.full_like(unit, 0.5),
        "mean": unit.mean(dim=(2, 3), keepdim=True).expand_as(unit),
        "blur": torch.from_numpy(_scipy_blur(unit[0].numpy(), 4.0)).unsqueeze(0),
    }[fill]
    for k, (y, x) in enumerate((y, x) for y in (0, 4, 8) for x in (0, 4, 8)):
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[y:y + 8, x:x + 8] = True
        torch.testing.assert_close(pixels[k][:, inside], expected_fill[0][:, inside], atol=1e-5, rtol=0)
        torch.testing.assert_close(pixels[k][:, ~inside], unit[0][:, ~inside], atol=1e-5, rtol=0)
    if fill == "blur":  # strongly blurred: far smoother than the noise it replaces
        assert float(expected_fill.std()) < 0.3 * float(unit.std())


def test_frames_fill_in_and_the_last_has_no_gaps():
    model, image = sharp_tiny_model(), block_image()
    result, frames, progress = run(MethodContext(model=model, image=image), target=2, window=WINDOW, stride=STRIDE, batch=7)
    assert len(frames) == 5 and all(isinstance(f, Frame) for f in frames)  # 35 positions, 7 per batch
    assert [f.step for f in frames] == [7, 14, 21, 28, 35]
    gaps = [int(np.isnan(f.display.values).sum()) for f in frames]
    assert gaps[0] > 0 and all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] == 0
    # Positions go row by row: after the first batch (the first row of 7 windows, covering
    # pixel rows 0..5) those rows are drawn and the rest is not.
    first = frames[0].display.values
    assert np.isfinite(first[:6]).all() and np.isnan(first[6:]).all()
    np.testing.assert_array_equal(frames[-1].display.values, result.display.values)
    assert not np.isnan(result.array).any() and not np.isnan(result.display.values).any()
    fractions = [p.fraction for p in progress if isinstance(p, Progress)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    display = result.display
    assert isinstance(display, MapOverPhoto) and display.photo.shape == (20, 27, 3) and display.levels[0] == -display.levels[1]
    assert display.colormap == "blue-white-red"  # signed: diverging colours


def test_cancelling_keeps_no_result():
    cancel = CancelToken()
    model, image = sharp_tiny_model(), block_image()
    ctx = MethodContext(model=model, image=image, cancel=cancel)
    job = SPEC.start(ctx, {"window": WINDOW, "stride": STRIDE, "batch": 5})
    assert frames_before_cancel(job, cancel) == 1


def test_the_largest_drop_lies_where_the_cat_is(bundled, chelsea):
    # The cat shrunk into the top-right corner of a plain gray canvas (a corner that a
    # transposed or flipped map would move): hiding the gray changes nothing, hiding the cat
    # changes the cat's probability, so the map the canvas draws over the picture must
    # light up in that corner and nowhere else.
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(chelsea.image.resize((200, 133)), (228, 30))
    cat = (228, 30, 428, 163)  # x0, y0, x1, y1 in picture pixels
    image = LoadedImage(canvas, path="cat-in-a-corner.png")
    result, _, _ = run(MethodContext(model=bundled, image=image), window=32, stride=32)
    assert "cat" in result.target["label"]
    assert result.array.shape == (7, 7) and result.display.values.shape == (224, 224)
    picture_map = overlay_map(result.display)  # the drop map stretched over the picture, as drawn
    assert picture_map.shape == (448, 448)
    # The largest drop: its window (metrics) and its pixel (picture) both in the cat's corner.
    x0, y0, x1, y1 = result.metrics["max_drop_box"]
    assert x1 > cat[0] and x0 < cat[2] and y1 > cat[1] and y0 < cat[3]  # the window overlaps the cat
    y, x = np.unravel_index(np.argmax(picture_map), picture_map.shape)
    assert x >= 224 and y < 224
    assert result.metrics["max_drop"] > 0.05
    # Where hiding matters at all: centred on the cat, nothing in the other three quarters.
    weight = np.abs(picture_map)
    rows, cols = np.mgrid[:448, :448]
    cx, cy = (weight * cols).sum() / weight.sum(), (weight * rows).sum() / weight.sum()
    assert cat[0] <= cx <= cat[2] and cat[1] <= cy <= cat[3]
    # (Windows reaching x < 256 or y >= 192 of the picture overlap the cat or lie next to it,
    # and the bilinear stretch spreads each value a pixel further: the margin below allows that.)
    assert float(np.abs(picture_map[:, :184]).max()) < 0.01 and float(np.abs(picture_map[264:]).max()) < 0.01


def test_bad_parameters_are_clear():
    model, image = sharp_tiny_model(), block_image()
    ctx = MethodContext(model=model, image=image)
    with pytest.raises(MethodInputError, match=r"--window 21 is larger than the model input \(27x20 pixels\): use at most 20"):
        run(ctx, window=21)
    with pytest.raises(MethodInputError, match="--stride must be at least 1, not 0"):
        run(ctx, stride=0)
    with pytest.raises(MethodInputError, match="--stride must be at least 1, not 0"):
        drive(SPEC.start(ctx, window=4, stride=0))  # refused by bind, before the method runs
    with pytest.raises(MethodInputError, match="--stride 9 is larger than --window 8"):
        run(ctx, window=8, stride=9)
    with pytest.raises(MethodInputError, match="--fill must be one of gray, mean, blur"):
        run(ctx, fill="noise")
    with pytest.raises(MethodInputError, match="needs an image"):
        run(MethodContext(model=model, image=None))


def test_keeping_freed_memory_is_idempotent():
    first = keep_freed_memory()
    assert keep_freed_memory() is first


# -- the fast copy of the model (engine.anatomy.fast_copy) ------------------------------------------------
class ConvBnNet(nn.Module):
    def __init__(self, reuse: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU6()
        self.head = nn.Linear(6, 4)
        self.reuse = reuse

    def forward(self, x):
        y = self.conv(x)
        z = self.act(self.bn(y))
        if self.reuse:  # the conv's output used again: folding the norm into the conv would change this
            z = z + y
        return self.head(z.mean(dim=(2, 3)))


def _eval_with_statistics(net):
    torch.manual_seed(3)
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net.eval().requires_grad_(False)


def _loaded(net: nn.Module) -> LoadedModel:
    return LoadedModel(name="conv-bn", module=net, preprocessing=Preprocessing(size=12, mean=(0.0,) * 3, std=(1.0,) * 3),
                       labels=[str(i) for i in range(4)], weights="random")


def test_the_fast_copy_folds_batch_norm_and_leaves_the_model_alone():
    net = _eval_with_statistics(ConvBnNet())
    state = _loaded(net).state
    x = torch.rand(2, 3, 12, 12)
    weight = net.conv.weight.clone()
    twin = state.fast_copy(x[:1])
    assert twin is not net and not any(isinstance(m, nn.BatchNorm2d) for m in twin.modules())
    assert twin.act.inplace and not net.act.inplace and isinstance(net.bn, nn.BatchNorm2d)
    assert torch.equal(net.conv.weight, weight) and twin.head.weight is net.head.weight  # untouched, shared
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), atol=1e-5, rtol=0)
    assert state.fast_copy(x[:1]) is twin  # cached
    with torch.no_grad():
        net.head.weight.mul_(2)  # new weights: a new copy
    assert state.fast_copy(x[:1]) is not twin


def test_the_fast_copy_is_not_used_where_it_would_compute_something_else():
    net = _eval_with_statistics(ConvBnNet(reuse=True))
    assert _loaded(net).state.fast_copy(torch.rand(1, 3, 12, 12)) is net


class ViewNet(nn.Module):
    """Flattens with .view(), which channels-last activations cannot do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 20 * 27, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1) * 5)


def test_a_model_that_cannot_take_channels_last_input_still_works():
    tiny = make_tiny_model(size=20)
    model = LoadedModel(name="view", module=ViewNet().eval().requires_grad_(False), preprocessing=tiny.preprocessing,
                        labels=tiny.labels, weights="random")
    image = block_image()
    result, _, _ = run(MethodContext(model=model, image=image), target=1, window=WINDOW, stride=STRIDE, batch=8)
    unit = unit_input(model, image)
    occluded = unit.clone()
    occluded[:, :, 8:14, 12:18] = 0.5  # row 2, column 3
    assert result.array[2, 3] == pytest.approx(float(probability(model, occluded, 1)), abs=1e-6)
    assert not np.isnan(result.array).any()


def test_the_probability_view_is_the_mean_probability_of_the_covering_windows():
    from engine.methods.occlusion import covering, drop_map
    from tests.test_methods import random_image

    model = make_tiny_model(size=16)
    ctx = MethodContext(model=model, image=random_image((16, 16)))
    spec = METHODS["occlusion"]
    result = drive(spec.start(ctx, {"window": 4, "stride": 2, "target": 1, "show": "probability"}))
    expected = drop_map(result.array.astype(np.float64), covering(16, 4, 2), covering(16, 4, 2))
    np.testing.assert_allclose(result.display.values, expected, rtol=1e-6)
    assert result.display.levels == (0.0, pytest.approx(result.metrics["base_prob"]))
