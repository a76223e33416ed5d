"""What a model is to ConvScope: ``ModelSpec``, a model it knows by name, and ``LoadedModel``,
a network ready to run with everything a method needs besides the network itself.

Kept apart from the loading code (``registry``, ``zoo``, ``user_files``), which all use
these classes and may then import each other freely.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from engine.anatomy.layer_choice import LayerGuide
from engine.anatomy.layers import find_module
from engine.anatomy.model_state import ModelState
from engine.models.preprocessing import Preprocessing

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    source: str  # "bundled" or "torchvision"
    preprocessing: Preprocessing = Preprocessing()
    layer_presets: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadedModel:
    """A network with how to preprocess an image for it, its class labels, which layers
    "early", "middle" and "late" mean, a description of its weights for the export sidecar,
    and ``state``: what has been worked out about it (``engine.anatomy.model_state``)."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    labels: list[str]
    weights: str  # where the weights came from, for the export sidecar
    layer_presets: dict[str, str] = field(default_factory=dict)  # early/middle/late -> module path
    # Why no gradient can be taken through the network (None: it can): the methods that need
    # one refuse to run (``MethodSpec.start``), the others run as usual.
    forward_only: str | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know about how the model was opened
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _state: ModelState = field(init=False, repr=False, compare=False)
    _state_lock: threading.Lock = field(init=False, repr=False, compare=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._state = ModelState(self.module, self.preprocessing.size)

    @property
    def state(self) -> ModelState:
        """The one ``ModelState`` of this network; a new one if ``module`` or the input size
        was replaced since (what was known about the old network does not hold)."""
        with self._state_lock:
            if self._state.module is not self.module or self._state.input_size[0] != self.preprocessing.size:
                self._state = ModelState(self.module, self.preprocessing.size)
            return self._state

    @property
    def presets(self) -> dict[str, str]:
        """What "early", "middle" and "late" mean for this model: its hand-picked presets, else
        the ones its anatomy gives (``ModelState.depth_presets``)."""
        return dict(self.layer_presets) if self.layer_presets else dict(self.state.depth_presets())

    def layer_guide(self, check: Callable[[], None] | None = None) -> LayerGuide:
        """What each layer is good for (``engine.anatomy.layer_choice.LayerGuide``): the
        recommended Grad-CAM layer (a forward and backward pass), the presets, and the layers
        that see the whole image (a forward pass), each worked out once per model; ``check``
        (a cancel token's) is called between the passes."""
        check = check or (lambda: None)
        gradcam = self.state.score_layer()
        check()
        presets = self.presets
        check()
        return LayerGuide(gradcam=gradcam, presets=presets, whole_image=self.state.whole_image_layers())

    def to(self, device: str | torch.device) -> "LoadedModel":
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    def named_module(self, path: str) -> nn.Module:
        return find_module(self.module, path)


def without_inplace(module: nn.Module) -> nn.Module:
    """``module`` with every in-place activation switched to out of place: an in-place one
    overwrites the output of the layer before it after a hook has captured it (VGG's conv
    layers would show post-ReLU values) and breaks gradients through it. One image at a
    time, the memory saved is nothing."""
    for part in module.modules():
        if getattr(part, "inplace", False) is True:
            part.inplace = False
    return module
