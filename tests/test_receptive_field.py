"""Receptive fields traced from the architecture, against derivations and against autograd."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from engine.models.efficientnet_lite import EfficientNetLite0
from engine.anatomy.layer_tree import trace_model
from engine.anatomy.receptive_field import ReceptiveField, trace_layers

square = ReceptiveField.square


def fields_of(model: nn.Module, height: int, width: int | None = None) -> dict[str, ReceptiveField | None]:
    """Every module's field from a real forward pass, checked against the shapes-only pass on
    the meta device that ``trace_model`` (and so ``ModelState``) runs."""
    dtype = next(model.parameters()).dtype
    real = trace_layers(model, torch.zeros(1, 3, height, width or height, dtype=dtype))
    assert list(trace_model(model, (height, width or height)).items()) == list(real.items())
    return {path: trace.receptive_field for path, trace in real.items()}


# --- ReceptiveField itself -------------------------------------------------------------


def test_box_is_centred_on_the_unit_and_not_clipped():
    field = square(196, jump=16, start=8)
    assert field.box(0, 0) == (-90, -90, 106, 106)
    assert field.box(2, 3) == (-58, -42, 138, 154)


def test_text_shows_h_and_w_only_where_they_differ():
    assert str(square(196, 16, 0.5)) == "196 px, jump 16, start 0.5"
    assert str(ReceptiveField((39, 55), (8, 8), (2.5, 2.5))) == "39x55 px, jump 8, start 2.5"
    assert square(3).is_square and not ReceptiveField((3, 5), (1, 1), (0.5, 0.5)).is_square


# --- Known figures of classic networks -------------------------------------------------

# Every 3x3/1 conv (padding 1) adds 2 jumps and keeps the start, every 2x2/2 pool adds one
# jump, moves the start by half a jump and doubles the jump.
VGG16_FIELDS = {
    "features.0": square(3, 1, 0.5),  # conv1_1
    "features.2": square(5, 1, 0.5),  # conv1_2
    "features.4": square(6, 2, 1),  # pool1
    "features.5": square(10, 2, 1),  # conv2_1
    "features.7": square(14, 2, 1),  # conv2_2
    "features.9": square(16, 4, 2),  # pool2
    "features.14": square(40, 4, 2),  # conv3_3
    "features.16": square(44, 8, 4),  # pool3
    "features.21": square(92, 8, 4),  # conv4_3
    "features.23": square(100, 16, 8),  # pool4
    "features.28": square(196, 16, 8),  # conv5_3
    "features.30": square(212, 32, 16),  # pool5
}


def test_vgg16():
    # The fields do not depend on the input size; 64 px is enough to run every layer.
    fields = fields_of(torchvision.models.vgg16(weights=None), 64)
    assert {path: fields[path] for path in VGG16_FIELDS} == VGG16_FIELDS
    assert fields["features.1"] == fields["features.0"]  # in-place ReLU
    assert fields["classifier"] is None and fields[""] is None


def test_alexnet():
    # conv1 11/4 pad 2: 11, jump 4, start 0.5 + (5 - 2) = 3.5; pool 3/2: +2 jumps;
    # conv2 5/1: +4 jumps; three 3x3 convs and pool5 3/2: +2 jumps each.
    fields = fields_of(torchvision.models.alexnet(weights=None), 224)
    assert fields["features.0"] == square(11, 4, 3.5)
    assert fields["features.2"] == square(19, 8, 7.5)
    assert fields["features.3"] == square(51, 8, 7.5)
    assert fields["features.5"] == square(67, 16, 15.5)
    assert fields["features.12"] == square(195, 32, 31.5)
    assert fields["avgpool"] == fields["features.12"]  # adaptive 6x6 pool of a 6x6 map: identity


def test_resnet18_residual_adds():
    # conv1 7/2 -> 7, maxpool 3/2 -> 11 (jump 4); each 3x3 conv then adds 2 jumps, the first
    # conv of layers 2-4 at the old jump before doubling it: 43, 99, 211, 435 (Araujo et al.).
    fields = fields_of(torchvision.models.resnet18(weights=None), 64)
    assert fields["conv1"] == square(7, 2, 0.5)
    assert fields["maxpool"] == square(11, 4, 0.5)
    assert fields["layer1"] == square(43, 4, 0.5)
    assert fields["layer2"] == square(99, 8, 0.5)
    assert fields["layer3"] == square(211, 16, 0.5)
    assert fields["layer4"] == square(435, 32, 0.5)
    # The block's add takes the hull of the main path and the 1x1/2 shortcut.
    assert fields["layer4.0.downsample"] == square(211, 32, 0.5)
    assert fields["layer4.0"] == square(307, 32, 0.5)
    assert fields["fc"] is None


def test_module_called_twice_reports_its_first_call():
    # BasicBlock applies one ReLU after bn1 (11 + 2 * 4 = 19) and again after the add (27).
    fields = fields_of(torchvision.models.resnet18(weights=None), 64)
    assert fields["layer1.0.relu"] == square(19, 4, 0.5)
    assert fields["layer1.0"] == square(27, 4, 0.5)


def test_googlenet_concatenation():
    # maxpool2 (ceil mode, no padding): 27, jump 8, start 6.5; every branch of inception3a
    # adds one 3x3 window (the pool branch's 3/1 pool included): 43.
    model = torchvision.models.googlenet(weights=None, init_weights=False)
    traces = trace_layers(model, torch.zeros(1, 3, 64, 64))
    assert traces["maxpool2"].receptive_field == square(27, 8, 6.5)
    assert traces["inception3a.branch4"].receptive_field == square(43, 8, 6.5)
    assert traces["inception3a"].receptive_field == square(43, 8, 6.5)
    assert traces["inception3a"].output_shape == (1, 256, 8, 8)
    assert "aux1" not in traces  # the auxiliary heads do not run in eval mode


# --- Individual operations -------------------------------------------------------------


class TinySqueezeExcitation(nn.Module):
    def __init__(self, squeeze: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.squeeze = squeeze

    def forward(self, x):
        x = self.conv(x)
        pooled = F.adaptive_avg_pool2d(x, 1) if self.squeeze == "pool" else x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))
        return x * gate


@pytest.mark.parametrize("squeeze", ["pool", "mean"])
def test_squeeze_excitation_gate_is_left_out(squeeze):
    fields = fields_of(TinySqueezeExcitation(squeeze), 16)
    assert fields[""] == fields["conv"] == square(3, 1, 0.5)


def test_mobilenet_v3_squeeze_excitation():
    # features.0 3/2 -> 3, jump 2; features.1 depthwise 3/2 -> 7, jump 4; then SE.
    fields = fields_of(torchvision.models.mobilenet_v3_small(weights=None), 64)
    assert fields["features.1.block.0"] == square(7, 4, 0.5)
    assert fields["features.1.block.1"] == square(7, 4, 0.5)
    assert fields["features.1"] == square(7, 4, 0.5)
    # The squeeze itself pools the whole 16x16 map, so it sees the whole image.
    top, left, bottom, right = fields["features.1.block.1.avgpool"].box(0, 0)
    assert top <= 0 and left <= 0 and bottom >= 64 and right >= 64


def test_outputs_without_spatial_axes_have_no_field():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert fields_of(model, 8) == {"": None, "0": square(3, 1, 1.5), "1": None, "2": None}


def test_cropping_by_slicing_is_unknown():
    class Crop(nn.Module):
        def forward(self, x):
            return x[:, :, 1:-1, 1:-1]

    assert fields_of(nn.Sequential(nn.Conv2d(3, 3, 3), Crop()), 8)["1"] is None


def test_tensorflow_same_padding_is_asymmetric():
    # SAME padding of a 3/2 conv on an even map pads 0 before and 1 after: start 0.5 + 1.
    fields = fields_of(EfficientNetLite0(), 224)
    assert fields["stem.conv"] == square(3, 2, 1.5)


def test_upsampling_divides_the_jump():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.Upsample(scale_factor=2))
    upsampled = fields_of(model, 16)["1"]
    assert upsampled.jump == (1, 1) and upsampled.size == (3, 3)


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt block: its LayerNorm and MLP run on an NHWC permutation of the map."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.depthwise = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Linear(8, 8)

    def forward(self, x):
        x = self.stem(x)
        y = self.mlp(self.norm(self.depthwise(x).permute(0, 2, 3, 1)))
        return x + y.permute(0, 3, 1, 2)


def test_permuted_maps_keep_their_field():
    # stem 4/4: 4, jump 4, start 0.5 + 1.5 = 2; depthwise 7: + 6 jumps = 28.
    fields = fields_of(ChannelsLastBlock(), 32)
    assert fields["mlp"] == square(28, 4, 2)
    assert fields[""] == square(28, 4, 2)


# --- Against autograd ------------------------------------------------------------------


class ProbeNet(nn.Module):
    """Stride, dilation, asymmetric F.pad, a residual add, avg pooling, a non-square kernel."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.down_early = nn.Conv2d(4, 4, 3, stride=2)  # padded before: leans up and left
        self.down_late = nn.Conv2d(4, 4, 3, stride=2)  # padded after: leans down and right
        self.shortcut = nn.Conv2d(4, 4, 1, stride=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.wide = nn.Conv2d(4, 4, (3, 5), padding=(1, 2))
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.dilated(self.relu(self.stem(x))))
        x = self.shortcut(x) + self.down_early(F.pad(x, [1, 0, 1, 0])) + self.down_late(F.pad(x, [0, 1, 0, 1]))
        return self.wide(self.pool(x))


def linearised(model: nn.Module) -> nn.Module:
    """Positive weights and no activations, so that no path to the input cancels or is cut."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                setattr(module, name, nn.Identity())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1 / module.weight[0].numel())
                if module.bias is not None:
                    module.bias.zero_()
    # Products of many small weights: double precision keeps the farthest paths nonzero.
    return model.double().eval()


def gradient_box(model: nn.Module, layer: str, size: int, unit: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input pixels with a nonzero gradient for one unit."""
    outputs = []
    handle = model.get_submodule(layer).register_forward_hook(lambda module, inputs, output: outputs.append(output))
    image = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    try:
        model(image)
    finally:
        handle.remove()
    y, x = unit
    outputs[0][0, :, y, x].sum().backward()
    touched = image.grad[0].abs().sum(0) > 0
    rows, cols = touched.any(1).nonzero().flatten(), touched.any(0).nonzero().flatten()
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def clipped(box: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    top, left, bottom, right = box
    assert all(float(edge).is_integer() for edge in box)
    return int(max(top, 0)), int(max(left, 0)), int(min(bottom, size)), int(min(right, size))


def test_probe_net_field_is_derived():
    # stem 3/2: 3, jump 2; dilated 3 (d=2, pad 2): + 4 jumps = 11, start 0.5, unit 0 on [-5, 6].
    # Then, at jump 4: shortcut 1/2 keeps 11 on [-5, 6]; down_early (padded 1 before, 3/2)
    # 15 on [-7, 8]; down_late (padded 1 after) 15 on [-5, 10]. Their sum: [-7, 10], 17,
    # start 1.5. pool 3/2 pad 1: 17 + 2 * 4 = 25, jump 8; wide (3, 5): h 25 + 16, w 25 + 32.
    assert fields_of(ProbeNet(), 64)[""] == ReceptiveField((41, 57), (8, 8), (1.5, 1.5))


@pytest.mark.parametrize("unit", [(4, 4), (0, 0), (7, 2), (3, 7)])
def test_probe_net_matches_gradient_support(unit):
    model = linearised(ProbeNet())
    field = fields_of(model, 64)[""]
    if unit == (4, 4):  # interior: the whole field lies inside the image
        assert clipped(field.box(*unit), 64) == field.box(*unit)
    assert gradient_box(model, "wide", 64, unit) == clipped(field.box(*unit), 64)


@pytest.fixture(scope="module")
def linear_lite0() -> nn.Module:
    torch.manual_seed(0)
    return linearised(EfficientNetLite0())


@pytest.mark.parametrize(
    "layer, size, unit",
    [
        ("stages.3.2", 160, (4, 4)),  # 147 px, jump 16: wholly inside the image
        ("stages.3.2", 160, (0, 9)),  # a corner: the field reaches past the image
        ("stages.2.1", 97, (3, 3)),  # odd sizes pad SAME symmetrically at some strides
    ],
)
def test_efficientnet_lite0_matches_gradient_support(linear_lite0, layer, size, unit):
    field = fields_of(linear_lite0, size)[layer]
    assert gradient_box(linear_lite0, layer, size, unit) == clipped(field.box(*unit), size)
    if unit == (4, 4):
        assert field == square(147, 16, 15.5)
        assert clipped(field.box(*unit), size) == field.box(*unit)


# --- Hygiene ---------------------------------------------------------------------------


def test_hooks_removed_and_modes_restored_even_on_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)
            self.norm = nn.BatchNorm2d(3).eval()  # frozen inside a training model

        def forward(self, x):
            self.norm(self.conv(x))
            raise RuntimeError("boom")

    model = Broken().train()
    model.norm.eval()
    with pytest.raises(RuntimeError, match="boom"):
        trace_layers(model, torch.zeros(1, 3, 8, 8))
    assert all(not module._forward_hooks for module in model.modules())
    assert model.training and model.conv.training and not model.norm.training

    resnet = torchvision.models.resnet18(weights=None)
    trace_layers(resnet, torch.zeros(1, 3, 32, 32))
    assert all(not module._forward_hooks for module in resnet.modules())
    assert resnet.training
