"""A linear layer over many positions, computed as a 1x1 convolution where this machine's
convolutions (oneDNN) outpace its matrix products (the BLAS).

PyTorch runs ``F.linear`` on the CPU through the BLAS (Intel's MKL in the official wheels)
and convolutions through oneDNN. On some processors MKL takes a slower path than oneDNN
does: on the AMD EPYC this project is measured on (2 cores), a transformer's linear layers
over 16 photos' tokens, forward and input gradient, run 1.02-1.40x faster as convolutions
(Swin-tiny's twelve shapes 1.13x together, ViT-tiny's 1.12x, a ConvNeXt MLP's at atto's
widths 1.20x), and a forward and backward pass of the whole network 1.10-1.13x (Swin-tiny),
1.04-1.10x (ViT-tiny) and 1.21x (Mixer-S/16) faster. Which is faster is the machine's
fact, not the model's (``convolution_outpaces_matmul``).

A small product gains nothing: the convolution's fixed cost (about 0.1 ms) outweighs it
for one photo's 77-295 tokens (0.7-0.96x). ``LinearAsConvolution`` therefore takes the
convolution only for at least ``MIN_ROWS`` rows and ``MIN_PRODUCTS`` multiplications.
"""

from __future__ import annotations

import functools
import platform

import torch
from torch import nn
from torch.nn import functional as F

MIN_ROWS = 256
MIN_PRODUCTS = 1 << 26  # rows x in x out: a 1176 x 384 -> 192 product of Swin's second stage is 1.06x, 4704 x 96 -> 96 equal


def takes_convolution(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether ``layer`` applied to ``x`` is a product big enough for the convolution to pay."""
    rows = x.numel() // layer.in_features if layer.in_features else 0
    return (x.device.type == "cpu" and x.dtype == torch.float32 and layer.weight.dtype == torch.float32
            and rows >= MIN_ROWS and rows * layer.in_features * layer.out_features >= MIN_PRODUCTS)


def linear_by_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as a 1x1 convolution over the rows of ``x``."""
    features = x.shape[-1]
    # The rows as a column of pixels whose channels are the features: a channels-last image,
    # so the reshape and permutes are views and the convolution's output is channels-last too.
    image = x.reshape(1, -1, 1, features).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class LinearAsConvolution(nn.Linear):
    """``nn.Linear`` whose big products run as 1x1 convolutions (``takes_convolution``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_convolution(x, self):
            return linear_by_convolution(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


INTEL = "GenuineIntel"
CPUINFO = "/proc/cpuinfo"  # Linux's


@functools.cache
def cpu_vendor() -> str:
    """The processor's maker as its CPUID names it ("GenuineIntel", "AuthenticAMD"), or ""
    where it cannot be read."""
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    processor = platform.processor()  # Windows: "AMD64 Family 25 Model 1 Stepping 1, AuthenticAMD"
    return processor.rsplit(",", 1)[1].strip() if "," in processor else ""


def convolution_outpaces_matmul() -> bool:
    """Whether this machine's matrix products are MKL's on a processor not Intel's, while its
    convolutions are oneDNN's: MKL is known to take its fastest (AVX-512) paths on Intel's
    processors only, oneDNN takes them on any processor with the instructions.

    Decided by the processor, not by timing: a probe's timing in a fresh process (one
    product, 2048 x 256 -> 512, forward and input gradient, medians of five) measured the
    convolution 0.999-1.22x as fast on the EPYC, a spread too wide to decide on, while the
    networks themselves gained 1.04-1.21x in every run. On an Intel processor the matrix
    products stay.
    """
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkl.is_available()):
        return False
    vendor = cpu_vendor()
    return bool(vendor) and vendor != INTEL
