"""A linear layer over many positions, computed as a 1x1 convolution where this machine's
convolutions (oneDNN) outpace its matrix products (the BLAS).

PyTorch runs ``F.linear`` on the CPU through the BLAS (Intel's MKL in the official wheels)
and convolutions through oneDNN. On some processors MKL takes a slower path than oneDNN
does: on the AMD EPYC this project is measured on (2 cores), a transformer's linear layers
over 16 photos' tokens, forward and input gradient, run 1.02-1.40x faster as convolutions
(Swin-tiny's twelve shapes 1.13x together, ViT-tiny's 1.12x, a ConvNeXt MLP's at atto's
widths 1.20x), and a forward and backward pass of the whole network 1.12x (Swin-tiny),
1.10x (ViT-tiny) and 1.21x (Mixer-S/16) faster. Which is faster is the machine's fact, not the model's, so it
is measured once a process (``convolution_outpaces_matmul``).

A small product gains nothing: the convolution's fixed cost (about 0.1 ms) outweighs it
for one photo's 77-295 tokens (0.7-0.96x). ``LinearAsConvolution`` therefore takes the
convolution only for at least ``MIN_ROWS`` rows and ``MIN_PRODUCTS`` multiplications.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time

import torch
from torch import nn
from torch.nn import functional as F

MIN_ROWS = 256
MIN_PRODUCTS = 1 << 26  # rows x in x out: a 1176 x 384 -> 192 product of Swin's second stage is 1.06x, 4704 x 96 -> 96 equal
# How much faster the convolution must be on the probe for it to be taken: a margin over the timing's noise.
REQUIRED_GAIN = 1.05


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


_PROBE_LOCK = threading.Lock()  # two threads probing at once would time each other


def convolution_outpaces_matmul() -> bool:
    """Whether a product the size of a transformer's over a batch of photos (2048 rows,
    256 -> 512 features), forward and input gradient, is ``REQUIRED_GAIN`` times faster as a
    convolution than as a matrix product here (1.15-1.23x on the EPYC). About 80 ms, once a
    process, besides the BLAS's own start-up on its first product."""
    with _PROBE_LOCK:
        return _probe()


@functools.cache
def _probe() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 256, generator=generator)
    weight, bias = torch.randn(512, 256, generator=generator), torch.randn(512, generator=generator)

    def pass_through(linear) -> float:
        start = time.perf_counter()
        inputs = x.detach().requires_grad_(True)
        out = linear(inputs, weight, bias)
        torch.autograd.grad(out, inputs, torch.ones_like(out))
        return time.perf_counter() - start

    times: dict[object, list[float]] = {F.linear: [], linear_by_convolution: []}
    for round_ in range(6):
        for linear, taken in times.items():
            seconds = pass_through(linear)
            if round_:  # the first is the warm-up: oneDNN picks its kernels there
                taken.append(seconds)
    return statistics.median(times[F.linear]) >= REQUIRED_GAIN * statistics.median(times[linear_by_convolution])
