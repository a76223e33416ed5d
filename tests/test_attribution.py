"""Saliency, SmoothGrad, integrated gradients and Grad-CAM against their definitions and Captum."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from PIL import Image
from torch import nn
from torch.nn import functional as F

from engine.anatomy.hooks import first_tensor
from engine.attribution.maps import colour_top, map_display
from engine.core.errors import JobCancelled, MethodInputError
from engine.attribution.gradients import class_score, gradient_network, score_gradient, unit_score
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken, Progress, drive
from engine.methods import METHODS, MethodContext
from engine.methods.integrated_gradients import baseline_image
from engine.models.model import LoadedModel
from engine.view.display import MapOverPhoto, ScalarMap
from engine.view.render import overlay_map
from tests.conftest import make_tiny_model
from tests.test_methods import random_image

SIZE = 16


def run(method, ctx, **params):
    spec = METHODS[method]
    progress = []
    result = drive(spec.start(ctx, params), on_progress=progress.append)
    return result, progress


def tiny(**kwargs):
    model = make_tiny_model(size=SIZE, **kwargs)
    return model, random_image((SIZE, SIZE))


def unit_input(model, image):
    return model.preprocessing.to_unit_tensor(image.image)


class Normalised(nn.Module):
    """The model on 0..1 pixels, as our methods see it: what Captum is given."""

    def __init__(self, model):
        super().__init__()
        self.net = model.module  # a submodule, so Captum's hooks reach its ReLUs
        self.preprocessing = model.preprocessing

    def forward(self, x):
        return self.net(self.preprocessing.normalise(x))


# -- gradients --------------------------------------------------------------------------------
def test_a_units_gradient_matches_finite_differences():
    model = make_tiny_model(size=SIZE, dtype=torch.float64)
    x = unit_input(model, random_image((SIZE, SIZE))).double()
    gradient, value = score_gradient(model, x, unit_score("features.3", 5, (3, 4)))
    eps = 1e-6
    rng = np.random.default_rng(2)
    for _ in range(8):
        c, y, xx = int(rng.integers(3)), *map(int, rng.integers(0, SIZE, 2))
        plus, minus = x.clone(), x.clone()
        plus[0, c, y, xx] += eps
        minus[0, c, y, xx] -= eps
        with torch.no_grad():
            numeric = (model.module.features[:4](plus)[0, 5, 3, 4] - model.module.features[:4](minus)[0, 5, 3, 4]) / (2 * eps)
        assert float(gradient[0, c, y, xx]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8)
    # A unit of the 8x8 map at (3, 4) after a 2x2 pool sees only rows/columns 4..9 of the input.
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[2:12, 4:14] = False
    assert float(gradient[0][:, outside].abs().max()) == 0.0 and float(value[0]) != 0.0


class KeepsItsPreActivation(nn.Module):
    """Multiplies a conv's output before its ReLU: run in place, the ReLU would overwrite
    the tensor the product keeps for its backward (the forward's value is unchanged)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU6()
        self.head = nn.Linear(4, 5)
        self.keep = True

    def forward(self, x):
        a = self.bn(self.conv(x))
        kept = a * a if self.keep else 0
        return self.head((kept + self.act(a)).mean(dim=(2, 3)))


@pytest.mark.parametrize("keep", [False, True])
def test_gradients_go_through_the_fast_copy_where_its_backward_works(keep):
    torch.manual_seed(0)
    net = KeepsItsPreActivation()
    net.keep = keep
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    model = LoadedModel(name="bn", module=net.eval().requires_grad_(False), labels=[str(i) for i in range(5)],
                        preprocessing=make_tiny_model().preprocessing, weights="random")
    x = torch.rand(2, 3, 12, 12)
    network = gradient_network(model, x)
    if keep:  # the copy's in-place ReLU6 would break the backward pass: the model itself is used
        assert network is model.module
    else:  # batch norm folded into the convolution
        assert network is not model.module and not any(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    ours = score_gradient(model, x, class_score(1), network)[0]
    plain = score_gradient(model, x, class_score(1))[0]
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-6)


def test_saliency_agrees_with_captum():
    model, image = tiny()
    result, _ = run("saliency", MethodContext(model=model, image=image), target=3)
    expected = Saliency(Normalised(model)).attribute(unit_input(model, image).requires_grad_(), target=3, abs=True)
    np.testing.assert_allclose(result.array, expected.amax(dim=1)[0].numpy(), rtol=1e-5, atol=1e-7)


# -- SmoothGrad -----------------------------------------------------------------------------
def test_smoothgrad_is_the_mean_gradient_over_the_seeds_noise_at_any_batch():
    model, image = tiny()
    ctx = MethodContext(model=model, image=image)
    result, _ = run("smoothgrad", ctx, target=2, samples=6, noise=0.2, seed=5, batch=4)
    x = unit_input(model, image)
    generator = torch.Generator().manual_seed(5)
    gradients = []
    for _ in range(6):
        noisy = (x + 0.2 * torch.randn(x.shape[1:], generator=generator)).requires_grad_()
        gradients.append(torch.autograd.grad(model.module(noisy)[0, 2], noisy)[0])
    expected = torch.cat(gradients).mean(dim=0).abs().amax(dim=0)
    np.testing.assert_allclose(result.array, expected.numpy(), rtol=1e-5, atol=1e-7)
    again, _ = run("smoothgrad", ctx, target=2, samples=6, noise=0.2, seed=5, batch=1)
    np.testing.assert_allclose(again.array, result.array, rtol=1e-5, atol=1e-7)
    other, _ = run("smoothgrad", ctx, target=2, samples=6, noise=0.2, seed=6, batch=4)
    assert np.abs(other.array - result.array).max() > 0.1 * result.array.max()


def test_smoothgrad_agrees_with_captums_noise_tunnel_within_sampling_error():
    model, image = tiny()
    samples, noise = 400, 0.15
    result, _ = run("smoothgrad", MethodContext(model=model, image=image), target=1, samples=samples, noise=noise,
                    seed=7)  # noise independent of Captum's: the two means agree only statistically
    x = unit_input(model, image)
    torch.manual_seed(0)
    captum = NoiseTunnel(Saliency(Normalised(model))).attribute(x.clone().requires_grad_(), nt_type="smoothgrad",
                                                              nt_samples=samples, stdevs=noise, target=1, abs=False)
    # The per-sample spread of the gradient, for the standard error of two independent means.
    noisy = (x + noise * torch.randn(samples, *x.shape[1:])).requires_grad_()
    spread = torch.autograd.grad(model.module(noisy)[:, 1].sum(), noisy)[0].std(dim=0).amax(dim=0).numpy()
    standard_error = spread * np.sqrt(2 / samples)
    difference = np.abs(result.array - captum.abs().amax(dim=1)[0].detach().numpy())
    # |max|a| - max|b|| <= max|a - b|: within 4 standard errors nearly everywhere.
    assert (difference <= 4 * standard_error + 1e-7).mean() > 0.99
    assert np.corrcoef(result.array.ravel(), captum.abs().amax(dim=1)[0].detach().numpy().ravel())[0, 1] > 0.95


def test_smoothgrad_reports_progress_per_batch_and_can_be_cancelled():
    model, image = tiny()
    result, progress = run("smoothgrad", MethodContext(model=model, image=image), samples=10, batch=4)
    batches = [p for p in progress if "noisy samples" in p.message]
    assert [p.fraction for p in batches] == [0.3, 0.7, 1.0]  # three equally full passes of at most 4
    assert [p.message for p in batches] == ["3 of 10 noisy samples", "7 of 10 noisy samples", "10 of 10 noisy samples"]
    assert result.metrics["batch"] == 4 and result.metrics["samples"] == 10

    cancel = CancelToken()
    job = METHODS["smoothgrad"].start(MethodContext(model=model, image=image, cancel=cancel), samples=10, batch=4)
    seen = 0
    with pytest.raises(JobCancelled):
        for event in job:
            if isinstance(event, Progress) and "noisy samples" in event.message:
                seen += 1
                cancel.cancel()
    assert seen == 1


# -- integrated gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["black", "white", "blur"])
def test_integrated_gradients_agree_with_captum(baseline):
    model, image = tiny()
    result, _ = run("integrated-gradients", MethodContext(model=model, image=image), target=4, steps=20,
                    baseline=baseline, batch=6)
    x = unit_input(model, image)
    expected = IntegratedGradients(Normalised(model)).attribute(x, baselines=baseline_image(x, baseline), target=4,
                                                                 n_steps=20, method="gausslegendre")
    np.testing.assert_allclose(result.array, expected.sum(dim=1)[0].numpy(), rtol=1e-4, atol=1e-6)
    assert result.display.colormap == "blue-white-red" and result.display.levels[0] == -result.display.levels[1]


def test_integrated_gradients_are_complete():
    # sum of attributions = score(x) - score(baseline), up to the quadrature's error.
    model, image = tiny()
    result, progress = run("integrated-gradients", MethodContext(model=model, image=image), target=2, steps=256,
                           batch=64)
    with torch.no_grad():
        x = unit_input(model, image)
        change = float(model.module(x)[0, 2] - model.module(torch.zeros_like(x))[0, 2])
    metrics = result.metrics
    assert metrics["score"] - metrics["baseline_score"] == pytest.approx(change, rel=1e-4)
    assert metrics["attribution_sum"] == pytest.approx(float(result.array.astype(np.float64).sum()), rel=1e-4)
    assert metrics["completeness_gap"] == pytest.approx(metrics["attribution_sum"] - change, abs=1e-6)
    assert metrics["relative_gap"] < 0.01
    assert [p.message for p in progress if "steps" in p.message and " of " in p.message] == \
        [f"{n} of 256 steps" for n in (64, 128, 192, 256)]


def test_integrated_gradients_take_known_scores_instead_of_running_the_image_and_baseline_again():
    # The window computes a photo's features when it opens it, and a flat baseline is the same
    # picture for every photo of a size: after a first run only the steps take passes, and
    # the figures are those of a run that computed everything.
    model, image = tiny()
    network = gradient_network(model, unit_input(model, image))  # the fast copy, which the method runs
    assert network is not model.module
    calls = []
    hooks = [net.register_forward_pre_hook(lambda module, args, name=name: calls.append((name, args[0].shape[0])))
             for name, net in (("model", model.module), ("copy", network))]
    try:
        fresh, _ = run("integrated-gradients", MethodContext(model=model, image=image), target=2, steps=8, batch=8)
        # The image's prediction (the model itself, as the window predicts), the baseline, the eight steps.
        assert calls == [("model", 1), ("copy", 1), ("copy", 8)]
        ctx = MethodContext(model=model, image=image)
        ctx.image_features()
        calls.clear()
        known, _ = run("integrated-gradients", ctx, target=2, steps=8, batch=8)
        assert calls == [("copy", 8)]
        calls.clear()
        run("integrated-gradients", ctx, target=2, steps=8, batch=8, baseline="blur")
        assert calls == [("copy", 1), ("copy", 8)]  # a blurred photo is this photo's own
    finally:
        for hook in hooks:
            hook.remove()
    for key in ("score", "baseline_score", "attribution_sum", "completeness_gap"):
        assert known.metrics[key] == pytest.approx(fresh.metrics[key], rel=1e-5, abs=1e-7)
    with torch.no_grad():
        list(model.module.parameters())[-1].add_(1.0)  # new weights in place (the head's bias): the kept logits go
        black = first_tensor(model.module(model.preprocessing.normalise(torch.zeros(1, 3, SIZE, SIZE))))[0, 2]
    again, _ = run("integrated-gradients", ctx, target=2, steps=8, batch=8)
    assert again.metrics["baseline_score"] == pytest.approx(float(black), rel=1e-4, abs=1e-6)
    assert again.metrics["baseline_score"] != pytest.approx(fresh.metrics["baseline_score"], rel=1e-3)


def test_the_colour_scale_tops_out_at_the_99th_percentile_else_the_maximum_else_one():
    values = np.arange(1, 101, dtype=np.float32)
    assert colour_top(-values) == pytest.approx(np.percentile(values, 99))  # of the magnitudes
    spike = np.zeros(200, np.float32)
    spike[7] = -5
    assert colour_top(spike) == 5.0  # the 99th percentile is 0: the maximum instead
    assert colour_top(np.zeros(10, np.float32)) == 1.0


def test_integrated_gradients_state_their_own_gap_and_more_steps_shrink_it():
    # The gap is no fixed fraction (kinks make the integrand jump), so each run's note states
    # its own, and asks for more steps only when it is above 2%.
    model, image = tiny()
    ctx = MethodContext(model=model, image=image)
    coarse, _ = run("integrated-gradients", ctx, target=2, steps=2, batch=2, baseline="white")  # measured 7.8%
    fine, _ = run("integrated-gradients", ctx, target=2, steps=128, batch=64, baseline="white")
    assert fine.metrics["relative_gap"] < coarse.metrics["relative_gap"]
    for result in (coarse, fine):
        gap = result.metrics["relative_gap"]
        assert f"gap {gap:.1%}" in result.display.note
        assert ("more steps shrink it" in result.display.note) == (gap > 0.02)
    assert coarse.metrics["relative_gap"] > 0.02 and fine.metrics["relative_gap"] < 0.02


# -- Grad-CAM ---------------------------------------------------------------------------------
def test_gradcam_is_relu_of_the_gradient_weighted_channels():
    model, image = tiny()
    result, _ = run("gradcam", MethodContext(model=model, image=image), target=1)
    assert result.layer == "features.4"  # the tiny model's "late" preset: the last conv's ReLU
    x = unit_input(model, image).requires_grad_()
    captured = {}
    handle = model.module.features[4].register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    score = model.module(x)[0, 1]
    handle.remove()
    maps = captured["A"][0]  # 16 x 8 x 8
    gradient = torch.autograd.grad(score, captured["A"])[0][0]
    cam = torch.zeros(8, 8)
    for k in range(16):  # ReLU(sum_k alpha_k A_k), alpha_k = the mean of d score / d A_k
        cam += gradient[k].mean() * maps[k].detach()
    cam = cam.clamp(min=0)
    expected = F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.array, expected.numpy(), rtol=1e-5, atol=1e-7)

    captum = LayerGradCam(Normalised(model), model.module.features[4]).attribute(unit_input(model, image), target=1,
                                                                                relu_attributions=True)
    upsampled = LayerAttribution.interpolate(captum, (SIZE, SIZE), interpolate_mode="bilinear")
    np.testing.assert_allclose(result.array, upsampled[0, 0].detach().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["gradcam++", "layercam"])
def test_gradcam_variants_follow_their_definitions(variant):
    model, image = tiny()
    result, _ = run("gradcam", MethodContext(model=model, image=image), target=1, variant=variant)
    x = unit_input(model, image).requires_grad_()
    captured = {}
    handle = model.module.features[4].register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    score = model.module(x)[0, 1]
    handle.remove()
    maps = captured["A"][0].detach().double().numpy()  # 16 x 8 x 8
    g = torch.autograd.grad(score, captured["A"])[0][0].double().numpy()
    cam = np.zeros((8, 8))
    for k in range(16):
        if variant == "layercam":  # each position weighted by its own positive gradient
            cam += np.maximum(g[k], 0) * maps[k]
        else:  # Chattopadhay et al.'s closed form: a = g^2 / (2 g^2 + sum(A_k) g^3), w_k = sum a ReLU(g)
            denominator = 2 * g[k] ** 2 + maps[k].sum() * g[k] ** 3
            a = np.divide(g[k] ** 2, denominator, out=np.zeros((8, 8)), where=(g[k] != 0) & (denominator != 0))
            cam += (a * np.maximum(g[k], 0)).sum() * maps[k]
    cam = torch.from_numpy(np.maximum(cam, 0)).float()
    expected = F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.array, expected.numpy(), rtol=1e-4, atol=1e-7)
    assert result.params["variant"] == variant and variant.replace("gradcam", "Grad-CAM").replace("layercam", "LayerCAM") \
        in result.display.legend


def test_score_cam_follows_its_definition_and_cancels_between_batches(monkeypatch):
    import engine.methods.gradcam as gradcam_module

    model, image = tiny()
    monkeypatch.setattr(gradcam_module, "automatic_batch", lambda model, h, w, backward=True: 5)  # 16 channels: 4 batches
    result, events = run("gradcam", MethodContext(model=model, image=image), target=2, variant="scorecam")
    assert sum(e.message.startswith("Score-CAM: ") for e in events if isinstance(e, Progress)) == 4
    x = unit_input(model, image)
    normalised = model.preprocessing.normalise(x)
    with torch.no_grad():
        captured = {}
        handle = model.module.features[4].register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
        model.module(normalised)
        handle.remove()
        maps = captured["A"][0]  # 16 x 8 x 8
        scores = []
        for k in range(16):  # each channel's map, upsampled and scaled to 0..1, masks the input
            mask = F.interpolate(maps[k][None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else torch.zeros_like(mask)
            scores.append(torch.softmax(model.module(normalised * mask), dim=1)[0, 2])
        weights = torch.softmax(torch.stack(scores), dim=0)
        cam = torch.relu((weights[:, None, None] * maps).sum(dim=0))
    expected = F.interpolate(cam[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.array, expected.numpy(), rtol=1e-4, atol=1e-7)
    assert "Score-CAM" in result.display.legend

    cancel = CancelToken()
    job = METHODS["gradcam"].start(MethodContext(model=model, image=image, cancel=cancel), target=2, variant="scorecam")
    with pytest.raises(JobCancelled):
        drive(job, on_progress=lambda p: cancel.cancel() if "Score-CAM: 5 of" in p.message else None)


def test_with_one_positive_gradient_per_channel_layercam_is_gradcam():
    from engine.attribution.maps import grad_cam

    generator = torch.Generator().manual_seed(0)
    activation = torch.rand(1, 6, 5, 5, generator=generator)
    gradient = torch.rand(1, 6, 1, 1, generator=generator).expand(1, 6, 5, 5)  # the same everywhere in a channel
    plain, _ = grad_cam(activation, gradient, (10, 10), "gradcam")
    layer, _ = grad_cam(activation, gradient, (10, 10), "layercam")
    torch.testing.assert_close(layer, plain)
    plus, _ = grad_cam(activation, gradient, (10, 10), "gradcam++")
    # Grad-CAM++ reweighs the channels (w_k = h w g_k / (2 + g_k sum A_k)): same kind of map, other weights
    assert not torch.allclose(plus / plus.max(), plain / plain.max())
    with pytest.raises(ValueError, match="unknown CAM variant"):
        grad_cam(activation, gradient, (10, 10), "eigencam")


def test_gradcam_of_a_layer_an_in_place_activation_follows_sees_its_own_values():
    # The fast copy's ReLU6 runs in place on the batch norm's output (an identity there):
    # Grad-CAM of "bn" must still weight the pre-activation maps, negative values included.
    torch.manual_seed(0)
    net = KeepsItsPreActivation()
    net.keep = False
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
    model = LoadedModel(name="bn", module=net.eval().requires_grad_(False), labels=[str(i) for i in range(5)],
                        preprocessing=make_tiny_model(size=12).preprocessing, weights="random")
    image = random_image((12, 12))
    result, _ = run("gradcam", MethodContext(model=model, image=image), layer="bn", target=3)
    x = unit_input(model, image)
    captum = LayerGradCam(Normalised(model), net.bn).attribute(x, target=3, relu_attributions=True)
    expected = LayerAttribution.interpolate(captum, (12, 12), interpolate_mode="bilinear")[0, 0].detach().numpy()
    assert float(net.bn(net.conv(x)).min()) < 0  # the maps Grad-CAM weights do go below zero
    np.testing.assert_allclose(result.array, expected, rtol=1e-4, atol=1e-6)


def test_gradcam_without_presets_uses_the_last_spatial_layer_the_score_depends_on():
    model, image = tiny()
    model.layer_presets = {}
    result, _ = run("gradcam", MethodContext(model=model, image=image), target=1)
    # The activated output of the last convolution (features.4, a ReLU), named by the block
    # that hands it on, as the paper takes it.
    assert result.layer == "features" and model.presets["late"] == "features"


def test_gradcam_refuses_layers_without_a_map_and_models_without_convolutions():
    model, image = tiny()
    ctx = MethodContext(model=model, image=image)
    with pytest.raises(MethodInputError, match="'classifier' outputs a 2-D tensor, not a C x H x W map"):
        run("gradcam", ctx, layer="classifier")
    with pytest.raises(MethodInputError, match="'pool' has a 1x1 map"):
        run("gradcam", ctx, layer="pool")
    mlp = LoadedModel(name="mlp", module=nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 5)).eval(),
                      preprocessing=model.preprocessing, labels=model.labels, weights="random")
    for method in ("gradcam", "guided-gradcam"):
        with pytest.raises(MethodInputError, match="no convolution layers or token grids, so it has no feature maps for Grad-CAM"):
            run(method, MethodContext(model=mlp, image=image))


def test_maps_that_would_be_blank_are_refused():
    model, image = tiny()
    with torch.no_grad():
        model.module.classifier.weight[0] = 0  # class 0's score no longer depends on the image
    ctx = MethodContext(model=model, image=image)
    with pytest.raises(MethodInputError, match="zero everywhere"):
        run("saliency", ctx, target=0)
    with pytest.raises(MethodInputError, match="Grad-CAM of 'class 0' at features.4 is zero everywhere"):
        run("gradcam", ctx, target=0)


# -- the shared display -------------------------------------------------------------------------
def test_signed_maps_get_a_symmetric_scale_and_magnitude_maps_start_at_zero():
    image = random_image((20, 10))
    values = np.linspace(-1, 3, 200, dtype=np.float32).reshape(10, 20)
    signed = map_display(image, values, signed=True, legend="", note="")
    top = float(np.percentile(np.abs(values), 99))
    assert signed.levels == (-top, top) and signed.colormap == "blue-white-red" and isinstance(signed, MapOverPhoto)
    magnitude = map_display(image, np.abs(values), signed=False, legend="", note="", overlay=False)
    assert magnitude.levels == (0.0, top) and isinstance(magnitude, ScalarMap)  # on its own, no photo
    shared = map_display(image, values / 10, signed=True, legend="", note="", top=top)
    assert shared.levels == signed.levels  # one scale for several maps: equal colours, equal values
    assert colour_top(np.zeros((3, 3))) == 1.0


# -- on the photo -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method, params, at_least", [
    ("smoothgrad", {"samples": 8}, 1.3),  # measured 1.56
    ("gradcam", {}, 1.4),  # measured 1.65
])
def test_maps_lie_on_the_cats_face(bundled, chelsea, method, params, at_least):
    result, _ = run(method, MethodContext(model=bundled, image=chelsea), **params)
    assert "cat" in result.target["label"] and result.array.shape == (224, 337)
    assert face_density_ratio(result.display) > at_least


def test_integrated_gradients_lie_on_the_cat(bundled, chelsea):
    # Integrated gradients from black spread over the whole cat (fur included), which fills
    # the photo; so, as saliency's test does, the cat is shrunk into a corner of a gray canvas.
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(chelsea.image.resize((200, 133)), (20, 30))
    result, _ = run("integrated-gradients", MethodContext(model=bundled, image=LoadedImage(canvas, path="corner.png")),
                    steps=8)
    assert "cat" in result.target["label"]
    weight = np.abs(overlay_map(result.display))
    inside = weight[30:163, 20:220].sum() / weight.sum()
    assert inside > 3 * (133 * 200) / (448 * 448)  # measured: 0.51 of the mass in 0.13 of the area


def face_density_ratio(display) -> float:
    """How much denser the map is on the cat's face (eyes, nose, cheeks) than elsewhere.

    The map as drawn over the photo (451 x 300); the face box covers x 100..360, y 50..300,
    48% of the photo: the cat fills most of the frame, so a map that ignored it would score
    about 1.
    """
    weight = np.abs(overlay_map(display)).astype(np.float64)
    assert weight.shape == (300, 451)
    inside = weight[50:300, 100:360].sum() / weight.sum()
    area = 250 * 260 / (300 * 451)
    return (inside / area) / ((1 - inside) / (1 - area))
