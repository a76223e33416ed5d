"""The context every method runs in: the model, the image, the cancel token, the caches.

A method module defines ``SPEC = MethodSpec(...)`` and a generator function ``run(ctx, p)``,
``p`` its bound parameters; ``engine.methods.params`` declares and binds them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

from engine.core.errors import MethodInputError
from engine.anatomy.activations import FeatureCache, ImageFeatures
from engine.anatomy.hooks import capture_outputs
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken
from engine.anatomy.layers import resolve_layer
from engine.models.labels import resolve_class
from engine.models.registry import LoadedModel


_BLANK_SHAPES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, tuple]]" = weakref.WeakKeyDictionary()


def blank_output_shapes(model: LoadedModel) -> dict[str, tuple]:
    if model.module not in _BLANK_SHAPES:
        size = model.preprocessing.size
        with torch.no_grad(), capture_outputs(model.module) as captured:
            model.module(torch.zeros(1, 3, size, size, device=model.device))
        _BLANK_SHAPES[model.module] = {path: tuple(t.shape) for path, t in captured.items()}
    return _BLANK_SHAPES[model.module]


@dataclass
class MethodContext:
    model: LoadedModel
    image: Optional[LoadedImage]
    cancel: CancelToken = field(default_factory=CancelToken)
    features: FeatureCache = field(default_factory=FeatureCache)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def require_image(self) -> LoadedImage:
        if self.image is None:
            raise MethodInputError("this method needs an image: open one first")
        return self.image

    def image_features(self) -> ImageFeatures:
        return self.features.get(self.model, self.require_image())

    def output_shapes(self) -> dict[str, tuple]:
        """Every module's output shape in execution order: from the image's forward when
        there is an image, else from one forward of a blank input at the model's size."""
        if self.image is not None:
            return self.image_features().shapes
        return blank_output_shapes(self.model)

    def resolve_layer(self, spec: str | None, default: str = "middle") -> str:
        return resolve_layer(self.model.module, spec, self.model.layer_presets, self.output_shapes(), default=default)

    def resolve_target(self, spec: str | int | None) -> dict:
        """{"index", "label"} of the requested class, or of the image's top-1."""
        if spec is None or str(spec).strip() == "":
            index = int(self.image_features().logits[0].argmax())
        else:
            index = resolve_class(self.model.labels, spec)
        return {"index": index, "label": self.model.labels[index]}

    def generator(self, seed: int) -> torch.Generator:
        """A CPU generator, so a seed reproduces the same noise on every device."""
        return torch.Generator().manual_seed(int(seed))
