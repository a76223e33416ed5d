"""ReLUs applied as functions: made modules by torch.fx, so guided backprop and the DeconvNet reach them.

Each map of a model that calls F.relu & co. is checked against the same network written
with ReLU modules (the same weights), by our own rule and by Captum's.
"""

import copy
import threading

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import Deconvolution, GuidedBackprop
from torch import nn
from torch.nn import functional as F

from engine.anatomy.relus import functional_relu_calls, with_relu_modules
from engine.attribution.guided import guided_relus
from engine.core.errors import MethodInputError
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.models.labels import imagenet_labels
from engine.models.model import LoadedModel
from engine.models.preprocessing import Preprocessing
from engine.models.zoo import build_architecture
from tests.test_methods import random_image


def run(method, ctx, **params):
    return drive(METHODS[method].start(ctx, params))


def as_model(module, size, labels=5, mean=(0.0,) * 3, std=(1.0,) * 3):
    return LoadedModel(name="test", module=module.eval().requires_grad_(False),
                       preprocessing=Preprocessing(size=size, mean=mean, std=std),
                       labels=labels if isinstance(labels, list) else [f"class {i}" for i in range(labels)],
                       weights="random")


class Normalised(nn.Module):
    """The network on 0..1 pixels, as our methods see it: what Captum is given."""

    def __init__(self, module, preprocessing):
        super().__init__()
        self.net, self.preprocessing = module, preprocessing

    def forward(self, x):
        return self.net(self.preprocessing.normalise(x))


class EveryCall(nn.Module):
    """Convolutions with batch norms (folded in the fast copy) and a residual sum, then every
    way of applying a ReLU-like function: F.relu in place, torch.relu on a tensor the sum also
    reads, F.relu6, F.leaky_relu, F.hardtanh(0, 6) and Tensor.relu_; or, with ``as_modules``,
    the same units as ReLU modules (the same parameters, so one's weights load into the other)."""

    def __init__(self, as_modules: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.c4, self.c5, self.c6 = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(4))
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.fc.weight.abs_()  # some positive gradient reaches the last units, so the maps are not empty
            for norm in (self.n1, self.n2):
                norm.running_mean.uniform_(-0.2, 0.2)
                norm.running_var.uniform_(0.5, 2.0)
        self.as_modules = as_modules
        self.units = nn.ModuleList([nn.ReLU(inplace=True), nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2), nn.ReLU6(),
                                    nn.ReLU(inplace=True)]) if as_modules else None

    def forward(self, x):
        def unit(index, function, h):
            return self.units[index](h) if self.as_modules else function(h)

        h = unit(0, lambda t: F.relu(t, inplace=True), self.n1(self.c1(x)))
        z = self.n2(self.c2(h))
        h = unit(1, torch.relu, z) + z
        h = unit(2, F.relu6, self.c3(h))
        h = unit(3, lambda t: F.leaky_relu(t, 0.2), self.c4(h))
        h = unit(4, lambda t: F.hardtanh(t, 0.0, 6.0), self.c5(h))
        h = unit(5, lambda t: t.relu_(), self.c6(h))
        return self.fc(h.mean(dim=(2, 3)))


def functional_and_modules(size=12):
    functional, modules = EveryCall(), EveryCall(as_modules=True)
    modules.load_state_dict(functional.state_dict())
    return as_model(functional, size), as_model(modules, size)


# -- the maps ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_functional_relus_are_guided_as_their_modules_would_be(rule):
    functional, modules = functional_and_modules()
    image = random_image((12, 12))
    got = run("guided-backprop", MethodContext(model=functional, image=image), target=2, rule=rule)
    expected = run("guided-backprop", MethodContext(model=modules, image=image), target=2, rule=rule)
    assert expected.metrics["guided_units"] == got.metrics["guided_units"] == 6
    np.testing.assert_allclose(got.array, expected.array, rtol=1e-5, atol=1e-6 * expected.array.max())
    plain = run("saliency", MethodContext(model=functional, image=image), target=2)
    assert np.abs(got.array - plain.array).max() > 0.1 * plain.array.max()  # the rule changed the map
    assert f"{'guided' if rule == 'guided' else 'DeconvNet rule'} at 6 ReLU-like units (6 applied as functions, " \
           f"made modules)" in got.display.note
    # The model itself is left as it was: no hooks, no new modules, still its own code.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in functional.module.modules())
    assert [name for name, _ in functional.module.named_modules()] == [name for name, _ in EveryCall().named_modules()]
    assert type(functional.module) is EveryCall


def test_guided_gradcam_reaches_functional_relus_too():
    functional, modules = functional_and_modules()
    image = random_image((12, 12))
    got, expected = (run("guided-gradcam", MethodContext(model=model, image=image), target=2, layer="c4")
                     for model in (functional, modules))
    np.testing.assert_allclose(got.array, expected.array, rtol=1e-5, atol=1e-6 * expected.array.max())


def test_the_rewrite_shares_the_weights_and_keeps_every_path():
    functional, _ = functional_and_modules()
    sample = torch.rand(1, 3, 12, 12)
    calls = functional_relu_calls(copy.deepcopy(functional.module), sample)
    assert calls == {"": "EveryCall"}
    network, made = with_relu_modules(functional.module, calls, sample)
    assert made == 6 and type(network).__name__ == "EveryCallWithReLUModules"
    paths = dict(network.named_modules())
    for path, module in functional.module.named_modules():
        if path:
            assert type(paths[path]) is type(module)
    assert all(network.get_parameter(name) is parameter for name, parameter in functional.module.named_parameters())
    assert sum(isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)) for m in network.modules()) == 6


def test_the_network_with_relu_modules_is_made_once_per_network_and_weights(monkeypatch):
    from engine.anatomy import model_state

    made = []
    original = model_state.with_relu_modules
    monkeypatch.setattr(model_state, "with_relu_modules", lambda *args: made.append(args[0]) or original(*args))
    functional, _ = functional_and_modules()
    state, sample = functional.state, torch.rand(1, 3, 12, 12)
    network, count = state.relu_module_network(sample)
    assert state.relu_module_network(sample) == (network, count) and count == 6 and len(made) == 1
    fast_copy = state.gradient_network(sample)
    assert made == [fast_copy] and fast_copy is not functional.module  # made from the fast copy, its weights shared
    assert all(network.get_parameter(name) is p for name, p in fast_copy.named_parameters())
    # Read at a convolution whose norm the copy folded: made from the model itself, its weights shared.
    own, _ = state.relu_module_network(sample, layer="c1")
    assert own is not network and made[-1] is functional.module
    assert all(own.get_parameter(name) is p for name, p in functional.module.named_parameters())
    assert state.relu_module_network(sample, layer="c1")[0] is own and len(made) == 2
    with torch.no_grad():
        functional.module.c3.weight.mul_(2)  # new weights: a new fast copy, and a new network from it
    assert state.relu_module_network(sample)[0] is not network and len(made) == 3


# -- torchvision's GoogLeNet and DenseNet --------------------------------------------------------------
def basic_convs_as_modules(googlenet):
    """GoogLeNet with each BasicConv2d (conv, norm, F.relu) written as conv, norm, nn.ReLU."""
    twin = copy.deepcopy(googlenet)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "BasicConv2d":
                setattr(parent, name, nn.Sequential(child.conv, child.bn, nn.ReLU()))
    return twin


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    net = build_architecture("googlenet")  # as the zoo builds it: 1000 classes, transform_input, no aux heads
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return (as_model(net, 64, labels=imagenet_labels(), mean=mean, std=std),
            as_model(basic_convs_as_modules(net), 64, labels=imagenet_labels(), mean=mean, std=std))


@pytest.mark.parametrize("rule, reference", [("guided", GuidedBackprop), ("deconvnet", Deconvolution)])
def test_googlenet_agrees_with_captum_on_its_module_relu_twin(googlenet, rule, reference):
    model, with_modules = googlenet
    image = random_image((64, 64))
    x = model.preprocessing.to_unit_tensor(image.image)
    expected = reference(Normalised(with_modules.module, model.preprocessing)).attribute(x.clone(), target=3)
    # The rewrite alone, around the model's own layers, in Captum's layout: the same arithmetic.
    sample = model.preprocessing.normalise(x)
    network, made = with_relu_modules(model.module, dict(model.state.functional_relus(sample)), sample)
    pixels = x.clone().requires_grad_()
    with guided_relus(network, rule):
        got, = torch.autograd.grad(network(model.preprocessing.normalise(pixels))[:, 3].sum(), pixels)
    assert made == 57
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    # The method, through the fast copy (batch norms folded, weights channels-last): the same
    # function to float rounding, which flips the odd unit sitting at a ReLU's kink.
    result = run("guided-backprop", MethodContext(model=model, image=image), target=3, rule=rule)
    assert result.metrics["guided_units"] == 57
    expected_map = expected.abs().amax(dim=1)[0].numpy()
    difference = np.abs(result.array - expected_map) / expected_map.max()
    assert np.percentile(difference, 99) < 1e-3 and difference.max() < 1e-2
    plain = run("saliency", MethodContext(model=model, image=image), target=3).array
    assert np.abs(plain - expected_map).max() > 0.1 * expected_map.max()  # an unguided map is far off


def test_a_layer_inside_googlenet_keeps_its_name(googlenet):
    image = random_image((64, 64))
    # The strongest unit of inception4c, found by name in the rewritten network as in the hand-made one.
    got, expected = (run("guided-backprop", MethodContext(model=model, image=image), layer="inception4c")
                     for model in googlenet)
    assert got.layer == "inception4c" and got.metrics["unit"] == expected.metrics["unit"]
    np.testing.assert_allclose(got.array, expected.array, rtol=1e-3, atol=1e-4 * expected.array.max())
    # A convolution inside a rewritten BasicConv2d keeps its name too (its norm is folded: the model's own rewrite).
    inner = run("guided-backprop", MethodContext(model=googlenet[0], image=image), layer="inception4c.branch2.1.conv")
    assert inner.layer == "inception4c.branch2.1.conv" and inner.array.max() > 0


class DenseNetWithModules(torchvision.models.DenseNet):
    """torchvision's DenseNet, its forward's F.relu a module."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.final_relu = nn.ReLU()

    def forward(self, x):
        out = torch.flatten(F.adaptive_avg_pool2d(self.final_relu(self.features(x)), (1, 1)), 1)
        return self.classifier(out)


def test_densenet_is_rewritten_at_its_forward_and_keeps_its_blocks():
    settings = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, num_classes=5)
    torch.manual_seed(0)
    functional = torchvision.models.DenseNet(**settings)
    with_modules = DenseNetWithModules(**settings)
    with_modules.load_state_dict(functional.state_dict())
    models = as_model(functional, 32), as_model(with_modules, 32)
    image = random_image((32, 32))
    got, expected = (run("guided-gradcam", MethodContext(model=m, image=image), target=1, layer="features.denseblock3")
                     for m in models)
    assert got.layer == "features.denseblock3" and "(1 applied as functions, made modules)" in got.display.note
    np.testing.assert_allclose(got.array, expected.array, rtol=1e-4, atol=1e-5 * expected.array.max())


# -- what fx cannot trace ----------------------------------------------------------------------------------
class Branches(nn.Module):
    """Decides on a tensor's value in the same forward that calls F.relu: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 10:
            h = h * 0.5
        return self.fc(F.relu(h).mean(dim=(2, 3)))


class BranchesAround(nn.Module):
    """Decides on a tensor's value, but the F.relu is in a submodule's own code: only that is traced."""

    def __init__(self) -> None:
        super().__init__()
        self.block, self.fc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), nn.Linear(4, 5)
        self.act = Activation()

    def forward(self, x):
        h = self.block(x)
        if h.mean() > 10:
            h = h * 0.5
        return self.fc(self.act(h).mean(dim=(2, 3)))


class Activation(nn.Module):
    def forward(self, x):
        return F.relu(x)


def test_code_fx_cannot_trace_is_refused_with_its_reason():
    image = random_image((12, 12))
    with pytest.raises(MethodInputError, match=r"applies ReLU as a function \(F.relu\) inside '\(the model\)' "
                                               r"\(Branches\), and torch.fx could not rewrite that code .*: "
                                               r"symbolically traced variables cannot be used as inputs to control flow"
                                               r"\. Use a model whose ReLUs are modules .* or saliency / smoothgrad"):
        run("guided-backprop", MethodContext(model=as_model(Branches(), 12), image=image))
    result = run("guided-backprop", MethodContext(model=as_model(BranchesAround(), 12), image=image), target=1)
    assert result.metrics["guided_units"] == 1


class ByName(nn.Module):
    """Passes the ReLU's input by name: fx records the call, but not as one it can rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(input=self.conv(x)).mean(dim=(2, 3)))


def test_a_call_fx_records_but_cannot_rewrite_is_refused_not_left_unguided():
    with pytest.raises(MethodInputError, match=r"inside '\(the model\)' \(ByName\), .*: a ReLU call there could not be "
                                               r"made a module \(its input passed by name"):
        run("guided-backprop", MethodContext(model=as_model(ByName(), 12), image=random_image((12, 12))))


def test_other_threads_running_the_model_meanwhile_are_undisturbed(googlenet):
    """fx patches nn.Module for every thread while it traces; a forward elsewhere must not see it."""
    model, _ = googlenet
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.module(x)
    stop, outputs, errors = threading.Event(), [], []

    def keep_running():
        try:
            while not stop.is_set():
                with torch.no_grad():
                    outputs.append(model.module(x))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    worker = threading.Thread(target=keep_running)
    worker.start()
    try:
        calls = functional_relu_calls(copy.deepcopy(model.module), x)
        for _ in range(2):
            network, made = with_relu_modules(model.module, calls, x)
    finally:
        stop.set()
        worker.join()
    assert made == 57 and not errors and outputs
    assert all(torch.equal(output, expected) for output in outputs)
