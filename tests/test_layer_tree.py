"""The layer tree: structure, shapes, parameter counts, caching and the CLI listing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from engine.core.errors import MethodInputError
from engine.anatomy.layer_tree import build_layer_tree, format_layers
from engine.models.efficientnet_lite import EfficientNetLite0
from engine.anatomy.receptive_field import ReceptiveField


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


@pytest.fixture(scope="module")
def resnet18_tree(resnet18):
    return build_layer_tree(resnet18, (64, 64))


def test_tree_holds_every_module_in_module_order(resnet18, resnet18_tree):
    assert [node.path for node in resnet18_tree.walk()] == [path for path, _ in resnet18.named_modules()]
    layer1 = resnet18_tree.find("layer1")
    assert [child.name for child in layer1.children] == ["0", "1"]
    assert resnet18_tree.name == "" and resnet18_tree.type_name == "ResNet"


def test_find(resnet18_tree):
    assert resnet18_tree.find("") is resnet18_tree
    node = resnet18_tree.find("layer4.1.conv2")
    assert node.path == "layer4.1.conv2" and node.type_name == "Conv2d" and node.is_leaf
    assert not resnet18_tree.find("layer4").is_leaf
    assert resnet18_tree.find("layer4.1.conv9") is None
    assert resnet18_tree.find("layer") is None  # a prefix of a name is not a path


def test_output_shapes_agree_with_a_real_forward_pass(resnet18, resnet18_tree):
    shapes = {}

    def recorder(path):
        def record(module, inputs, output):
            shapes.setdefault(path, tuple(output.shape))  # the first call, as the tree keeps

        return record

    handles = [module.register_forward_hook(recorder(path)) for path, module in resnet18.named_modules()]
    try:
        with torch.no_grad():
            resnet18.eval()(torch.zeros(1, 3, 64, 64))
    finally:
        for handle in handles:
            handle.remove()
    assert {node.path: node.output_shape for node in resnet18_tree.walk()} == shapes
    assert resnet18_tree.output_shape == (1, 1000)
    assert resnet18_tree.find("layer4").output_shape == (1, 512, 2, 2)


def test_parameter_counts(resnet18, resnet18_tree):
    assert resnet18_tree.total_params == sum(p.numel() for p in resnet18.parameters())
    assert sum(node.own_params for node in resnet18_tree.walk()) == resnet18_tree.total_params
    modules = dict(resnet18.named_modules())
    for node in resnet18_tree.walk():
        assert node.total_params == sum(p.numel() for p in modules[node.path].parameters())
    conv1 = resnet18_tree.find("conv1")
    assert conv1.own_params == conv1.total_params == 64 * 3 * 7 * 7
    assert resnet18_tree.find("layer1").own_params == 0


def test_receptive_fields_in_the_tree(resnet18_tree):
    assert resnet18_tree.find("layer4").receptive_field == ReceptiveField.square(435, 32, 0.5)
    assert resnet18_tree.find("fc").receptive_field is None
    assert resnet18_tree.find("conv1").is_conv_or_pool and resnet18_tree.find("maxpool").is_conv_or_pool
    assert not resnet18_tree.find("bn1").is_conv_or_pool


def test_shared_and_unused_modules():
    relu = nn.ReLU()
    unused = nn.Conv2d(3, 3, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu)
            self.unused = unused

        def forward(self, x):
            return self.body(x)

    tree = build_layer_tree(Net(), (16, 16))
    # As in named_modules(): the ReLU registered twice appears once, under its first path.
    assert [node.path for node in tree.walk()] == ["", "body", "body.0", "body.1", "body.2", "unused"]
    assert tree.find("body.1").output_shape == (1, 4, 14, 14)  # its first call
    assert tree.find("unused").output_shape is None and tree.find("unused").receptive_field is None


def test_the_model_state_builds_one_tree_per_size(monkeypatch):
    from engine.anatomy import model_state
    from engine.models.model import LoadedModel
    from engine.models.preprocessing import Preprocessing

    builds = []
    real_trace = model_state.trace_model
    monkeypatch.setattr(model_state, "trace_model", lambda *args, **kwargs: builds.append(args) or real_trace(*args, **kwargs))

    def loaded(module):
        return LoadedModel(name="net", module=module, preprocessing=Preprocessing(size=16), labels=["a"], weights="random")

    model = loaded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    first = model.state.layer_tree((16, 16))
    assert model.state.layer_tree((16, 16)) is first
    assert model.state.layer_tree() is first  # the model's own size
    assert len(builds) == 1
    other_size = model.state.layer_tree((20, 20))
    assert other_size is not first and other_size.output_shape == (1, 4, 18, 18)
    assert loaded(nn.Sequential(nn.Conv2d(3, 4, 3))).state.layer_tree((16, 16)) is not first
    assert len(builds) == 3
    assert model.state.layer_tree((20, 20)) is other_size


def test_hooks_removed_after_building(resnet18, resnet18_tree):
    assert all(not module._forward_hooks for module in resnet18.modules())


def test_input_the_model_rejects_is_a_user_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(MethodInputError, match="1x3x16x16"):
        build_layer_tree(model, (16, 16))
    assert all(not module._forward_hooks for module in model.modules())


def test_format_layers(resnet18, resnet18_tree):
    lines = format_layers(resnet18_tree).splitlines()
    assert len(lines) == 1 + len(list(resnet18.modules()))  # a header, then one per module
    assert lines[0].split() == ["layer", "type", "output", "layout", "params", "receptive", "field"]
    by_path = {line.split()[0]: line for line in lines[1:]}
    assert by_path["(model)"].split()[1:] == ["ResNet", "1x1000", "vector", "of", "1,000",
                                              f"{resnet18_tree.total_params:,}"]
    assert by_path["layer4.1.conv2"].startswith("      layer4.1.conv2 ")  # two spaces per level
    assert by_path["layer4.1.conv2"].endswith("435 px, jump 32, start 0.5")
    assert by_path["conv1"].split()[1:] == ["Conv2d", "1x64x32x32", "spatial", "32x32", "9,408",
                                            "7", "px,", "jump", "2,", "start", "0.5"]
    assert by_path["layer4"].split()[1:] == ["Sequential", "1x512x2x2", "spatial", "2x2", "8,393,728"]  # not a conv
    # The pool's one unit spans layer4's 2x2 fields: 435 px and one jump of 32 more.
    assert by_path["avgpool"].split()[1:] == ["AdaptiveAvgPool2d", "1x512x1x1", "vector", "of", "512", "0",
                                              "467", "px,", "jump", "64,", "start", "16.5"]
    assert by_path["fc"].split()[1:] == ["Linear", "1x1000", "vector", "of", "1,000", "513,000"]


def test_format_layers_shows_fields_of_conv_subclasses():
    listing = format_layers(build_layer_tree(EfficientNetLite0(), (224, 224)))
    stem = next(line for line in listing.splitlines() if line.strip().startswith("stem.conv"))
    assert stem.split()[1:3] == ["SamePadConv2d", "1x32x112x112"]
    assert stem.endswith("3 px, jump 2, start 1.5")
