"""The context every method runs in: the model, the image, the cancel token, the caches.

A method module defines ``SPEC = MethodSpec(...)`` and a generator function ``run(ctx, p)``,
``p`` its bound parameters; ``engine.methods.params`` declares and binds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import torch

from engine.core.errors import MethodInputError
from engine.anatomy.activations import FeatureCache, ImageFeatures
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken
from engine.anatomy.layers import resolve_layer
from engine.methods.registry import forward_only_note
from engine.models.labels import resolve_class
from engine.models.model import LoadedModel




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

    def require_gradients(self, method_id: str) -> None:
        """Refuse a run of ``method_id``, which takes gradients through the model, when the
        model gives none (``LoadedModel.forward_only``), saying which methods still run."""
        if self.model.forward_only:
            raise MethodInputError(f"{method_id} takes gradients through the model, and "
                                   f"{forward_only_note(self.model.forward_only)}")

    def image_features(self) -> ImageFeatures:
        return self.features.get(self.model, self.require_image())

    def output_shapes(self) -> Mapping[str, tuple]:
        """Every module's output shape in execution order, for the image's model input when
        there is an image, else for the model's own square input size (``model.state``)."""
        if self.image is None:
            return self.model.state.output_shapes()
        width, height = self.model.preprocessing.input_size(*self.image.size)
        return self.model.state.output_shapes((height, width))

    def resolve_layer(self, spec: str | None, default: str = "middle") -> str:
        return resolve_layer(self.model.module, spec, self.model.presets, self.output_shapes(), default=default)

    def resolve_target(self, spec: str | int | None) -> dict:
        """{"index", "label"} of the requested class, or of the image's top-1."""
        if spec is None or str(spec).strip() == "":
            index = int(self.features.logits(self.model, self.require_image())[0].argmax())
        else:
            index = resolve_class(self.model.labels, spec)
        return {"index": index, "label": self.model.labels[index]}

    def generator(self, seed: int) -> torch.Generator:
        """A CPU generator, so a seed reproduces the same noise on every device."""
        return torch.Generator().manual_seed(int(seed))
