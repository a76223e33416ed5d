"""ConvNeXt-V2's global response norm by one scale a channel: timm's function and input
gradient, in both layouts, and in the fast copy of a ConvNeXt-V2."""

from __future__ import annotations

import pytest
import torch

from engine.anatomy.response_norm import is_response_norm, response_norm_by_scale
from engine.attribution.gradients import class_score, gradient_network, score_gradient
from tests.test_vision_transformers import timm_model

grn = pytest.importorskip("timm.layers.grn")


def _norms(channels_last: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    model = grn.GlobalResponseNorm(6, channels_last=channels_last).double()
    with torch.no_grad():
        model.weight.normal_()
        model.bias.normal_()
    twin = grn.GlobalResponseNorm(6, channels_last=channels_last).double()
    twin.load_state_dict(model.state_dict())
    response_norm_by_scale(twin)
    return model, twin


@pytest.mark.parametrize("channels_last", [True, False])
def test_by_scale_the_norm_is_timm_s_function_and_input_gradient(channels_last):
    model, twin = _norms(channels_last)
    assert is_response_norm(model) and not is_response_norm(twin) and isinstance(twin, grn.GlobalResponseNorm)
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64) if channels_last else torch.randn(2, 6, 5, 7, dtype=torch.float64)
    zero = (slice(None), slice(None), slice(None), 2) if channels_last else (slice(None), 2)
    x[0][zero[1:]] = 0  # a channel of the first image is zero everywhere: its norm is 0
    upstream = torch.randn_like(x)
    results = []
    for norm in (model, twin):
        inputs = x.clone().requires_grad_(True)
        out = norm(inputs)
        results.append((out, *torch.autograd.grad(out, inputs, upstream)))
    (expected, expected_grad), (got, grad) = results
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_the_gradient_by_scale_is_the_finite_difference_of_the_norm():
    _, twin = _norms(channels_last=True)
    x = torch.randn(1, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(twin, (x,))


def test_a_convnext_v2_s_fast_copy_takes_its_norms_by_scale_and_the_model_s_gradient():
    model = timm_model("convnextv2_atto")
    with torch.no_grad():  # timm starts the norms at zero weight and bias, where they pass their input on
        for part in model.module.modules():
            if is_response_norm(part):
                part.weight.normal_()
                part.bias.normal_()
    unit = torch.rand(2, 3, 64, 96)
    network = gradient_network(model, unit)
    norms = [part for part in network.modules() if type(part).__name__ == "ResponseNormByScale"]
    assert network is not model.module and len(norms) == 12  # atto: 2 + 2 + 6 + 2 blocks
    assert sum(is_response_norm(part) for part in model.module.modules()) == 12  # the model keeps its own
    got, _ = score_gradient(model, unit, class_score(3), network)
    expected, _ = score_gradient(model, unit, class_score(3), model.module)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
