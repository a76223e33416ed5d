"""The network after a layer (engine.anatomy.tail), and Grad-CAM from the photo's kept outputs through it."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from engine.anatomy.hooks import capture_outputs
from engine.anatomy.tail import layer_tail
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.models.model import LoadedModel
from engine.models.preprocessing import Preprocessing
from tests.test_methods import random_image


def outputs_of(module: nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    with torch.no_grad(), capture_outputs(module) as captured:
        logits = module(x)
    return dict(captured), logits


@pytest.mark.parametrize("name, path", [("resnet18", "layer4"), ("vgg11", "features.19"),
                                        ("googlenet", "inception5b"), ("mobilenet_v3_small", "features.12")])
def test_the_tail_turns_the_layer_s_output_into_the_network_s(name, path):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    network = getattr(torchvision.models, name)(weights=None, num_classes=7, **kwargs).eval()
    x = torch.randn(2, 3, 64, 64)
    captured, logits = outputs_of(network, x)
    tail = layer_tail(network, path)
    assert tail is not None
    with torch.no_grad():
        torch.testing.assert_close(tail(captured[path]), logits, rtol=0, atol=1e-6)
    assert tail.get_submodule("fc" if hasattr(network, "fc") else "classifier") is not None  # the model's own modules


class Skip(nn.Module):
    """The stem's output is added back after the body layer: no cut there."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        stem = self.stem(x)
        return self.head(self.body(stem) + stem)


class Branchy(nn.Module):
    """Python control flow inside a block before the layer, and a layer called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(3, 4, 3, padding=1)
        self.twice = nn.ReLU()
        self.last = nn.Conv2d(4, 4, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        if float(x.mean()) > 10:  # data-dependent: fx cannot trace it, but it is not on the way to the cut
            x = x * 0
        return self.head(self.last(self.twice(self.twice(self.block_call(x)))))

    def block_call(self, x):
        return self.block(x)


def test_no_tail_across_a_skip_or_at_a_layer_called_twice():
    assert layer_tail(Skip().eval(), "body") is None
    assert layer_tail(Skip().eval(), "head") is not None  # after the addition, nothing crosses
    branchy = Branchy().eval()
    assert layer_tail(branchy, "twice") is None
    assert layer_tail(branchy, "block") is None  # the model's own forward branches on data: it does not trace


def loaded(module: nn.Module, size: int = 48) -> LoadedModel:
    return LoadedModel(name="net", module=module.eval().requires_grad_(False),
                       preprocessing=Preprocessing(size=size, mean=(0.5,) * 3, std=(0.25,) * 3),
                       labels=[str(i) for i in range(7)], weights="random")


@pytest.mark.parametrize("variant", ["gradcam", "gradcam++", "layercam"])
def test_grad_cam_of_the_photo_on_show_runs_the_head_alone_and_draws_the_same_map(variant):
    torch.manual_seed(0)
    model = loaded(torchvision.models.resnet18(weights=None, num_classes=7))
    image = random_image((56, 48))
    fresh = drive(METHODS["gradcam"].start(MethodContext(model=model, image=image), {"layer": "layer3",
                                                                                       "variant": variant}))
    shown = MethodContext(model=model, image=image)
    shown.image_features()  # as the window does on opening the photo
    early = []
    hooks = [network.layer1.register_forward_hook(lambda *args: early.append(1))
             for network in {model.module, model.state.gradient_network(torch.zeros(1, 3, 48, 56))}]
    try:
        known = drive(METHODS["gradcam"].start(shown, {"layer": "layer3", "variant": variant}))
    finally:
        for hook in hooks:
            hook.remove()
    assert early == []  # nothing before the layer ran again
    torch.testing.assert_close(torch.from_numpy(known.array), torch.from_numpy(fresh.array), rtol=1e-4, atol=1e-5)
    assert known.metrics["score"] == pytest.approx(fresh.metrics["score"], rel=1e-4, abs=1e-5)
    assert known.params == fresh.params and known.layer == fresh.layer == "layer3"


def test_grad_cam_at_a_layer_with_no_tail_runs_the_whole_network():
    model = loaded(Skip())
    image = random_image((48, 48))
    ctx = MethodContext(model=model, image=image)
    ctx.image_features()
    assert model.state.layer_tail("body") is None
    result = drive(METHODS["gradcam"].start(ctx, {"layer": "body", "target": 0}))
    assert result.layer == "body" and result.array.shape == (48, 48)
