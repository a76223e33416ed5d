"""The image transformation network of fast style transfer (Johnson et al. 2016).

One feed-forward pass turns a content picture into a stylised one. The architecture is
Johnson's: a 9x9 convolution, two stride-2 convolutions down, residual blocks, two
upsampling stages back up and a 9x9 convolution to RGB. Three choices differ from the
paper, each for a reason that later work established:

- every convolution pads by reflection, so the borders are not dark frames;
- upsampling is nearest-neighbour followed by a convolution instead of a transposed
  convolution, which leaves no checkerboard pattern (Odena et al. 2016);
- normalisation is instance norm (Ulyanov et al. 2016), and its scale and shift are
  *conditional* (Dumoulin et al. 2017): one (gamma, beta) pair per style. Everything
  else is shared, so one network holds N styles, and a blend of styles is the network
  run with the blended gamma and beta.

The network is fully convolutional: the decoder upsamples to the exact size each encoder
stage had, so an input of any size >= ``MIN_SIDE`` comes back at that same size. Input
and output are RGB in 0..1 (the output through a sigmoid, so it is always a picture).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from engine.core.errors import MethodInputError

# Reflection padding needs the padding to be smaller than the side it pads: the 9x9 input
# layer pads by 4, and the coarsest level (a quarter of the input) pads by 1.
MIN_SIDE = 8


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose affine (gamma, beta) is a weighted mix of one pair per style.

    ``mix`` is N x styles (one row of weights per image); the effective gamma is
    ``mix @ gamma``. A one-hot row selects a style's pair exactly, and any other row is
    the same as a network whose gamma and beta were mixed with those weights.
    """

    def __init__(self, channels: int, styles: int = 1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(styles, channels))
        self.beta = nn.Parameter(torch.zeros(styles, channels))

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        normalised = F.instance_norm(x, eps=1e-5)
        gamma = (mix @ self.gamma)[:, :, None, None]
        beta = (mix @ self.beta)[:, :, None, None]
        return normalised * gamma + beta


class ConvNorm(nn.Module):
    """Reflection pad, convolution, conditional instance norm, and optionally ReLU."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, styles: int,
                 stride: int = 1, relu: bool = True) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(channels_in, channels_out, kernel, stride=stride)
        self.norm = ConditionalInstanceNorm2d(channels_out, styles)
        self.relu = relu

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(self.pad(x)), mix)
        return F.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))): Johnson's block, no activation after the sum."""

    def __init__(self, channels: int, styles: int) -> None:
        super().__init__()
        self.first = ConvNorm(channels, channels, 3, styles)
        self.second = ConvNorm(channels, channels, 3, styles, relu=False)

    def forward(self, x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        return x + self.second(self.first(x, mix), mix)


class StyleNet(nn.Module):
    """Johnson's transformation network with ``styles`` conditional instance-norm styles.

    ``width`` is the channel count of the first layer (32 in the paper; the deepest
    layers have four times as many) and ``blocks`` the number of residual blocks (5).
    Smaller values make a network that trains and runs faster, at some cost in quality.
    """

    def __init__(self, styles: int = 1, width: int = 32, blocks: int = 5) -> None:
        super().__init__()
        if styles < 1 or width < 1 or blocks < 0:
            raise ValueError(f"a style network needs styles >= 1, width >= 1, blocks >= 0 (got {styles}, {width}, {blocks})")
        self.styles, self.width, self.blocks = styles, width, blocks
        self.encoder = nn.ModuleList([
            ConvNorm(3, width, 9, styles),
            ConvNorm(width, 2 * width, 3, styles, stride=2),
            ConvNorm(2 * width, 4 * width, 3, styles, stride=2),
        ])
        self.residuals = nn.ModuleList([ResidualBlock(4 * width, styles) for _ in range(blocks)])
        self.decoder = nn.ModuleList([
            ConvNorm(4 * width, 2 * width, 3, styles),
            ConvNorm(2 * width, width, 3, styles),
        ])
        self.output_pad = nn.ReflectionPad2d(4)
        self.output = nn.Conv2d(width, 3, 9)

    @property
    def architecture(self) -> dict[str, int]:
        """What rebuilds this network before its weights are loaded."""
        return {"styles": self.styles, "width": self.width, "blocks": self.blocks}

    def forward(self, unit: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        """N x 3 x H x W pixels in 0..1 -> the stylised pixels, same shape, in 0..1.

        ``mix``: style weights, either one vector (``styles``) for the whole batch or one
        row per image (N x ``styles``); rows are used as given (see ``style_mix``).
        A single-style network needs none.
        """
        if min(unit.shape[-2:]) < MIN_SIDE:
            raise MethodInputError(f"the style network needs pictures of at least {MIN_SIDE} x {MIN_SIDE} pixels, "
                                   f"not {unit.shape[-1]} x {unit.shape[-2]}")
        mix = self._batch_mix(mix, unit.shape[0], unit)
        x = unit - 0.5  # centred input; instance norm takes care of the scale
        sizes = []
        for index, layer in enumerate(self.encoder):
            if index > 0:
                sizes.append(x.shape[-2:])  # what the matching decoder stage upsamples back to
            x = layer(x, mix)
        for block in self.residuals:
            x = block(x, mix)
        for layer, size in zip(self.decoder, reversed(sizes)):
            x = layer(F.interpolate(x, size=size, mode="nearest"), mix)
        return torch.sigmoid(self.output(self.output_pad(x)))

    def _batch_mix(self, mix: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
        if mix is None:
            if self.styles != 1:
                raise ValueError(f"this network holds {self.styles} styles: say how to mix them")
            mix = torch.ones(1)
        mix = mix.to(device=like.device, dtype=like.dtype)
        if mix.dim() == 1:
            mix = mix.unsqueeze(0).expand(batch, -1)
        if mix.shape != (batch, self.styles):
            raise ValueError(f"style weights of shape {tuple(mix.shape)} do not fit a batch of {batch} "
                             f"and {self.styles} style(s)")
        return mix

    @torch.no_grad()
    def initialise(self, generator: torch.Generator) -> "StyleNet":
        """Fresh weights drawn from ``generator`` (PyTorch's default convolution init:
        uniform within 1/sqrt(fan_in)), gamma 1 and beta 0, so a seed reproduces them."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                bound = 1.0 / (module.in_channels * module.kernel_size[0] * module.kernel_size[1]) ** 0.5
                for tensor in (module.weight, module.bias):
                    tensor.copy_(torch.empty(tensor.shape).uniform_(-bound, bound, generator=generator))
            elif isinstance(module, ConditionalInstanceNorm2d):
                module.gamma.fill_(1.0)
                module.beta.fill_(0.0)
        return self


def build_style_net(architecture: dict, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> StyleNet:
    """A network of the given architecture on ``device``, initialised from ``generator``,
    or left uninitialised (for weights about to be loaded) when there is none.

    Built on the meta device first, so no memory or global random numbers are spent on
    weights that are replaced at once.
    """
    with torch.device("meta"):
        net = StyleNet(int(architecture["styles"]), int(architecture["width"]), int(architecture["blocks"]))
    net = net.to_empty(device=device)
    if generator is not None:
        net.initialise(generator)
    return net


def style_mix(weights: Sequence[float] | None, styles: int) -> torch.Tensor:
    """Style weights as the vector a forward takes: non-negative, normalised to sum 1.

    ``None`` or empty gives equal weights. A single-style network has nothing to mix, so
    its weights are always (1,), whatever was asked.
    """
    if styles == 1:
        return torch.ones(1)
    if not weights:
        return torch.full((styles,), 1.0 / styles)
    values = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    if len(values) != styles:
        raise MethodInputError(f"this network holds {styles} styles, so --style-mix needs {styles} weights "
                               f"(one per style, e.g. {','.join(['1'] + ['0'] * (styles - 1))}), not {len(values)}")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise MethodInputError("--style-mix weights must be finite and not negative")
    total = float(values.sum())
    if total <= 0:
        raise MethodInputError("--style-mix weights must not all be zero")
    return (values / total).float()


def one_hot_mix(style: int, styles: int) -> torch.Tensor:
    """The weights that select one style alone (what training uses)."""
    mix = torch.zeros(styles)
    mix[style] = 1.0
    return mix
