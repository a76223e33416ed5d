"""A linear layer over many positions as a 1x1 convolution: the same output and input
gradient, taken only for big products, in the fast copy only for per-position linears."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.anatomy import fast_copy, linear_as_convolution
from engine.anatomy.linear_as_convolution import LinearAsConvolution, takes_convolution
from engine.models.model import LoadedModel
from engine.models.preprocessing import Preprocessing


def _as_convolution(linear: nn.Linear) -> LinearAsConvolution:
    twin = LinearAsConvolution(linear.in_features, linear.out_features, bias=linear.bias is not None)
    twin.load_state_dict(linear.state_dict())
    return twin


def _output_and_input_gradient(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    inputs = x.detach().requires_grad_(True)
    out = layer(inputs)
    grad, = torch.autograd.grad(out, inputs, upstream)
    return out, grad


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])  # Mixer's token mixing reads its input transposed
def test_a_big_product_as_a_convolution_is_the_linear_s_output_and_input_gradient(monkeypatch, bias, transposed):
    torch.manual_seed(0)
    linear = nn.Linear(96, 2400, bias=bias)
    x = torch.randn(3, 96, 100).transpose(1, 2) if transposed else torch.randn(3, 100, 96)  # 300 rows
    twin = _as_convolution(linear)
    assert takes_convolution(x, twin)  # 300 x 96 x 2400 products: past both limits
    convolved = []
    real = linear_as_convolution.linear_by_convolution
    monkeypatch.setattr(linear_as_convolution, "linear_by_convolution", lambda *a: convolved.append(1) or real(*a))
    upstream = torch.randn(3, 100, 2400)
    out, grad = _output_and_input_gradient(twin, x, upstream)
    expected_out, expected_grad = _output_and_input_gradient(linear, x, upstream)
    assert convolved == [1]
    assert out.shape == expected_out.shape and out.is_contiguous()  # laid out as F.linear lays it out
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape, dtype", [((2, 100, 96), torch.float32),  # too few rows
                                          ((300, 96), torch.float64)])  # the convolution only for float32
def test_a_small_product_or_a_double_runs_the_linear_itself(monkeypatch, shape, dtype):
    torch.manual_seed(0)
    linear = nn.Linear(96, 2400).to(dtype)
    twin = _as_convolution(linear).to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    monkeypatch.setattr(linear_as_convolution, "linear_by_convolution", lambda *a: pytest.fail("took the convolution"))
    assert torch.equal(twin(x), linear(x))


@pytest.mark.parametrize("vendor, onednn, mkl, expected", [
    ("AuthenticAMD", True, True, True),  # MKL off its fastest paths, oneDNN on them
    ("GenuineIntel", True, True, False),
    ("", True, True, False),  # unknown: the matrix products stay
    ("AuthenticAMD", False, True, False),  # no oneDNN: the convolutions would be slower still
    ("AuthenticAMD", True, False, False),  # another BLAS
])
def test_convolutions_are_taken_for_mkl_on_a_processor_not_intel_s(monkeypatch, vendor, onednn, mkl, expected):
    monkeypatch.setattr(linear_as_convolution, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    assert linear_as_convolution.convolution_outpaces_matmul() is expected


@pytest.fixture
def fresh_vendor():
    linear_as_convolution.cpu_vendor.cache_clear()
    yield
    linear_as_convolution.cpu_vendor.cache_clear()


def test_the_processor_s_maker_is_read_from_linux_s_cpuinfo(monkeypatch, tmp_path, fresh_vendor):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\nprocessor\t: 1\n"
                    "vendor_id\t: AuthenticAMD\n")
    monkeypatch.setattr(linear_as_convolution, "CPUINFO", str(info))
    assert linear_as_convolution.cpu_vendor() == "AuthenticAMD"


@pytest.mark.parametrize("processor, vendor", [("AMD64 Family 25 Model 1 Stepping 1, AuthenticAMD", "AuthenticAMD"),
                                               ("Intel64 Family 6 Model 85 Stepping 7, GenuineIntel", "GenuineIntel"),
                                               ("arm", "")])
def test_without_cpuinfo_the_maker_is_read_from_the_processor_s_name(monkeypatch, tmp_path, fresh_vendor, processor,
                                                                      vendor):
    monkeypatch.setattr(linear_as_convolution, "CPUINFO", str(tmp_path / "absent"))
    monkeypatch.setattr(linear_as_convolution.platform, "processor", lambda: processor)  # as Windows names it
    assert linear_as_convolution.cpu_vendor() == vendor


class TokenNet(nn.Module):
    """Patches to tokens, an MLP over every token, then a head over their mean."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 4, stride=4, padding=1)
        self.mlp = nn.Sequential(nn.Linear(64, 1536), nn.GELU(), nn.Linear(1536, 64))
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head((tokens + self.mlp(tokens)).mean(dim=1))


def _token_model() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(name="tokens", module=TokenNet().eval(),
                       preprocessing=Preprocessing(size=64, mean=(0.0,) * 3, std=(1.0,) * 3),
                       labels=[str(i) for i in range(4)], weights="random")


def test_where_convolutions_are_faster_the_fast_copy_runs_the_token_linears_as_convolutions(monkeypatch):
    from engine.attribution.gradients import class_score, gradient_network, score_gradient

    monkeypatch.setattr(fast_copy, "convolution_outpaces_matmul", lambda: True)
    model = _token_model()
    net = model.module
    assert model.state.could_speed_up  # its linears alone are worth a copy
    unit = torch.rand(4, 3, 64, 64)  # 1,024 tokens: products past both limits
    network = gradient_network(model, unit)
    assert network is not net
    assert [type(layer) for layer in network.mlp if isinstance(layer, nn.Linear)] == [LinearAsConvolution] * 2
    assert type(network.head) is nn.Linear  # one row an image: the head stays
    assert type(net.mlp[0]) is nn.Linear and network.mlp[0].weight is net.mlp[0].weight  # the model's own, shared weights
    convolved = []
    real = linear_as_convolution.linear_by_convolution
    monkeypatch.setattr(linear_as_convolution, "linear_by_convolution", lambda *a: convolved.append(1) or real(*a))
    got, _ = score_gradient(model, unit, class_score(1), network)
    assert len(convolved) == 2
    expected, _ = score_gradient(model, unit, class_score(1), net)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_where_matrix_products_are_faster_the_linears_stay(monkeypatch):
    monkeypatch.setattr(fast_copy, "convolution_outpaces_matmul", lambda: False)
    model = _token_model()
    assert not model.state.could_speed_up  # GELU, a padded stem, linears: nothing a copy would change
    assert model.state.fast_copy(torch.rand(1, 3, 64, 64)) is model.module
