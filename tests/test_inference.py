"""The fast copy: folding keeps the model's function and every layer's meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.data.extraction import layer_rows
from engine.models.preprocessing import Preprocessing
from engine.models.model import LoadedModel


class ConvNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


class ViewNet(ConvNormNet):
    """Flattens with .view(), which a channels-last map cannot do."""

    def forward(self, x):
        features = self.relu(self.norm(self.conv(x)))
        return self.head(features[:, :, :1, :1].contiguous().view(len(x), -1)) + features.view(len(x), -1)[:, :4]


def _randomise_statistics(*norms: nn.Module) -> None:
    """Statistics and affine weights far from 0/1, so a folded and an unfolded layer differ clearly."""
    with torch.no_grad():
        for norm in norms:
            norm.running_mean.uniform_(-2, 2)
            norm.running_var.uniform_(0.5, 4)
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)


def _trained(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    _randomise_statistics(net.norm)
    return net.eval()


def loaded(net: nn.Module, size: int = 12) -> LoadedModel:
    return LoadedModel(name="conv-norm", module=net, preprocessing=Preprocessing(size=size, mean=(0.0,) * 3, std=(1.0,) * 3),
                       labels=[str(i) for i in range(4)], weights="random")


@pytest.fixture
def net():
    return _trained(ConvNormNet())


def test_the_copy_folds_the_norm_into_the_conv_and_computes_the_same_function(net):
    x = torch.randn(2, 3, 12, 12)
    twin = loaded(net).state.fast_copy(x[:1])
    assert twin is not net and isinstance(twin.norm, nn.Identity) and isinstance(net.norm, nn.BatchNorm2d)
    with torch.inference_mode():
        assert torch.allclose(twin(x), net(x), atol=1e-5)
    assert twin.conv.weight.data_ptr() != net.conv.weight.data_ptr()  # the model's own weights are untouched
    assert twin.head.weight is net.head.weight  # what folding does not change is shared, not copied


def test_folded_weights_are_channels_last_unless_the_code_cannot_take_that_layout(net):
    # A channels-last map meeting an ordinary weight would reorder the weight on every call.
    twin = loaded(net).state.fast_copy(torch.randn(1, 3, 12, 12))
    assert twin.conv.weight.is_contiguous(memory_format=torch.channels_last) and not twin.conv.weight.is_contiguous()
    viewing = _trained(ViewNet())
    twin = loaded(viewing, size=8).state.fast_copy(torch.randn(1, 3, 8, 8))
    assert twin is not viewing and isinstance(twin.norm, nn.Identity)  # still folded, with ordinary weights
    assert twin.conv.weight.is_contiguous()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(twin(x), viewing(x), atol=1e-5)


def test_a_caller_reading_a_folded_conv_gets_the_model_itself(net):
    sample = torch.randn(1, 3, 12, 12)
    state = loaded(net).state
    assert state.fast_copy(sample, layer="conv") is net  # its output would be the norm's
    assert state.fast_copy(sample, layer="norm") is not net
    assert state.fast_copy(sample, layer="relu") is not net
    assert state.gradient_network(sample, layer="conv") is net
    assert state.gradient_network(sample) is state.fast_copy(sample)  # its backward works


@pytest.mark.parametrize("layer, reference", [
    ("conv", lambda net, x: net.conv(x)),
    ("norm", lambda net, x: net.norm(net.conv(x))),
    ("relu", lambda net, x: net.relu(net.norm(net.conv(x)))),
])
def test_extracted_rows_mean_the_layer_the_tree_names(net, layer, reference):
    model = loaded(net)
    x = torch.randn(3, 3, 12, 12)
    with torch.inference_mode():
        expected = reference(net, x).mean(dim=(2, 3)).numpy()
    assert np.allclose(layer_rows(model, layer, "avgpool", x), expected, atol=1e-5)


def test_a_model_that_cannot_take_channels_last_input_goes_back_to_the_ordinary_layout_for_good():
    net = _trained(ViewNet())
    state = loaded(net, size=8).state
    x = torch.randn(2, 3, 8, 8)
    assert state.in_fast_layout(x).is_contiguous(memory_format=torch.channels_last)
    calls = []

    def run(batch):
        calls.append(batch.is_contiguous(memory_format=torch.channels_last))
        return net(batch)

    with torch.inference_mode():
        expected = net(x)
        assert torch.allclose(state.run_in_fast_layout(run, x), expected)
        assert torch.allclose(state.run_in_fast_layout(run, x), expected)
    assert calls == [True, False, False]  # remembered: no second failing attempt
    assert state.in_fast_layout(x).is_contiguous() and not state.channels_last_works


def test_other_errors_are_not_taken_for_a_layout_problem(net):
    def broken(_x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    state = loaded(net).state
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        state.run_in_fast_layout(broken, torch.randn(1, 3, 8, 8))
    assert state.in_fast_layout(torch.randn(1, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("architecture", ["resnet18", "mobilenet_v3_large"])
def test_extraction_through_the_fast_copy_reads_every_layer_as_the_model_does(architecture):
    """Residual adds in place (ResNet), shared ReLUs, squeeze-excitation and Hardswish
    (MobileNetV3): whatever the copy folds or runs in place, each layer's rows stay the model's."""
    import torchvision

    from engine.data.extraction import summarise
    from engine.anatomy.hooks import forward_to

    torch.manual_seed(0)
    net = getattr(torchvision.models, architecture)(weights=None).eval()
    for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        with torch.no_grad():  # trained-looking statistics, so folding changes the weights
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
    model = LoadedModel(name=architecture, module=net, labels=[str(i) for i in range(1000)], weights="random",
                        preprocessing=Preprocessing(size=64, mean=(0.5,) * 3, std=(0.5,) * 3))
    x = torch.randn(2, 3, 64, 64)
    assert model.state.fast_copy(x[:1]) is not net  # the fast path is really taken
    layers = [name for name, _ in net.named_modules() if name][::5]
    for layer in layers:
        with torch.inference_mode():
            expected = summarise(forward_to(net, layer, x.clone()), "avgpool", layer)
        got = layer_rows(model, layer, "avgpool", x.clone())
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max()), layer


# -- patch convolutions ------------------------------------------------------------------------
@pytest.mark.parametrize("channels, patch, size, layout", [
    (3, (4, 4), (16, 16), torch.contiguous_format),
    (3, (4, 4), (16, 16), torch.channels_last),
    (1, (2, 3), (13, 17), torch.contiguous_format),  # the right and bottom edges are in no patch
    (4, (16, 16), (40, 33), torch.channels_last),
])
def test_a_patch_convolution_gives_the_convolution_s_output_and_input_gradient(channels, patch, size, layout):
    from engine.anatomy.fast_copy import PatchConv2d, cuts_pixels_into_patches

    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 6, patch, stride=patch).double()
    assert cuts_pixels_into_patches(conv)
    patches = PatchConv2d(channels, 6, patch, stride=patch).double()
    patches.load_state_dict(conv.state_dict())
    x = torch.randn(2, channels, *size, dtype=torch.float64).contiguous(memory_format=layout)
    upstream = torch.randn_like(conv(x))
    expected_x, got_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected, got = conv(expected_x), patches(got_x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the model's own convolution runs forward
    expected_gradient, = torch.autograd.grad(expected, expected_x, upstream)
    got_gradient, = torch.autograd.grad(got, got_x, upstream)
    torch.testing.assert_close(got_gradient, expected_gradient, rtol=1e-12, atol=1e-12)
    assert not got_gradient[..., size[0] // patch[0] * patch[0]:, :].any()  # rows no patch covered get no gradient
    assert not got_gradient[..., size[1] // patch[1] * patch[1]:].any()


@pytest.mark.parametrize("conv", [nn.Conv2d(40, 80, 2, stride=2), nn.Conv2d(3, 8, 4, stride=4, padding=1),
                                  nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 2, stride=2, groups=3)])
def test_only_a_convolution_tiling_an_image_s_few_channels_is_a_patch_convolution(conv):
    from engine.anatomy.fast_copy import cuts_pixels_into_patches

    assert not cuts_pixels_into_patches(conv)  # between stages, padded, overlapping, pointwise, grouped


class PatchNet(nn.Module):
    """A ViT-like stem (4x4 patches of the pixels), then 2x2 patches of 8 channels: no norm, no ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.act = nn.GELU()
        self.merge = nn.Conv2d(8, 16, 2, stride=2)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.merge(self.act(self.stem(x))).mean(dim=(2, 3)))


def test_the_fast_copy_of_a_patch_stem_takes_the_model_s_input_gradient():
    from engine.anatomy.fast_copy import PatchConv2d
    from engine.attribution.gradients import class_score, gradient_network, score_gradient

    torch.manual_seed(0)
    net = PatchNet().eval()
    model = loaded(net, size=24)
    assert model.state.could_speed_up  # the patch stem alone is worth a copy
    unit = torch.rand(2, 3, 24, 36)
    network = gradient_network(model, unit)
    assert network is not net and type(network.stem) is PatchConv2d and type(network.merge) is nn.Conv2d
    assert type(net.stem) is nn.Conv2d  # the model keeps its own
    assert network.stem.weight is net.stem.weight  # the weights are shared, not copied
    got, _ = score_gradient(model, unit, class_score(2), network)
    expected, _ = score_gradient(model, unit, class_score(2), net)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


class LinearNormNet(nn.Module):
    """Tokens through LeViT's LinearNorm (a linear, then a 1-D batch norm of its output
    features over every token), and a norm of a linear's output along the wrong dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 3, stride=3)
        self.linear = nn.Linear(6, 8, bias=False)
        self.norm = nn.BatchNorm1d(8)
        self.mixing = nn.Linear(6, 5)
        self.across = nn.BatchNorm1d(4)  # over (batch, tokens=4, features): dimension 1 is the tokens
        self.head = nn.Linear(8 + 5, 4)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # batch x 4 x 6
        features = self.linear(tokens)
        features = self.norm(features.flatten(0, 1)).reshape_as(features)
        mixed = self.across(self.mixing(tokens))
        return self.head(torch.cat([features, mixed], dim=2).mean(dim=1))


def test_a_linear_s_batch_norm_over_its_features_is_folded_into_it():
    torch.manual_seed(0)
    net = LinearNormNet()
    _randomise_statistics(net.norm, net.across)
    net.eval()
    x = torch.randn(3, 3, 6, 6)
    model = loaded(net, size=6)
    twin = model.state.fast_copy(x[:1])
    assert isinstance(twin.norm, nn.Identity) and twin.linear.bias is not None  # the norm's shift is the new bias
    assert isinstance(twin.across, nn.BatchNorm1d)  # it normalises the tokens, not the linear's features
    assert model.state.fast_copy(x[:1], layer="linear") is net  # its output would be the norm's
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), net(x), rtol=0, atol=1e-5)


class NormActNet(nn.Module):
    """timm's ConvNormAct shape: a convolution, then a BatchNormAct2d (the norm, then its activation)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = norm
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean(dim=(2, 3)))


def _with_statistics(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    _randomise_statistics(net.bn)
    return net.eval()


def test_timm_s_norm_with_its_activation_is_folded_and_its_activation_kept():
    from timm.layers import BatchNormAct2d

    net = _with_statistics(NormActNet(BatchNormAct2d(6, act_layer=nn.ReLU)))
    x = torch.randn(2, 3, 12, 12)
    model = loaded(net)
    twin = model.state.fast_copy(x[:1])
    assert twin is not net and isinstance(twin.bn.act, nn.ReLU) and not isinstance(twin.bn, nn.BatchNorm2d)
    assert model.state.fast_copy(x[:1], layer="bn.act") is twin  # the activation's path still names it
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), net(x), rtol=0, atol=1e-5)
        assert (net.bn(net.conv(x)) >= 0).all() and (net.bn(net.conv(x)) == 0).any()  # the ReLU mattered


class ScaledNorm(nn.BatchNorm2d):
    """A batch norm whose forward does more than normalise: not folded, whatever its class says."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_a_batch_norm_subclass_of_unknown_forward_is_not_folded():
    net = _with_statistics(NormActNet(ScaledNorm(6)))
    twin = loaded(net).state.fast_copy(torch.randn(1, 3, 12, 12))
    assert twin is net or isinstance(twin.bn, ScaledNorm)
