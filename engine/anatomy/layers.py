"""Naming layers: module paths, the "early / middle / late" keywords users start with, and which
modules hooks can see into."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

import torch
from torch import nn

from engine.core.errors import MethodInputError

DEPTH_KEYWORDS = ("early", "middle", "late", "penultimate")
# Modules that only pass a vector along: the "penultimate" layer is what feeds them.
_PASS_THROUGH = (nn.Dropout, nn.Flatten, nn.Identity)
# Where the keywords fall, as a fraction of a model's spatial layers, when a model does not
# name its own presets: early layers see edges and colours, late ones object parts.
_DEPTH_FRACTIONS = {"early": 0.2, "middle": 0.5, "late": 1.0}
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


def is_hookable(module: nn.Module) -> bool:
    """TorchScript modules run compiled code that forward hooks cannot see into."""
    return not isinstance(module, torch.jit.ScriptModule)


def find_module(model: nn.Module, path: str) -> nn.Module:
    try:
        # Down the path's names only (a method asks on every run: walking every module of a
        # large network costs a millisecond); named_modules() only to say what is near.
        return model.get_submodule(path)
    except AttributeError:
        pass
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    close = difflib.get_close_matches(path, modules.keys(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `python main.py layers` lists them"
    raise MethodInputError(f"the model has no layer '{path}'{hint}")


def spatial_layers(model: nn.Module, output_shapes: Mapping[str, tuple]) -> list[str]:
    """Leaf modules with a 4-D (N, C, H, W) output, in execution order of the shapes dict."""
    leaves = {name for name, module in model.named_modules() if not list(module.children())}
    return [path for path, shape in output_shapes.items() if path in leaves and shape is not None and len(shape) == 4]


def resolve_layer(model: nn.Module, spec: str | None, presets: dict[str, str], output_shapes: Mapping[str, tuple] | None = None,
                  default: str = "middle") -> str:
    """A module path from a path or a depth keyword."""
    spec = (spec or default).strip()
    if spec == "penultimate":
        try:
            return penultimate_layer(model, output_shapes or {})
        except MethodInputError:
            if "late" in presets:  # all-convolutional classifiers (SqueezeNet): the last feature layer
                return presets["late"]
            raise
    if spec in DEPTH_KEYWORDS:
        if spec in presets:
            return presets[spec]
        candidates = spatial_layers(model, output_shapes or {})
        if not candidates and not is_hookable(model):
            raise MethodInputError("this is a compiled TorchScript model: ConvScope cannot read its layers' outputs. "
                                   "Load it as an architecture plus a state-dict file to look inside")
        if not candidates:
            raise MethodInputError(f"cannot tell which layer is '{spec}' in this model; give a layer path")
        index = round(_DEPTH_FRACTIONS[spec] * (len(candidates) - 1))
        return candidates[index]
    find_module(model, spec)
    return spec


def penultimate_layer(model: nn.Module, output_shapes: Mapping[str, tuple]) -> str:
    """The layer whose output feeds the final classifier: fc7 of VGG, the pooled features of
    ResNet or EfficientNet. The lecture's nearest neighbours and t-SNE use this space.

    Found in execution order (``output_shapes``): the leaf run just before the last
    Linear layer, passing over dropout, flatten and identity modules that hand on what the
    layer before them gave (as many values, flattened or not). One with fewer receives what the model's own
    code pooled in between: timm's ViTs take their class token out of the last norm's tokens
    and pass it through ``fc_norm`` (an identity), which is then the penultimate layer.
    """
    modules = dict(model.named_modules())
    leaves = [path for path in output_shapes if path in modules and not list(modules[path].children())]
    linear = [i for i, path in enumerate(leaves) if isinstance(modules[path], nn.Linear)]
    if not linear:
        raise MethodInputError("this model has no final Linear layer, so it has no penultimate layer; give a layer path")
    before = leaves[:linear[-1]]
    for index in range(len(before) - 1, -1, -1):
        path = before[index]
        previous = output_shapes.get(before[index - 1]) if index > 0 else None
        if not isinstance(modules[path], _PASS_THROUGH) or (previous is not None
                                                              and math.prod(output_shapes[path]) != math.prod(previous)):
            return path
    raise MethodInputError("nothing runs before this model's classifier; give a layer path")


def conv_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, CONV_TYPES)]


def nearest_conv(model: nn.Module, path: str) -> str:
    """The convolution at ``path``, or the last one defined before it (the one feeding it)."""
    convs = conv_layers(model)
    if not convs:
        raise MethodInputError("this model has no convolution layers, so it has no filters to show")
    if path in convs:
        return path
    names = [name for name, _ in model.named_modules()]
    position = names.index(path) if path in names else len(names)
    # A container's own convs come after it in named_modules(), so look inside it first.
    inside = [c for c in convs if c.startswith(path + ".")] if path else []
    if inside:
        return inside[0]
    before = [c for c in convs if names.index(c) <= position]
    return before[-1] if before else convs[0]
