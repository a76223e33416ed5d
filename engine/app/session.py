"""The state one window works on: a model, an image, their cached activations.

The GUI's engine thread owns one ``Workbench`` and calls it from jobs; the window itself
only ever sees the plain values these methods return (numpy arrays, dicts, strings), so
no tensor crosses into the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.core.device import available_devices, resolve_device
from engine.core.errors import MethodInputError
from engine.anatomy.activations import FeatureCache
from engine.data.images import LoadedImage, load_image
from engine.core.jobs import CancelToken, Job
from engine.anatomy.layer_tree import LayerNode
from engine.methods import METHODS, MethodContext, MethodSpec, family_of
from engine.models.registry import BUNDLED_MODEL, LoadedModel, available_models, load_model


@dataclass
class ModelInfo:
    name: str
    weights: str
    device: str
    labels: list[str]
    presets: dict[str, str]
    preprocessing: dict
    tree: LayerNode | None = None


@dataclass
class ImageInfo:
    path: str
    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)
    top5: list[tuple[int, str, float]] = field(default_factory=list)
    tree: LayerNode | None = None  # the layer tree at this image's input size


class Workbench:
    def __init__(self) -> None:
        self.model: LoadedModel | None = None
        self.image: LoadedImage | None = None
        self.features = FeatureCache()
        self.device = resolve_device("cpu")

    # -- what the window asks for -------------------------------------------------
    @staticmethod
    def methods() -> dict[str, MethodSpec]:
        return dict(METHODS)

    @staticmethod
    def method_families() -> dict[str, str]:
        """Each method's family, for grouping them in menus."""
        return {method_id: family_of(method_id) for method_id in METHODS}

    @staticmethod
    def model_names() -> list[tuple[str, str]]:
        return [(spec.name, spec.description) for spec in available_models()]

    @staticmethod
    def devices() -> list[str]:
        return available_devices()

    def load_model(self, name: str = BUNDLED_MODEL, weights_path: str | None = None, trust: bool = False,
                   progress=None, cancel: CancelToken | None = None) -> ModelInfo:
        model = load_model(name, weights_path=weights_path, device=self.device, trust=trust, progress=progress, cancel=cancel)
        self.model = model
        self.features.clear()
        return self.model_info()

    def model_info(self) -> ModelInfo:
        model = self._require_model()
        return ModelInfo(name=model.name, weights=model.weights, device=str(model.device), labels=model.labels,
                         presets=model.layer_presets, preprocessing=model.preprocessing.as_dict(), tree=self.layer_tree())

    def set_device(self, name: str) -> str:
        self.device = resolve_device(name)
        if self.model is not None:
            self.model.to(self.device)
            self.features.clear()
        return str(self.device)

    def open_image(self, path: str) -> ImageInfo:
        self.image = load_image(path)
        return self.image_info()

    def image_info(self) -> ImageInfo:
        image = self._require_image()
        top5 = self.features.get(self.model, image).top_k(self.model.labels) if self.model else []
        return ImageInfo(path=image.path, rgb=image.to_array(), notes=list(image.notes), top5=top5,
                         tree=self.layer_tree() if self.model else None)

    @staticmethod
    def describe_dataset(spec: str) -> str:
        """One line on what a dataset holds (the listing only: nothing is decoded)."""
        from engine.data.datasets import open_dataset

        dataset = open_dataset(spec)
        classes = dataset.classes
        labelled = f" in {len(classes)} labels" if classes else " (no subfolders, so no labels)"
        skipped = f"; {len(dataset.failures)} could not be listed" if dataset.failures else ""
        return f"{dataset.name}: {len(dataset):,} images{labelled}{skipped}"

    def layer_tree(self) -> LayerNode:
        model = self._require_model()
        if self.image is not None:
            width, height = model.preprocessing.input_size(*self.image.size)
        else:
            height = width = model.preprocessing.size
        return model.state.layer_tree((height, width))

    def run(self, method_id: str, params: dict, cancel: CancelToken) -> Job:
        spec = METHODS.get(method_id)
        if spec is None:
            raise MethodInputError(f"unknown method '{method_id}'")
        bound = spec.bind({k: v for k, v in params.items() if v is not None})
        ctx = MethodContext(model=self._require_model(), image=self.image, cancel=cancel, features=self.features)
        if spec.needs_image:
            ctx.require_image()
        return spec.run(ctx, **bound)

    # -- helpers ------------------------------------------------------------------
    def _require_model(self) -> LoadedModel:
        if self.model is None:
            raise MethodInputError("no model is loaded yet")
        return self.model

    def _require_image(self) -> LoadedImage:
        if self.image is None:
            raise MethodInputError("no image is open: open one with File > Open image")
        return self.image
