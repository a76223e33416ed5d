"""Guided backprop: the ReLU rule, Captum's GuidedBackprop, one neuron's map, and the models it refuses."""

import copy

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop, GuidedGradCam
from torch import nn
from torch.nn import functional as F

from engine.core.errors import MethodInputError
from engine.attribution.gradients import class_score, score_gradient
from engine.attribution.guided import guided_network, guided_relus
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.models.preprocessing import Preprocessing
from engine.models.model import LoadedModel
from engine.view.display import Picture
from tests.conftest import make_tiny_model
from tests.test_attribution import Normalised, face_density_ratio, tiny, unit_input
from tests.test_methods import random_image


def run(method, ctx, **params):
    spec = METHODS[method]
    return drive(spec.start(ctx, params))


def guided_gradient(model, pixels, target, rule="guided"):
    """As the method takes it: through the model's copy with batch norms folded into the
    convolutions, its ReLU function calls made modules."""
    network, functional = guided_network(model, pixels)
    with guided_relus(network, rule, functional):
        return score_gradient(model, pixels, class_score(target), network)[0]


def wrap(module, size, labels=5):
    module = module.eval().requires_grad_(False)
    return as_model(module, size, labels)


def as_model(module, size=8, labels=5):
    """A LoadedModel around ``module`` as it is (its flags and gradients untouched)."""
    return LoadedModel(name="test", module=module, preprocessing=Preprocessing(size=size, mean=(0.0,) * 3, std=(1.0,) * 3),
                       labels=[f"class {i}" for i in range(labels)], weights="random")


# -- the rule -----------------------------------------------------------------------------------
class Hinge(nn.Module):
    """sum(w * act(x)): the gradient arriving at the activation's output is w."""

    def __init__(self, act, weights):
        super().__init__()
        self.act = act
        self.register_buffer("w", weights)

    def forward(self, x):
        return (self.act(x * 1.0) * self.w).flatten(1).sum(dim=1)  # x * 1.0: an in-place act must not touch the leaf


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6(), nn.ReLU6(inplace=True),
                                 nn.LeakyReLU(0.1), nn.LeakyReLU(0.1, inplace=True)], ids=repr)
def test_a_relu_like_unit_passes_back_only_positive_gradient_where_its_input_was_positive(act):
    torch.manual_seed(0)
    x = torch.tensor([-2.0, -0.5, 0.5, 3.0, 7.0]).repeat(4).view(1, 1, 4, 5)
    w = torch.randn(1, 1, 4, 5)
    module = Hinge(act, w)
    with guided_relus(module):
        pixels = x.clone().requires_grad_()
        guided, = torch.autograd.grad(module(pixels).sum(), pixels)
    # zero where the input was <= 0 or the incoming gradient w was negative; ReLU6 also above 6
    passes = (x > 0) & (w > 0) & ((x < 6) if isinstance(act, nn.ReLU6) else True)
    torch.testing.assert_close(guided, torch.where(passes, w, torch.zeros_like(w)))
    assert (passes.sum() > 0) and (~passes & (x > 0)).any()  # the sign of w mattered somewhere
    # Leaving the block restores the ordinary gradient (hooks removed).
    pixels = x.clone().requires_grad_()
    plain, = torch.autograd.grad(module(pixels).sum(), pixels)
    expected_plain = w * {nn.ReLU: (x > 0).float(), nn.ReLU6: ((x > 0) & (x < 6)).float(),
                          nn.LeakyReLU: torch.where(x > 0, 1.0, 0.1)}[type(act)]
    torch.testing.assert_close(plain, expected_plain)


def chain(inplace):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU6(inplace), nn.Conv2d(4, 4, 3, padding=1), nn.LeakyReLU(0.2, inplace),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():
        net[-1].weight.abs_()  # some positive gradient reaches the last units, so the map is not empty
    return net


def test_in_place_units_are_guided_like_the_others():
    # A module backward hook cannot wrap an in-place unit's output; the tensor hooks can.
    x = torch.rand(1, 3, 10, 10)
    maps = [guided_gradient(wrap(chain(inplace), 10), x, 2) for inplace in (False, True)]
    torch.testing.assert_close(maps[0], maps[1])
    assert float(maps[0].abs().sum()) > 0


# -- the DeconvNet rule ---------------------------------------------------------------------------
class DeconvUnit(torch.autograd.Function):
    """The DeconvNet's unit written out: the activation forward, relu(g) backward."""

    @staticmethod
    def forward(ctx, x, activation):
        return activation(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0), None


class Residual(nn.Module):
    """conv, ReLU, conv, ReLU6 whose input also feeds a residual sum, conv, LeakyReLU, head."""

    def __init__(self, inplace: bool, reference: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace)
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(inplace)
        self.c3, self.a3 = nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.1, inplace)
        self.fc = nn.Linear(8, 5)
        self.reference = reference
        self.inplace = inplace

    def unit(self, module, x):
        if not self.reference:
            return module(x)
        activation = {nn.ReLU: torch.relu, nn.ReLU6: lambda t: t.clamp(0, 6),
                      nn.LeakyReLU: lambda t: F.leaky_relu(t, 0.1)}[type(module)]
        return DeconvUnit.apply(x, activation)

    def forward(self, x):
        z = self.c2(self.unit(self.a1, self.c1(x))) * 3
        # Shared: the unit's input is also the residual; an in-place unit would change it, so it gets a copy.
        h = self.unit(self.a2, z * 1 if self.inplace else z) + z
        return self.fc(self.unit(self.a3, self.c3(h)).mean(dim=(2, 3)))


@pytest.mark.parametrize("inplace", [False, True])
def test_the_deconvnet_rule_sends_back_the_positive_gradient_wherever_it_arrives(inplace):
    x = torch.randn(2, 3, 8, 8)
    reference = Residual(False, reference=True)
    pixels = x.clone().requires_grad_()
    expected, = torch.autograd.grad(reference(pixels)[:, 1].sum(), pixels)
    net = Residual(inplace).eval()
    net.load_state_dict(reference.state_dict())
    pixels = x.clone().requires_grad_()
    with guided_relus(net, rule="deconvnet") as guide:
        got, = torch.autograd.grad(net(pixels)[:, 1].sum(), pixels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)
    assert "DeconvNet rule at 3" in guide.note
    pixels = x.clone().requires_grad_()
    with guided_relus(net):  # the guided rule gives another map
        guided, = torch.autograd.grad(net(pixels)[:, 1].sum(), pixels)
    assert not torch.allclose(guided, expected)


def test_deconvnet_maps_agree_with_captum_on_the_tiny_model():
    from captum.attr import Deconvolution

    model, image = tiny()
    expected = Deconvolution(Normalised(model)).attribute(unit_input(model, image), target=3)
    result = run("guided-backprop", MethodContext(model=model, image=image), target=3, rule="deconvnet")
    np.testing.assert_allclose(result.array, expected.abs().amax(dim=1)[0].numpy(), rtol=1e-5, atol=1e-7)
    guided = run("guided-backprop", MethodContext(model=model, image=image), target=3)
    assert not np.allclose(result.array, guided.array) and result.params["rule"] == "deconvnet"
    assert "DeconvNet" in result.display.legend


# -- against Captum ------------------------------------------------------------------------------
def test_guided_backprop_agrees_with_captum_on_the_tiny_model():
    model, image = tiny()
    x = unit_input(model, image)
    expected = GuidedBackprop(Normalised(model)).attribute(x.clone(), target=3)
    torch.testing.assert_close(guided_gradient(model, x, 3), expected, rtol=1e-5, atol=1e-7)
    result = run("guided-backprop", MethodContext(model=model, image=image), target=3)
    np.testing.assert_allclose(result.array, expected.abs().amax(dim=1)[0].numpy(), rtol=1e-5, atol=1e-7)


def test_guided_backprop_agrees_with_captum_on_resnet18():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)  # in-place ReLUs, one module called twice per block
    model = wrap(net, 32, labels=10)
    x = torch.rand(1, 3, 32, 32)
    reference = copy.deepcopy(net)
    for module in reference.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False  # Captum's module backward hooks cannot take in-place ReLUs
    expected = GuidedBackprop(reference).attribute(x.clone(), target=7)
    torch.testing.assert_close(guided_gradient(model, x, 7), expected, rtol=1e-4, atol=1e-6)


def test_on_the_bundled_model_relu6_is_guided_where_captum_only_sees_relu(bundled):
    x = torch.rand(1, 3, 48, 48)
    normalised = Normalised(bundled)
    plain = score_gradient(bundled, x, class_score(281))[0]
    ours = guided_gradient(bundled, x, 281)
    # Captum hooks nn.ReLU only: on ReLU6 it silently returns the plain gradient.
    torch.testing.assert_close(GuidedBackprop(normalised).attribute(x.clone(), target=281), plain, rtol=1e-4, atol=1e-6)
    assert float((ours - plain).abs().max()) > 0.1 * float(plain.abs().max())
    # With every ReLU6 swapped for nn.ReLU, both guide the same units the same way.
    swapped = copy.deepcopy(bundled.module)
    for parent in swapped.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    swapped_model = LoadedModel(name="relu", module=swapped, preprocessing=bundled.preprocessing, labels=bundled.labels,
                                weights="")
    expected = GuidedBackprop(Normalised(swapped_model)).attribute(x.clone(), target=281)
    torch.testing.assert_close(guided_gradient(swapped_model, x, 281), expected, rtol=1e-4, atol=1e-6)


def test_guided_gradcam_agrees_with_captum():
    model, image = tiny()
    result = run("guided-gradcam", MethodContext(model=model, image=image), target=2)
    assert result.layer == "features.4"
    expected = GuidedGradCam(Normalised(model), model.module.features[4]).attribute(
        unit_input(model, image), target=2, interpolate_mode="bilinear")
    np.testing.assert_allclose(result.array, expected.abs().amax(dim=1)[0].detach().numpy(), rtol=1e-5, atol=1e-7)


# -- one neuron ------------------------------------------------------------------------------------
LAYER = "stages.3.2.expand_relu6"  # the bundled model's "middle": a 14 x 22 map on the 224 x 337 input


def test_a_neurons_map_lies_in_its_receptive_field_and_differs_between_neurons(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    activation = ctx.image_features().activations[LAYER][0, 5]
    peak = divmod(int(activation.argmax()), activation.shape[1])
    first = run("guided-backprop", ctx, layer="middle", channel=5)
    assert first.layer == LAYER and first.target is None
    assert first.metrics["unit"]["at"] == list(peak)  # no --at: where the channel is largest
    assert first.metrics["unit"]["value"] == pytest.approx(float(activation.max()))
    top, left, bottom, right = first.metrics["receptive_field"]
    inside = np.zeros(first.array.shape, dtype=bool)
    inside[max(0, int(np.floor(top))):int(np.ceil(bottom)), max(0, int(np.floor(left))):int(np.ceil(right))] = True
    assert first.array[inside].sum() > 0 and first.array[~inside].max() == 0.0
    assert inside.mean() < 0.2  # a middle layer's unit sees a part of the image (115 px square), not all of it
    # The box is drawn over the photo, scaled from model-input pixels to the photo's.
    sy, sx = chelsea.size[1] / 224, chelsea.size[0] / 337
    assert first.display.boxes[0] == pytest.approx((top * sy, left * sx, bottom * sy, right * sx))

    y, x = peak
    away = activation.clone()
    away[max(0, y - 4):y + 5, max(0, x - 4):x + 5] = 0  # the strongest response at least 5 cells away
    far = divmod(int(away.argmax()), away.shape[1])
    elsewhere = run("guided-backprop", ctx, layer="middle", channel=5, at=f"{far[0]},{far[1]}")
    other_channel = run("guided-backprop", ctx, layer="middle", channel=40, at=f"{y},{x}")
    for other in (elsewhere, other_channel):
        assert np.abs(other.array - first.array).max() > 0.5 * first.array.max()


def test_neuron_choices_are_checked(bundled, chelsea):
    ctx = MethodContext(model=bundled, image=chelsea)
    cases = [
        ({"layer": "middle", "channel": 5, "at": "14,0"},
         r"--at 14,0 is outside stages.3.2.expand_relu6's 14x22 map: rows 0-13, columns 0-21"),
        ({"layer": "middle", "channel": 5, "at": "three"}, "--at takes a row and a column"),
        ({"layer": "middle", "channel": 999}, "--channel must be between 0 and 479"),
        ({"channel": 5}, "give --layer too"),
        ({"layer": "middle", "at": "1,2"}, "give --channel too"),
    ]
    for params, message in cases:
        with pytest.raises(MethodInputError, match=message):
            run("guided-backprop", ctx, **params)
    # A unit that is off (ReLU6 output 0) passes no gradient back: said, not drawn blank.
    activation = ctx.image_features().activations[LAYER][0, 5]
    y, x = (int(v) for v in torch.nonzero(activation == 0)[0])
    with pytest.raises(MethodInputError, match="passes no gradient back"):
        run("guided-backprop", ctx, layer="middle", channel=5, at=f"{y},{x}")


@pytest.mark.parametrize("method, at_least", [("guided-backprop", 2.0), ("guided-gradcam", 2.5)])  # measured 2.6, 3.5
def test_class_maps_lie_on_the_cats_face(bundled, chelsea, method, at_least):
    result = run(method, MethodContext(model=bundled, image=chelsea))
    assert "cat" in result.target["label"] and result.metrics["guided_units"] == 33
    assert face_density_ratio(result.display) > at_least


def test_the_rgb_view_shows_the_gradient_itself(bundled, chelsea):
    result = run("guided-backprop", MethodContext(model=bundled, image=chelsea), show="rgb")
    picture = result.display.rgb
    assert picture.shape == (224, 337, 3) and isinstance(result.display, Picture)
    assert abs(float(np.median(picture)) - 127.5) < 3  # most of the gradient is near 0: mid-gray
    assert picture.std() > 5


# -- models it cannot guide ----------------------------------------------------------------------------
def test_models_without_relus_are_refused_and_other_activations_are_named():
    image = random_image((16, 16))
    smooth = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(4, 5))
    with pytest.raises(MethodInputError, match=r"needs ReLU-like activations .* none \(it uses GELU, SiLU\)"):
        run("guided-backprop", MethodContext(model=wrap(smooth, 16), image=image))
    mixed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Hardswish(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5))
    result = run("guided-backprop", MethodContext(model=wrap(mixed, 16), image=image))
    assert "guided at 1 ReLU-like unit; 1 Hardswish (not ReLU-like) pass ordinary gradients" in result.display.note
    tiny_model = make_tiny_model(size=16)
    tiny_model.module = torch.jit.script(tiny_model.module)
    with pytest.raises(MethodInputError, match="compiled TorchScript model: guided backprop cannot"):
        run("guided-backprop", MethodContext(model=tiny_model, image=image))


class PositiveGradient(torch.autograd.Function):
    """The identity forward; backward, only the positive part of the gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


class ThenPositive(nn.Module):
    def forward(self, x):
        return PositiveGradient.apply(x)


def guided_by_hand(net, kinds):
    """A copy of ``net`` whose units of ``kinds`` are followed by PositiveGradient: for a ReLU,
    relu(g) where the input was positive, which is the guided rule written out."""
    twin = copy.deepcopy(net)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                setattr(parent, name, nn.Sequential(child, ThenPositive()))
    return twin


def test_hardswish_and_hardsigmoid_units_keep_their_ordinary_gradient_on_mobilenet_v3():
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10)  # ReLU, Hardswish, Hardsigmoid (SE)
    model = wrap(net, 64, labels=10)
    x = torch.rand(1, 3, 64, 64)

    def gradient(module):
        pixels = x.clone().requires_grad_()
        return torch.autograd.grad(module(pixels)[:, 4].sum(), pixels)[0]

    ours = guided_gradient(model, x, 4)
    expected = gradient(guided_by_hand(net, nn.ReLU))  # only the ReLUs guided
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * scale)
    # Guiding the Hardswish units as well, or nothing, would give other maps: the test tells them apart.
    for other in (gradient(guided_by_hand(net, (nn.ReLU, nn.Hardswish))), gradient(net)):
        assert float((other - expected).abs().max()) > 0.05 * scale
    result = run("guided-backprop", MethodContext(model=model, image=random_image((64, 64))), target=4)
    relus, hardswish, hardsigmoid = (sum(isinstance(m, kind) for m in net.modules())
                                     for kind in (nn.ReLU, nn.Hardswish, nn.Hardsigmoid))
    assert result.metrics["guided_units"] == relus
    assert f"guided at {relus} ReLU-like units; {hardsigmoid} Hardsigmoid, {hardswish} Hardswish (not ReLU-like) pass " \
           f"ordinary gradients" in result.display.note


def test_hooks_are_removed_when_the_block_fails():
    model, _ = tiny()
    with pytest.raises(RuntimeError, match="boom"):
        with guided_relus(model.module):
            raise RuntimeError("boom")
    assert not any(module._forward_hooks for module in model.module.modules())


def test_a_neuron_on_a_small_photo_exports_with_its_sub_pixel_receptive_box(capsys, tmp_path):
    """A 96 x 64 photo at stem.conv: the unit's 3 px field is under a pixel of the photo, and still marked."""
    from PIL import Image

    from engine.app.cli import main
    from engine.view.gallery import BOX

    photo, out = tmp_path / "small.png", tmp_path / "unit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(photo)
    code = main(["run", "guided-backprop", "--image", str(photo), "--layer", "stem.conv", "--channel", "0",
                 "--at", "1,1", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 64  # the picture at the top left, the caption strip under it
    picture = picture[:64, :96]
    assert tuple(picture[0, 0]) == BOX
