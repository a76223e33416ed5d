"""What every method shares: its parameters, its description and the context it runs in.

A method module defines ``SPEC = MethodSpec(...)`` and a generator function ``run(ctx,
**params)``. ``Param`` declarations are the single source of the CLI flags and the GUI
panel's form, so both always offer the same options with the same defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from engine.core.errors import MethodInputError
from engine.anatomy.activations import FeatureCache, ImageFeatures
from engine.data.images import LoadedImage
from engine.core.jobs import CancelToken, Job
from engine.anatomy.layers import resolve_layer
from engine.models.labels import resolve_class
from engine.models.model import LoadedModel


@dataclass(frozen=True)
class Param:
    name: str  # python name; the CLI flag is --name-with-dashes
    # "int", "float", "str", "bool", "choice", "layer", "target", "channel", "dataset",
    # "image" (a path to a picture), "images" (several, in order), "file" (any file to read),
    # "save_file" (a file to write)
    kind: str
    default: Any = None
    help: str = ""
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    special: str = ""  # what the minimum value means when it is a sentinel ("model size" for 0)
    # Values worth offering, asked afresh each time (trained styles in the library): the
    # GUI lists them in the field, which still takes any other value.
    suggest: Callable[[], list[str]] | None = field(default=None, compare=False)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any) -> Any:
        if value is None:
            return None
        if self.kind == "images":
            paths = [str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if str(v).strip()]
            return paths or None
        try:
            if self.kind in ("int", "channel"):
                value = int(value)
            elif self.kind == "float":
                value = float(value)
            elif self.kind == "bool":
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise MethodInputError(f"{self.flag} expects {'a number' if self.kind != 'bool' else 'true or false'}, not '{value}'") from None
        if self.choices and value not in self.choices:
            raise MethodInputError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}, not '{value}'")
        if self.minimum is not None and isinstance(value, (int, float)) and value < self.minimum:
            raise MethodInputError(f"{self.flag} must be at least {self.minimum}, not {value}")
        if self.maximum is not None and isinstance(value, (int, float)) and value > self.maximum:
            raise MethodInputError(f"{self.flag} must be at most {self.maximum}, not {value}")
        return value


@dataclass(frozen=True)
class MethodSpec:
    id: str
    title: str
    summary: str
    params: tuple[Param, ...]
    run: Callable[..., Job]
    needs_image: bool = True
    streams_frames: bool = False  # optimisation methods show their image evolving

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def bind(self, values: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``values``, each checked and converted."""
        known = {p.name: p for p in self.params}
        unknown = set(values) - set(known)
        if unknown:
            raise MethodInputError(f"{self.id} has no option {', '.join(sorted(unknown))}")
        bound = self.defaults()
        for name, value in values.items():
            bound[name] = known[name].coerce(value)
        return bound


# Parameters many methods take, declared once.
LAYER = Param("layer", "layer", "middle", "module path, or early / middle / late")
TARGET = Param("target", "target", None, "class index or label (default: the top-1 class)")
SEED = Param("seed", "int", 0, "random seed; the same seed gives the same result on the CPU")
FEATURE_LAYER = Param("layer", "layer", "penultimate",
                      "the feature layer, averaged over space; penultimate is what feeds the classifier")
DATASET = Param("dataset", "dataset", "samples", "a folder of images (subfolders become labels), or 'samples' / 'digits'")
# What the attribution methods share.
OVERLAY = Param("overlay", "bool", True, "draw the map over the photo; off: the map on its own")
BATCH = Param("batch", "int", 0, "images per forward/backward pass (0: automatic)", minimum=0, special="auto")
CAM_LAYER = Param("layer", "layer", "late", "the convolutional layer whose channels Grad-CAM weights "
                                           "(late: the last conv layer's activated output)")
SHOW = Param("show", "choice", "map", "map: |gradient| as a heat map; rgb: the gradient itself as a picture",
             choices=("map", "rgb"))


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

    def output_shapes(self) -> Mapping[str, tuple]:
        """Every module's output shape in execution order, for the image's model input when
        there is an image, else for the model's own square input size (``model.state``)."""
        if self.image is None:
            return self.model.state.output_shapes()
        width, height = self.model.preprocessing.input_size(*self.image.size)
        return self.model.state.output_shapes((height, width))

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
