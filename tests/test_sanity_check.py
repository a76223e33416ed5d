"""sanity-check: cascading randomisation changes the saliency map, on a copy of the model only."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from engine.attribution import randomise
from engine.core.errors import MethodInputError
from engine.core.jobs import CancelToken, drive
from engine.methods import METHODS, MethodContext
from engine.evaluation.similarity import spearman_similarity, ssim_similarity
from engine.methods.sanity_check import TILE, as_map, choose_methods
from tests.test_methods import random_image

from tests.cancelling import frames_before_cancel

SPEC = METHODS["sanity-check"]


def run(ctx, **params):
    frames = []
    result = drive(SPEC.start(ctx, params), on_frame=frames.append)
    return result, frames


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed"


def test_saliency_stops_resembling_itself_as_the_model_is_randomised(bundled, chelsea):
    before = snapshot(bundled.module)
    result, frames = run(MethodContext(model=bundled, image=chelsea), methods="saliency", steps=3, seed=0)
    assert_unchanged(bundled.module, before)  # only the copy was randomised
    spearman = result.metrics["spearman"]["saliency"]
    ssim = result.metrics["ssim"]["saliency"]
    assert len(spearman) == len(ssim) == 3 and result.array.shape == (1, 3)
    np.testing.assert_allclose(result.array[0], spearman, rtol=1e-6)
    # Randomising only the top leaves some of the map; randomising everything leaves none.
    assert spearman[-1] < 0.5 and spearman[-1] < spearman[0] - 0.2
    assert ssim[-1] < ssim[0]
    assert result.metrics["layers"] == ["stages.6", "stages.3", "stem"]  # 3 + 3 + 4 of the 10 blocks
    assert result.metrics["groups"][0] == ["classifier", "head", "stages.6"]
    assert result.target["label"] == "Egyptian cat"  # the trained model's top-1, kept at every step
    assert len(frames) == 3 and [f.step for f in frames] == [1, 2, 3]
    # The grid: one row (saliency), the original and three steps.
    assert result.display.rgb.ndim == 3 and result.display.rgb.shape[1] > 4 * TILE


def test_similarities_are_computed_as_stated(tiny_model):
    ctx = MethodContext(model=tiny_model, image=random_image((16, 16)))
    result, _ = run(ctx, methods="saliency", steps=1, seed=1)
    original = drive(METHODS["saliency"].start(ctx, {"target": result.target["index"]})).array
    twin = randomise.model_copy(tiny_model)
    for block in randomise.parameter_blocks(twin.module, list(tiny_model.state.output_shapes())):
        randomise.reinitialise(twin.module, block, 1)
    saliency = METHODS["saliency"]
    randomised = drive(saliency.start(MethodContext(model=twin, image=ctx.image), target=result.target["index"])).array
    expected = spearmanr(np.abs(original).ravel(), np.abs(randomised).ravel()).statistic
    assert result.metrics["spearman"]["saliency"][0] == pytest.approx(expected, abs=1e-6)
    assert ssim_similarity(original, original) == pytest.approx(1.0)
    assert spearman_similarity(original, original) == pytest.approx(1.0)
    assert np.isnan(spearman_similarity(original, np.zeros_like(original)))  # no ranks in a constant map


def test_the_seed_reproduces_the_randomisation(tiny_model):
    image = random_image((16, 16))
    first, _ = run(MethodContext(model=tiny_model, image=image), methods="saliency", seed=5)
    again, _ = run(MethodContext(model=tiny_model, image=image), methods="saliency", seed=5)
    other, _ = run(MethodContext(model=tiny_model, image=image), methods="saliency", seed=6)
    np.testing.assert_array_equal(first.array, again.array)
    assert not np.array_equal(first.array, other.array)
    assert first.metrics["layers"] == ["classifier", "features.3", "features.0"]


def test_reinitialise_redraws_every_parameter_as_pytorch_would():
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).requires_grad_(False)
    with torch.no_grad():
        net[1].running_mean.fill_(2.0)
        net[1].weight.fill_(3.0)
    blocks = randomise.parameter_blocks(net)
    assert [(b.name, b.paths) for b in blocks] == [("4", ["4"]), ("0", ["0", "1"])]  # the norm joins its conv
    before = snapshot(net)
    for block in blocks:
        randomise.reinitialise(net, block, 0)
    conv, norm, linear = net[0], net[1], net[4]
    assert not torch.equal(conv.weight, before["0.weight"]) and not torch.equal(linear.bias, before["4.bias"])
    bound = 1 / np.sqrt(4 * 3 * 3)  # PyTorch's default for a fresh Conv2d(4, 8, 3)
    assert float(conv.weight.abs().max()) <= bound and float(conv.weight.abs().max()) > 0.8 * bound
    assert float(conv.bias.abs().max()) <= bound
    assert float(linear.weight.abs().max()) <= 1 / np.sqrt(8)
    assert torch.equal(norm.weight, torch.ones(8)) and torch.equal(norm.running_mean, torch.zeros(8))
    # The same seed and block name give the same weights, whatever happened before.
    twin = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    randomise.reinitialise(twin, blocks[1], 0)
    assert torch.equal(twin[0].weight, conv.weight)


def test_blocks_of_the_bundled_model_are_its_stages(bundled):
    blocks = randomise.parameter_blocks(bundled.module, list(bundled.state.output_shapes()))
    assert [b.name for b in blocks] == ["classifier", "head", *(f"stages.{i}" for i in range(6, -1, -1)), "stem"]
    groups = randomise.cascade_groups(blocks, 4)
    assert [len(g) for g in groups] == [2, 2, 3, 3]  # smaller groups first: the top changes gradually
    assert [b for g in groups for b in g] == blocks
    assert len(randomise.cascade_groups(blocks, 0)) == len(randomise.cascade_groups(blocks, 99)) == 10


def test_unknown_or_unusable_methods_are_clear(tiny_model):
    ctx = MethodContext(model=tiny_model, image=random_image((16, 16)))
    with pytest.raises(MethodInputError, match="there is no attribution method 'saliancy'.*such as saliency"):
        run(ctx, methods="saliency,saliancy")
    with pytest.raises(MethodInputError, match="no attribution method 'sanity-check'"):
        run(ctx, methods="sanity-check")
    with pytest.raises(MethodInputError, match="names no method"):
        run(ctx, methods=" , ")
    with pytest.raises(MethodInputError, match="filters does not give a map over the image"):
        as_map(np.zeros((8, 3, 3, 3)), "filters")
    assert as_map(np.ones((3, 5, 7)), "rgb-gradient").shape == (5, 7)  # per-colour maps keep their largest |value|
    assert choose_methods("", METHODS)[0] == "saliency"  # the default: the attribution methods that exist
    with pytest.raises(MethodInputError, match="needs an image"):
        run(MethodContext(model=tiny_model, image=None))


def test_cancelling_between_steps_keeps_no_result_and_the_model(tiny_model):
    before = snapshot(tiny_model.module)
    cancel = CancelToken()
    job = SPEC.start(MethodContext(model=tiny_model, image=random_image((16, 16)), cancel=cancel), methods="saliency")
    assert frames_before_cancel(job, cancel) == 1  # of three steps
    assert_unchanged(tiny_model.module, before)


def test_a_method_that_refuses_a_randomised_network_counts_as_a_blank_map(tiny_model, monkeypatch):
    from engine.core.jobs import Result
    from engine.methods import MethodSpec, Param

    def refuses_random_weights(ctx, p):
        if "randomised" in ctx.model.name:
            raise MethodInputError("the gradient is zero everywhere")
        yield from ()
        return Result(display=None, array=np.arange(256.0).reshape(16, 16))

    fake = MethodSpec(id="fussy-map", title="", summary="", params=(Param("target", "target"),), run=refuses_random_weights)
    monkeypatch.setitem(METHODS, "fussy-map", fake)
    result, _ = run(MethodContext(model=tiny_model, image=random_image((16, 16))), methods="fussy-map,saliency", steps=2)
    assert result.array.shape == (2, 2)
    assert np.isnan(result.array[0]).all()  # no rank correlation with a constant map
    assert [entry["step"] for entry in result.metrics["blank"]["fussy-map"]] == result.metrics["layers"]
    assert "saliency" not in result.metrics["blank"] and np.isfinite(result.array[1]).all()


def test_the_figure_and_the_final_text_carry_every_steps_similarity(tiny_model):
    from engine.app.session import summarise
    from engine.methods.sanity_check import similarity_figure
    from engine.view.plots import PALETTE

    result, frames = run(MethodContext(model=tiny_model, image=random_image((16, 16))), methods="saliency,gradcam",
                         metric="ssim", seed=2)
    methods, layers = result.metrics["methods"], result.metrics["layers"]
    ssim = result.metrics["ssim"]
    assert methods == ["saliency", "gradcam"] and len(layers) == 3
    # The final text, as the panel shows it: one line per method, every step's similarity in it.
    lines = summarise(result).split("\n")
    assert lines[0].startswith("class ")
    for method_id, line in zip(methods, lines[1:], strict=True):
        assert line == f"{method_id} ssim: " + ", ".join(f"{layer} {value:.2f}" for layer, value in
                                                       zip(layers, ssim[method_id], strict=True))
    # The figure: one line per method through the original's 1 and each step's value, drawn
    # where the values say; the points' heights are linear in the values.
    picture, points = similarity_figure(methods, layers, [ssim[m] for m in methods], "ssim")
    values = {m: [1.0, *ssim[m]] for m in methods}
    assert list(points) == methods
    xy = np.array([p for m in methods for p in points[m]], dtype=np.float64)
    v = np.array([x for m in methods for x in values[m]])
    slope, intercept = np.polyfit(v, xy[:, 1], 1)
    assert slope < 0  # higher similarity, higher up
    np.testing.assert_allclose(xy[:, 1], slope * v + intercept, atol=0.6)  # pixel rounding only
    assert [p[0] for p in points["saliency"]] == [p[0] for p in points["gradcam"]]  # the same depth, the same x
    # The line drawn last covers none of its own markers: each is in its colour.
    colour = tuple(int(PALETTE[1][i:i + 2], 16) for i in (1, 3, 5))
    assert all(tuple(picture[y, x]) == colour for x, y in points["gradcam"])
    # The result's picture holds the grid and that figure beneath it; so does the last frame.
    figure_height = picture.shape[0]
    bottom = result.display.rgb[-figure_height:, :picture.shape[1]]
    np.testing.assert_array_equal(bottom, picture)
    np.testing.assert_array_equal(frames[-1].display.rgb, result.display.rgb)


def test_a_step_without_a_rank_correlation_is_a_gap_in_its_line():
    from engine.methods.sanity_check import similarity_figure, summary_text

    picture, points = similarity_figure(["a", "b"], ["x", "y"], [[0.5, float("nan")], [0.2, -0.4]], "spearman")
    assert points["a"][2] is None and points["a"][1] is not None
    assert points["b"][2][1] > points["b"][1][1] > points["a"][1][1]  # -0.4 below 0.2 below 0.5: the axis reaches below 0
    assert picture.shape[2] == 3
    assert summary_text(["a", "b"], ["x", "y"], [[0.5, float("nan")], [0.2, -0.4]], "spearman") == \
        "a spearman: x 0.50, y n/a\nb spearman: x 0.20, y -0.40"


def test_a_default_method_the_model_cannot_run_is_left_out_and_said(chelsea):
    from torch import nn

    from tests.conftest import make_tiny_model

    model = make_tiny_model()
    model.module.features[1] = nn.GELU()  # no ReLU-like unit left: guided backprop refuses
    model.module.features[4] = nn.GELU()
    result = drive(METHODS["sanity-check"].start(MethodContext(model=model, image=chelsea), {"steps": 2}))
    assert "guided-backprop" not in result.metrics["methods"] and "saliency" in result.metrics["methods"]
    assert "ReLU-like" in result.metrics["left_out"]["guided-backprop"]
    assert "left out, as this model cannot run them: guided-backprop" in result.display.note
    assert result.array.shape[0] == len(result.metrics["methods"])
