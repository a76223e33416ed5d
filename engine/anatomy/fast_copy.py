"""The fast copy: a faster stand-in for a model when only its outputs (and input gradients)
are needed, many times over.

``build_fast_copy(module, sample)`` makes a twin of the module (``engine.anatomy.twin``) in which

- every eval-mode ``BatchNorm2d`` that directly normalises a ``Conv2d``'s output is folded
  into that convolution's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``,
  in double precision) and replaced by an identity, as is every ``BatchNorm1d`` over a
  ``Linear``'s output features (LeViT's attention and MLP layers: its integrated gradients
  went from 0.99-1.03x Captum's speed to 1.08-1.16x); timm's ``BatchNormAct2d`` (the
  norm of its EfficientNets, MobileNets, RegNets, GhostNet and DenseNet, with their
  activation inside) is folded too, its activation kept in its place (``AfterNorm``), and
- activation modules that can run in place (ReLU, ReLU6, Hardtanh, ...) do so,

which saves the memory passes those layers make: about 20% of a forward of the bundled
EfficientNet-Lite0 on the CPU; and

- a convolution that cuts the pixels into patches (``PatchConv2d``: ViT's, DeiT's,
  Swin's, Mixer's, ConvNeXt's and EdgeNeXt's stems) takes its input gradient as one
  matrix product, 2-3x faster than the CPU's convolution backward; and
- a vision transformer whose head reads its class tokens alone runs its last MLP on them
  alone (``engine.anatomy.class_tokens``); and
- where this machine's convolutions outpace its matrix products, a linear layer applied at
  every position or token (a transformer's, a ConvNeXt's MLP) runs its big products as 1x1
  convolutions (``engine.anatomy.linear_as_convolution``: Swin-tiny, ViT-tiny and Mixer
  1.10-1.21x faster forward and backward over 16 photos on this project's EPYC); and
- ConvNeXt-V2's global response norm computes by one scale a channel, its gradient in
  three passes instead of eight (``engine.anatomy.response_norm``).

The copy shares every parameter it does not change with the model, so it costs the memory
of the folded convolutions' weights only.

Which convolution feeds which normalisation is found by running ``sample`` once with
hooks; the model's code is never parsed. Code that uses a convolution's output twice, or
an activation's input after the activation, would make the copy compute something else,
so the copy is used only if it reproduces the model's output on ``sample`` (twice, so
an in-place activation that damages a tensor the model keeps is noticed); otherwise, and
for TorchScript modules, there is no fast copy and the model itself runs. Folding reorders
arithmetic: outputs differ by float rounding (1e-5 on the bundled model's logits).

A folded layer's output is its normalisation's output, and a cut transformer's last
layers hold its class tokens only, so a caller that reads a layer's output names the
layer: for those layers it gets the model itself.

The CPU's convolutions are also faster in channels-last layout (the bundled model to its
last layer, batches of 32 on 2 threads: 1.9 s plain, 1.0 s channels-last, 0.56 s folded
and channels-last). The folded convolutions' weights are made channels-last too: a
channels-last map meeting an ordinary weight has the weight reordered on every call,
forward and backward, which cost ResNet-18 (all its convolutions folded) more than the
layout saved: a guided-backprop pass at 224 px on one thread took 192 ms, 175 with the
weights channels-last, 173 with nothing channels-last (the bundled model's depthwise
convolutions are as fast either way). A model that reshapes with ``.view()`` cannot take
that layout: its copy is made again with ordinary weights.

Which copy a model has, whether backward passes through it work and whether the model
takes channels-last input are per-model facts: ``engine.anatomy.model_state.ModelState``
keeps them (``loaded_model.state.fast_copy(sample)``) and rebuilds the copy when the
model's weights change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from engine.anatomy.class_tokens import cut_to_class_tokens
from engine.anatomy.hooks import first_tensor, hooked
from engine.anatomy.linear_as_convolution import LinearAsConvolution, convolution_outpaces_matmul
from engine.anatomy.response_norm import is_response_norm, response_norm_by_scale
from engine.anatomy.twin import has_script_modules, module_twin

INPLACE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
                       nn.Mish, nn.SELU, nn.CELU, nn.RReLU, nn.Threshold)
# A linear layer that took more rows than this for each image of the sample works on
# positions or tokens; a head takes one (a distilled transformer's two heads, one each).
POSITIONS_PER_IMAGE = 4
# How far the fast copy's output may be from the model's, relative to the output's largest
# value (at least 1), for the copy to be used.
TOLERANCE = 1e-4


@dataclass(frozen=True)
class FastCopy:
    """A model's fast copy and the layers whose outputs in it are not the model's: the
    layers that now include their normalisation, and a transformer's layers cut to its
    class tokens."""

    module: nn.Module
    altered: frozenset[str]


def weights_version(modules: Iterable[nn.Module]) -> tuple:
    """Changes whenever any parameter or buffer of ``modules`` (a model's ``modules()``)
    does: written in place (loading other weights, the sanity check's randomisation),
    replaced, or moved to another device or dtype (``module.to`` swaps a parameter's data
    but keeps the object; the new data is allocated while the old is alive, so its address
    differs)."""
    # Each module's own tensors, read from its dictionaries: ``parameters()`` and
    # ``buffers()`` walk the tree twice and build a name for each (3x slower; asked on every pass).
    return tuple((id(t), t._version, t.data_ptr(), t.device)
                 for sub in modules for tensors in (sub._parameters, sub._buffers) for t in tensors.values()
                 if t is not None)


def could_speed_up(module: nn.Module) -> bool:
    """Whether a fast copy of ``module`` could differ from it at all: it has a batch norm to
    fold, an activation to run in place, pixels cut into patches, a global response norm, or
    a linear layer where convolutions are the faster (``convolution_outpaces_matmul``).
    Read from the module tree and the machine alone, so a caller that treats the tree as
    fixed (``ModelState``) asks once, and a model with none of them (a network of group
    norms, GELUs and 1x1 convolutions on a machine whose matrix products are fast) pays no
    weights check on later passes."""
    return any(isinstance(part, (nn.BatchNorm2d, nn.BatchNorm1d))
               or (isinstance(part, INPLACE_ACTIVATIONS) and getattr(part, "inplace", None) is False)
               or cuts_pixels_into_patches(part) or is_response_norm(part)
               or (type(part) is nn.Linear and convolution_outpaces_matmul())
               for part in module.modules())


# -- patch convolutions ------------------------------------------------------------------

PIXEL_CHANNELS = 4  # at most this many input channels: a convolution reading an image (RGB, RGBA, gray)


def cuts_pixels_into_patches(part: nn.Module) -> bool:
    """A convolution over an image's few channels whose kernel tiles its input: kernel =
    stride, no padding, no dilation, one group. Its input gradient is then a matrix product
    and a reordering of the products into the patches they came from.

    Only for a few input channels: there the CPU's convolution backward is slow (3 to 192
    channels, 16x16 patches of a 224x336 photo, forward and input gradient: 3.5 ms, as a
    matrix product 1.3; 51 and 16 ms for 16 photos; 4x4 patches to 96 channels 1.8 and
    0.9). Between stages, 40 channels in 2x2 patches, the convolution is the faster.
    """
    return (type(part) is nn.Conv2d and part.in_channels <= PIXEL_CHANNELS and part.groups == 1
            and part.kernel_size == part.stride and part.kernel_size != (1, 1)
            and part.padding == (0, 0) and part.dilation == (1, 1))


class _PatchConvFunction(torch.autograd.Function):
    """A tiling convolution (``cuts_pixels_into_patches``) with its input gradient as a matrix
    product. The weights are constants here: the fast copy gives input gradients only."""

    @staticmethod
    def forward(ctx, x, weight, bias, patch):
        ctx.save_for_backward(weight)
        ctx.patch, ctx.input_shape = patch, x.shape
        return F.conv2d(x, weight, bias, stride=patch)

    @staticmethod
    def backward(ctx, grad_output):
        weight, = ctx.saved_tensors
        (ph, pw), (batch, channels, height, width) = ctx.patch, ctx.input_shape
        rows, cols = grad_output.shape[-2:]
        # Each output position's gradient times the weights is the gradient of the patch it read.
        per_patch = grad_output.permute(0, 2, 3, 1).reshape(batch, rows * cols, -1) @ weight.reshape(weight.shape[0], -1)
        grad = per_patch.reshape(batch, rows, cols, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
        grad = grad.reshape(batch, channels, rows * ph, cols * pw)
        if (rows * ph, cols * pw) != (height, width):  # the right and bottom edges no patch covered
            grad = F.pad(grad, (0, width - cols * pw, 0, height - rows * ph))
        return grad, None, None, None


class PatchConv2d(nn.Conv2d):
    """A convolution that cuts the pixels into patches (``cuts_pixels_into_patches``): the
    same forward, the input gradient by ``_PatchConvFunction``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.detach()
        return _PatchConvFunction.apply(x, self.weight.detach(), bias, self.stride)


def can_have_fast_copy(module: nn.Module) -> bool:
    """TorchScript cannot be copied or traced by hooks, and a model in training mode would
    fold statistics it is about to change."""
    return not module.training and not has_script_modules(module)


def build_fast_copy(module: nn.Module, sample: torch.Tensor, tolerance: float = TOLERANCE) -> FastCopy | None:
    """The fast copy of ``module``, checked on ``sample`` (a normalised input batch); None when
    nothing can be sped up or the copy would compute something else."""
    if not can_have_fast_copy(module):
        return None
    for layout in (torch.channels_last, torch.contiguous_format):
        try:
            candidate = _fold(module, sample, layout)
            return candidate if candidate is not None and _agrees(module, candidate.module, sample, tolerance) else None
        except Exception:  # code that reshapes with .view() fails on channels-last maps: tried again in the other layout
            continue
    return None  # any model we cannot copy or trace simply runs as it is


def backward_works(network: nn.Module, sample: torch.Tensor) -> bool:
    """Whether an input gradient can be taken through ``network`` (a fast copy): its in-place
    activations may overwrite a tensor that another operation kept for its backward."""
    x = sample.clone().requires_grad_(True)
    try:
        torch.autograd.grad(first_tensor(network(x)).sum(), x)
    except RuntimeError:  # "one of the variables needed for gradient computation has been modified by an inplace operation"
        return False
    return True


def _output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return first_tensor(module(x))


def _fold(module: nn.Module, sample: torch.Tensor, layout: torch.memory_format) -> FastCopy | None:
    twin = module_twin(module)  # shares every parameter and buffer; copies only the module objects
    pairs, positional = _trace(twin, sample)
    names = {id(part): name for name, part in twin.named_modules()}
    parents = {id(child): (parent, name) for parent in twin.modules() for name, child in parent.named_children()}
    for layer, norm in pairs:
        _fold_pair(layer, norm, layout)
        parent, name = parents[id(norm)]
        setattr(parent, name, _after_folding(norm))
    cut = cut_to_class_tokens(twin)
    changed = bool(pairs or cut)
    if positional and convolution_outpaces_matmul():
        for linear in positional:
            linear.__class__ = LinearAsConvolution  # the twin's own module object: the model's stays a Linear
        changed = True
    for part in twin.modules():
        if isinstance(part, INPLACE_ACTIVATIONS) and getattr(part, "inplace", None) is False:
            part.inplace = True
            changed = True
        elif cuts_pixels_into_patches(part):
            part.__class__ = PatchConv2d  # the twin's own module object: the model's stays a Conv2d
            changed = True
        elif is_response_norm(part):
            response_norm_by_scale(part)
            changed = True
    return FastCopy(twin, frozenset(names[id(layer)] for layer, _ in pairs) | cut) if changed else None


def _trace(model: nn.Module, sample: torch.Tensor) -> tuple[list[tuple[nn.Module, nn.Module]], list[nn.Module]]:
    """One pass of ``sample`` through ``model``, which finds

    - (layer, norm) where the norm normalises exactly the layer's output, each layer once: a
      ``BatchNorm2d`` taking a ``Conv2d``'s output, or a ``BatchNorm1d`` taking a
      ``Linear``'s output with its rows flattened into one batch (LeViT's ``LinearNorm``),
      which normalises the linear's output features; and
    - the ``nn.Linear`` layers applied at every position or token, many rows an image (not
      a classifier's head, one row an image)."""
    produced: dict[int, nn.Module] = {}  # conv output's id -> conv
    rows: dict[int, int] = {}  # linear's id -> most rows it took in one call
    linear_outputs: dict[tuple, nn.Module] = {}  # (address, elements, features) -> linear
    keep_alive: list[torch.Tensor] = []  # so that no output's id or memory is reused during the pass
    pairs: list[tuple[nn.Module, nn.Module]] = []
    consumers: dict[int, int] = {}

    def after_layer(layer, inputs, output):
        if not isinstance(output, torch.Tensor):
            return
        keep_alive.append(output)
        if isinstance(layer, nn.Conv2d):
            produced[id(output)] = layer
            return
        rows[id(layer)] = max(rows.get(id(layer), 0), output.numel() // max(1, output.shape[-1]))
        if output.is_contiguous():
            linear_outputs[(output.data_ptr(), output.numel(), output.shape[-1])] = layer

    def before_norm(norm, inputs):
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is None:
            return
        if isinstance(norm, nn.BatchNorm2d):
            layer = produced.get(id(x))
        else:  # a BatchNorm1d normalises dimension 1: the features only of a 2-D input
            layer = linear_outputs.get((x.data_ptr(), x.numel(), x.shape[-1])) if x.dim() == 2 else None
        if layer is not None:
            consumers[id(layer)] = consumers.get(id(layer), 0) + 1
            pairs.append((layer, norm))

    with hooked(forward=((part, after_layer) for part in model.modules() if isinstance(part, (nn.Conv2d, nn.Linear))),
                pre=((part, before_norm) for part in model.modules()
                     if _foldable(part))):
        with torch.inference_mode():
            _output(model, sample)
    # A module called more than once (shared between places) is left alone.
    counts: dict[int, int] = {}
    for layer, norm in pairs:
        counts[id(norm)] = counts.get(id(norm), 0) + 1
    positional = [part for part in model.modules()
                  if type(part) is nn.Linear and rows.get(id(part), 0) > len(sample) * POSITIONS_PER_IMAGE]
    return [(layer, norm) for layer, norm in pairs if consumers[id(layer)] == 1 and counts[id(norm)] == 1], positional


def _foldable(norm: nn.Module) -> bool:
    """A batch norm in eval mode with running statistics, of a class whose forward is known:
    PyTorch's own, or timm's ``BatchNormAct2d`` (the norm, then its ``drop`` and ``act``)."""
    known = type(norm) in (nn.BatchNorm2d, nn.BatchNorm1d) or _is_norm_then_act(norm)
    return known and not norm.training and norm.track_running_stats and norm.running_mean is not None


def _is_norm_then_act(norm: nn.Module) -> bool:
    return type(norm).__name__ == "BatchNormAct2d" and type(norm).__module__.startswith("timm.")


class AfterNorm(nn.Module):
    """What a folded ``BatchNormAct2d`` does after normalising: its dropout, then its
    activation, under their own names, so their paths still name them."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _after_folding(norm: nn.Module) -> nn.Module:
    """What stands in a folded norm's place: nothing, or the activation timm fuses into it."""
    return AfterNorm(norm.drop, norm.act) if _is_norm_then_act(norm) else nn.Identity()


def _fold_pair(layer: nn.Module, norm: nn.Module, layout: torch.memory_format) -> None:
    # In double precision, rounded once to the weights' dtype. Folding in float gives logits
    # as close to the model's, but its weights round differently, and a unit at a ReLU6's
    # kink may then fall the other way: the bundled model's saliency map of the square cat
    # photo (class 281) is 3.6e-7 from the model's own folded in double, 2.6e-3 in float.
    def wide(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.detach().double()

    fuse = fuse_conv_bn_weights if isinstance(layer, nn.Conv2d) else fuse_linear_bn_weights
    with torch.no_grad():
        weight, bias = fuse(wide(layer.weight), wide(layer.bias), wide(norm.running_mean), wide(norm.running_var),
                            norm.eps, wide(norm.weight), wide(norm.bias))
    dtype = layer.weight.dtype
    weight = weight.detach().to(dtype)
    layer.weight = nn.Parameter(weight.contiguous(memory_format=layout) if weight.dim() == 4 else weight,
                                requires_grad=False)
    layer.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)


def _agrees(model: nn.Module, twin: nn.Module, sample: torch.Tensor, tolerance: float) -> bool:
    with torch.inference_mode():
        expected = _output(model, sample).float()
        scale = max(1.0, float(expected.abs().max()))
        for _ in range(2):
            got = _output(twin, sample.clone()).float()
            if got.shape != expected.shape or not bool(((got - expected).abs() <= tolerance * scale).all()):
                return False
    return True
