"""DeepDream in full: weighted layers, the guided objective, tiles, and the frames it records.

The basic dream (the norm grows, frames stream, seeds reproduce, cancel) is checked in
tests/test_methods.py.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.errors import MethodInputError
from engine.data.images import LoadedImage, load_image
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.methods import dream as dream_module
from engine.methods.dream import DreamObjective, guided_term
from engine.data.samples import sample_path
from engine.optvis.tiling import tile_windows, tiled_gradient, tiling_geometry
from tests.conftest import make_tiny_model


def run(ctx, **params):
    spec = METHODS["dream"]
    frames = []
    result = drive(spec.start(ctx, params), on_frame=frames.append)
    return result, frames


def noise_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return LoadedImage(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), path="noise.png")


def whole_gradient(objective, unit):
    pixels = unit.clone().requires_grad_(True)
    loss, _ = objective(pixels)
    gradient, = torch.autograd.grad(loss, pixels)
    return float(loss.detach()), gradient


def tiled(objective, model, unit, tile, margin, offset=(0, 0)):
    paths = list(objective.weights)
    geometry = tiling_geometry(model, paths)
    objective.jumps = geometry.jumps
    height, width = unit.shape[-2:]
    shapes = model.state.output_shapes((height, width), until=objective.last)
    numel = {path: math.prod(shapes[path]) for path in paths}
    windows = tile_windows(height, width, tile, margin, geometry.align, offset)
    gradient, loss, _ = tiled_gradient(lambda crop, window: objective(crop, window, numel), unit, windows)
    return loss, gradient, geometry, windows


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- several layers ----------------------------------------------------------------------
def test_layer_weights_are_read_from_pairs_with_keywords_and_default_weights():
    layers = METHODS["dream"].param("layers")
    assert layers.coerce("early:1.0, stages.3.2.expand_relu6:0.5,late") == (
        ("early", 1.0), ("stages.3.2.expand_relu6", 0.5), ("late", 1.0))
    assert layers.coerce(" middle : -0.25 ,") == (("middle", -0.25),)


@pytest.mark.parametrize("layers, message", [
    ("early:lots", "cannot read 'early:lots'"),
    (":0.5", "cannot read ':0.5'"),
    ("early:nan", "cannot read"),
    ("features.1:2,early:1", "names features.1 twice \\('early' is features.1\\)"),
    ("early:0,late:0", "every weight is 0"),
    ("early:1,nonsense", "no layer 'nonsense'"),
])
def test_bad_layer_lists_are_clear(layers, message):
    ctx = MethodContext(model=make_tiny_model(), image=noise_image(16, 16))
    with pytest.raises(MethodInputError, match=message):
        run(ctx, layers=layers, steps=1, octaves=1)


def test_the_objective_is_the_weighted_sum_of_each_layers_normalised_half_square():
    model = make_tiny_model()
    unit = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    both = DreamObjective(model, {"features.1": 1.0, "features.4": 0.5}, last="features.4")
    early = DreamObjective(model, {"features.1": 1.0}, last="features.1")
    late = DreamObjective(model, {"features.4": 1.0}, last="features.4")
    features = model.module.features
    with torch.no_grad():
        a1 = features[:2](unit)
        a4 = features(unit)
    expected = 0.5 * a1.pow(2).sum() / a1.numel() + 0.5 * 0.5 * a4.pow(2).sum() / a4.numel()
    loss, gradient = whole_gradient(both, unit)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    # One forward for both layers gives the same gradient as the two layers apart.
    torch.testing.assert_close(gradient, whole_gradient(early, unit)[1] + 0.5 * whole_gradient(late, unit)[1])


def test_a_two_layer_dream_reports_each_layers_norm(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    result, frames = run(ctx, layers="early:1,middle:0.5", steps=3, octaves=1, size=64, jitter=0)
    early, middle = bundled.layer_presets["early"], bundled.layer_presets["middle"]
    assert result.params["layers"] == {early: 1.0, middle: 0.5}
    assert result.metrics["loss_last"] > 1.02 * result.metrics["loss_first"]  # measured: +4%
    assert set(result.metrics["layer_norms_last"]) == {early, middle}
    assert all(result.metrics["layer_norms_last"][p] > result.metrics["layer_norms_first"][p] for p in (early, middle))
    assert result.metrics["norm_first"] == result.metrics["layer_norms_first"][early]


# -- guided ------------------------------------------------------------------------------
def test_the_guided_gradient_at_each_position_is_the_best_matching_guide_vector(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(1, 6, 5, 7, generator=generator, requires_grad=True)
    guide = torch.randn(6, 11, generator=generator)
    flat = activation.detach()[0].reshape(6, -1)
    best = (flat.T @ guide).argmax(dim=1)
    expected_value = (flat.T @ guide).max(dim=1).values.sum()
    monkeypatch.setattr(dream_module, "_MATCH_CHUNK", 22)  # matched in chunks of 2 positions
    value = guided_term(activation, guide)
    gradient, = torch.autograd.grad(value, activation)
    assert float(value.detach()) == pytest.approx(float(expected_value), rel=1e-5)
    torch.testing.assert_close(gradient[0].reshape(6, -1), guide[:, best])


def best_match_similarity(model, layer, picture, guide_features):
    """Mean over the picture's positions of the cosine to the best-matching guide vector."""
    unit = torch.from_numpy(np.ascontiguousarray(picture)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        features = DreamObjective(model, {layer: 1.0}, layer).features(unit)[layer]
    flat = torch.nn.functional.normalize(features[0].reshape(features.shape[1], -1), dim=0)
    return float((flat.T @ guide_features).max(dim=1).values.mean())


def test_a_guided_dream_grows_the_guides_features_more_than_a_plain_dream(bundled, chelsea):
    guide = str(sample_path("gravel"))
    layer = bundled.layer_presets["middle"]
    with torch.no_grad():
        features = DreamObjective(bundled, {layer: 1.0}, layer).features(
            bundled.preprocessing.to_unit_tensor(load_image(guide).image))[layer]
    guide_features = torch.nn.functional.normalize(features[0].reshape(features.shape[1], -1), dim=0)
    ctx = MethodContext(model=bundled, image=chelsea)
    plain, _ = run(ctx, steps=6, octaves=1, size=96)
    guided, _ = run(ctx, steps=6, octaves=1, size=96, guide=guide)
    start = bundled.preprocessing.to_unit_tensor(chelsea.image, 96)[0].permute(1, 2, 0).numpy()
    before = best_match_similarity(bundled, layer, start, guide_features)
    plain_gain = best_match_similarity(bundled, layer, plain.array, guide_features) - before
    guided_gain = best_match_similarity(bundled, layer, guided.array, guide_features) - before
    # Measured: plain -0.03, guided +0.10 (cosine, 0..1 scale).
    assert guided_gain > 0.05 and guided_gain > plain_gain + 0.05
    assert "guided by gravel.png" in guided.display.note


def test_a_guide_that_cannot_be_read_is_a_clear_error(tmp_path):
    ctx = MethodContext(model=make_tiny_model(), image=noise_image(16, 16))
    with pytest.raises(MethodInputError, match="--guide: missing.png: no such file"):
        run(ctx, guide=str(tmp_path / "missing.png"), steps=1, octaves=1)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MethodInputError, match="--guide: empty.png is empty"):
        run(ctx, guide=str(empty), steps=1, octaves=1)


# -- tiles -------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [(0, 0), (5, 3), (31, 30)])
def test_tile_cores_cover_the_image_once_and_windows_are_padded_like_it(offset):
    height, width, tile, margin, align = 101, 70, 32, 8, 4
    windows = tile_windows(height, width, tile, margin, align, offset)
    owned = np.zeros((height, width), int)
    for w in windows:
        owned[w.core_top:w.core_bottom, w.core_left:w.core_right] += 1
        # The window holds its core and the margin around it, inside the image.
        assert 0 <= w.top <= w.core_top - min(margin, w.core_top) and min(height, w.core_bottom + margin) <= w.bottom <= height
        assert 0 <= w.left <= w.core_left - min(margin, w.core_left) and min(width, w.core_right + margin) <= w.right <= width
        assert w.top % align == 0 and w.left % align == 0 and w.core_top % align == 0 and w.core_left % align == 0
        assert align <= w.core_bottom - w.core_top < tile + align and align <= w.core_right - w.core_left < tile + align
    # One window size (one input shape for the network), as long as the image modulo the
    # alignment (TensorFlow's "SAME" pads by parity): 32 + 2 * 8 + 101 % 4 and 32 + 2 * 8 + 70 % 4.
    assert {(w.bottom - w.top, w.right - w.left) for w in windows} == {(49, 50)}
    assert (owned == 1).all()
    # An axis no longer than one tile is not cut.
    assert len(tile_windows(30, 30, 32, 8, 4, offset)) == 1
    assert {(w.bottom - w.top, w.right - w.left) for w in tile_windows(30, 90, 32, 8, 4, offset)} == {(30, 50)}


@pytest.mark.parametrize("layer", ["features.1", "features.3", "features.4"])
def test_tiled_gradient_equals_the_whole_images_when_the_margin_covers_the_receptive_field(layer):
    model = make_tiny_model()
    unit = torch.rand(1, 3, 41, 36, generator=torch.Generator().manual_seed(2))
    objective = DreamObjective(model, {layer: 1.0}, layer)
    loss, whole = whole_gradient(objective, unit)
    geometry = tiling_geometry(model, [layer], 16)
    for offset in [(0, 0), (3, 6)]:
        tiled_loss, gradient, _, windows = tiled(objective, model, unit, tile=8, margin=geometry.reach, offset=offset)
        assert len(windows) >= 25
        assert tiled_loss == pytest.approx(loss, rel=1e-5)
        # Everywhere, borders included: a window at the image's edge is padded as the image is.
        assert relative_error(gradient, whole) < 1e-5
    # With no margin the units at the tiles' edges miss their context: the check can fail.
    _, gradient, _, _ = tiled(objective, model, unit, tile=8, margin=0)
    assert relative_error(gradient, whole) > 1e-2


def test_tiles_of_the_bundled_model_line_up_with_its_same_padding(bundled):
    """EfficientNet pads like TensorFlow's SAME, by the parity of each stage's input; odd
    image sides check that every window is padded as the whole image is."""
    layer = bundled.layer_presets["early"]
    unit = torch.rand(1, 3, 73, 90, generator=torch.Generator().manual_seed(3))
    objective = DreamObjective(bundled, {layer: 1.0}, layer)
    loss, whole = whole_gradient(objective, unit)
    tiled_loss, gradient, geometry, windows = tiled(objective, bundled, unit, tile=24, margin=8, offset=(4, 12))
    assert geometry.jumps == {layer: 4} and geometry.reach <= 8 and len(windows) >= 16
    assert tiled_loss == pytest.approx(loss, rel=1e-5)
    assert relative_error(gradient, whole) < 1e-4


def test_a_tiled_dream_is_the_untiled_dream_where_tiling_is_exact():
    ctx = MethodContext(model=make_tiny_model(), image=noise_image(61, 47, seed=4))
    plain, _ = run(ctx, layer="features.3", steps=3, octaves=2, octave_scale=1.3, size=40, tile=0, seed=5)
    tiled_result, frames = run(ctx, layer="features.3", steps=3, octaves=2, octave_scale=1.3, size=40, tile=12, seed=5)
    assert tiled_result.metrics["tiles"] >= 9
    np.testing.assert_allclose(tiled_result.array, plain.array, atol=1e-4)
    assert tiled_result.metrics["loss_last"] == pytest.approx(plain.metrics["loss_last"], rel=1e-4)
    assert tiled_result.metrics["norm_last"] == pytest.approx(plain.metrics["norm_last"], rel=1e-4)


def test_where_the_overlap_is_short_of_the_field_the_grid_moves_and_stays_close():
    """features.4 sees 8 px; tiles of 8 px get 2 px of overlap, so the grid moves every step."""
    ctx = MethodContext(model=make_tiny_model(), image=noise_image(61, 47, seed=4))
    start = ctx.model.preprocessing.to_unit_tensor(ctx.image.image, 40)[0].permute(1, 2, 0).numpy()
    plain, _ = run(ctx, layer="features.4", steps=4, octaves=1, size=40, tile=0, seed=5)
    moving, _ = run(ctx, layer="features.4", steps=4, octaves=1, size=40, tile=8, seed=5)
    again, _ = run(ctx, layer="features.4", steps=4, octaves=1, size=40, tile=8, seed=5)
    assert "2 px overlap, the grid moving every step" in moving.display.note
    np.testing.assert_array_equal(moving.array, again.array)  # the grid's moves follow the seed
    change, reference = (moving.array - start).ravel(), (plain.array - start).ravel()
    assert np.corrcoef(change, reference)[0, 1] > 0.9  # measured 0.96
    assert not np.allclose(moving.array, plain.array, atol=1e-3)


def test_a_2000_px_image_dreams_in_tiles_without_a_full_size_map(bundled, chelsea):
    largest = {}

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.device.type != "meta":  # shape inference allocates nothing
            largest[module] = max(largest.get(module, 0), output.numel())

    ctx = MethodContext(model=bundled, image=chelsea)
    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result, frames = run(ctx, layer="stem.relu6", steps=1, octaves=1, size=2000, tile=512)
    finally:
        handle.remove()
    height, width = result.array.shape[:2]
    assert min(height, width) == 2000 and result.metrics["tiles"] >= 16
    full_map = 32 * math.ceil(height / 2) * math.ceil(width / 2)  # stem.relu6 over the whole image
    stem = dict(bundled.module.named_modules())["stem.relu6"]
    assert 0 < largest[stem] < full_map / 8
    assert max(largest.values()) < full_map / 8  # no module saw the whole image, after the first look at 224 px
    assert result.metrics["norm_last"] > result.metrics["norm_first"]


def test_tiling_a_layer_without_a_grid_of_units_is_a_clear_error():
    ctx = MethodContext(model=make_tiny_model(), image=noise_image(40, 40))
    with pytest.raises(MethodInputError, match="'pool' has no regular grid.*--tile 0"):
        run(ctx, layer="pool", steps=1, octaves=1, size=40, tile=16)
    result, _ = run(ctx, layer="pool", steps=1, octaves=1, size=40, tile=0)
    assert result.metrics["norm_last"] > result.metrics["norm_first"]


# -- frames for an animation -------------------------------------------------------------
def test_the_dream_records_its_frames_for_an_animated_export(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    result, frames = run(ctx, steps=3, octaves=2, size=80)
    assert len(result.frames) == len(frames) == 6
    assert all(f.shape == result.display.rgb.shape and f.dtype == np.uint8 for f in result.frames)
    np.testing.assert_array_equal(result.frames[-1], result.display.rgb)
    np.testing.assert_array_equal(result.frames[0], frames[0].display.rgb)
    assert not np.array_equal(result.frames[0], result.frames[-1])
