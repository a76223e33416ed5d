"""One forward pass per image, remembered: every layer's activations and the prediction.

Clicking through layers must feel instant, so the first look at an image runs the model
once with every module hooked and keeps all outputs (on the CPU, detached). Each later
click only renders what is already here. The cache is keyed by the model object, the
image object and the input size, so a new image or model starts a fresh forward. That
forward also keeps its graph (``PixelGraph``): the photo's saliency map, of any class, is
then a backward pass alone.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.anatomy.hooks import capture_outputs, first_tensor
from engine.data.images import LoadedImage
from engine.models.model import LoadedModel

# The photo on show keeps its graph while its leaf outputs take at most this (ResNet-50d at
# 224x336: 217 MB).
KEPT_GRAPH_BYTES = 512 * 2**20
KEPT_LOGITS = 64  # images whose predictions are kept (a folder run's group is far fewer)
PREDICT_BATCH = 8  # photos a prediction pass: eight in 134 ms against 156 one at a time (bundled model, 2 cores)


class PixelGraph:
    """The photo's forward pass kept with its graph, from the 0..1 pixels (a leaf) to the
    logits: the gradient of any class's score with respect to the pixels is then one
    backward pass, about 60% of a forward and backward pass (saliency: ViT-tiny 52 ms
    against 87, ResNet-18 46 against 74, one 224x336 photo on 2 cores). It runs through the
    model itself, not the fast copy, so the gradient is the model's own, to float rounding.

    The graph holds what the backward pass needs, about one image's activations again
    (``KEPT_GRAPH_BYTES`` caps it); it is freed with the features, when another photo or
    model takes their place."""

    def __init__(self, pixels: torch.Tensor, logits: torch.Tensor, weights: tuple) -> None:
        self.pixels, self.logits, self.weights = pixels, logits, weights
        self._lock = threading.Lock()

    def score_gradient(self, model: LoadedModel, index: int) -> torch.Tensor | None:
        """d logit[index] / d pixels (1 x 3 x H x W), or None where the graph cannot give it:
        the weights changed since it was recorded, or a backward pass through it fails (the
        model changed in place a tensor autograd keeps), which also drops it."""
        with self._lock:  # one backward pass at a time through the shared graph
            if self.logits is None or model.state.weights_version() != self.weights:
                return None
            try:
                gradient, = torch.autograd.grad(self.logits[0, index], self.pixels, retain_graph=True)
            except RuntimeError:
                self.logits = None
                return None
            return gradient


@dataclass
class ImageFeatures:
    input: torch.Tensor  # 1x3xHxW, normalised, on the model's device
    logits: torch.Tensor  # 1 x classes, CPU
    activations: dict[str, torch.Tensor]  # module path -> output, CPU, in execution order
    state: object = None  # the model's ModelState, which knows each layer's layout
    graph: PixelGraph | None = None  # the forward pass's graph, when kept (``compute_features``)

    def layer_output(self, path: str) -> torch.Tensor:
        """Layer ``path``'s output as a map (N x C x h x w) when it is spatial in any layout
        (``engine.anatomy.layouts``: channels-last, a transformer's tokens), else as it is."""
        output = self.activations[path]
        return output if self.state is None else self.state.as_map(path, output, tuple(self.input.shape[-2:]))

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits[0].double(), dim=0).float()

    def top_k(self, labels: list[str], k: int = 5) -> list[tuple[int, str, float]]:
        probs = self.probabilities
        values, indices = probs.topk(min(k, probs.numel()))
        return [(int(i), labels[int(i)], float(v)) for v, i in zip(values, indices)]


class FeatureCache:
    """One image's features (every layer, for the window's clicks), and the predictions of
    the last few images (logits only: what a folder run needs to pick each photo's class,
    computed for several photos in one pass by ``predict``)."""

    def __init__(self) -> None:
        # The key holds the model and image objects themselves, compared by identity: an
        # id() alone could be reused by a new image once the old one is freed.
        self._key: tuple | None = None
        self._features: ImageFeatures | None = None
        # id key -> (model module, image) held weakly, so a photo a folder run has finished
        # with is freed, with its logits; an entry whose objects are gone never matches.
        self._logits: OrderedDict[tuple, tuple[weakref.ref, weakref.ref, torch.Tensor]] = OrderedDict()

    def clear(self) -> None:
        self._key = None
        self._features = None
        self._logits.clear()

    def remember_logits(self, model: LoadedModel, image: LoadedImage, logits: torch.Tensor, size: int | None = None) -> None:
        """Keep ``image``'s logits (1 x classes, computed elsewhere: ``predict``) for ``logits``."""
        key = (id(model.module), id(image), size, str(model.device))
        self._logits[key] = (weakref.ref(model.module), weakref.ref(image), logits.detach().float().cpu())
        self._logits.move_to_end(key)
        while len(self._logits) > KEPT_LOGITS:
            self._logits.popitem(last=False)

    def logits(self, model: LoadedModel, image: LoadedImage, size: int | None = None) -> torch.Tensor:
        """The model's logits for ``image`` (1 x classes): from its features when they are
        computed, else as remembered, else from one forward pass without hooks (which is
        remembered in turn)."""
        known = self.peek(model, image, size)
        if known is not None:
            return known.logits
        entry = self._logits.get((id(model.module), id(image), size, str(model.device)))
        if entry is not None and entry[0]() is model.module and entry[1]() is image:
            return entry[2]
        logits, = predict(model, [image], size)
        self.remember_logits(model, image, logits, size)
        return logits

    def get(self, model: LoadedModel, image: LoadedImage, size: int | None = None) -> ImageFeatures:
        key = (model.module, image, size, str(model.device))
        if self._features is None or not _same_key(self._key, key):
            self._features = compute_features(model, image, size, keep_graph=True)
            self._key = key
        return self._features

    def peek(self, model: LoadedModel, image: LoadedImage, size: int | None = None) -> ImageFeatures | None:
        """The features ``get`` would return if they are already computed, else None."""
        key = (model.module, image, size, str(model.device))
        return self._features if self._features is not None and _same_key(self._key, key) else None


def _same_key(old: tuple | None, new: tuple) -> bool:
    return old is not None and old[0] is new[0] and old[1] is new[1] and old[2:] == new[2:]


def predict(model: LoadedModel, images: Sequence[LoadedImage], size: int | None = None,
            batch: int = PREDICT_BATCH) -> list[torch.Tensor]:
    """Each image's logits (1 x classes, CPU), photos of one input size ``batch`` to a pass
    through the model itself (the window's predictions come from it too, so a photo's
    top class is the one the window shows)."""
    inputs = [model.preprocessing.to_tensor(image.image, size) for image in images]
    by_shape: dict[tuple, list[int]] = {}
    for index, x in enumerate(inputs):
        by_shape.setdefault(tuple(x.shape), []).append(index)
    found: list[torch.Tensor | None] = [None] * len(images)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            with torch.inference_mode():
                logits = first_tensor(model.module(torch.cat([inputs[i] for i in chunk]).to(model.device)))
            for row, index in enumerate(chunk):
                found[index] = logits[row:row + 1].float().cpu()
    return found


def compute_features(model: LoadedModel, image: LoadedImage, size: int | None = None,
                     keep_graph: bool = False) -> ImageFeatures:
    """Every layer's output and the logits for ``image``. Layers the model overwrites in
    place after their output was taken are captured as copies; which they are is learnt on
    the first forward (a second pass then) and kept in ``model.state``.

    ``keep_graph``: the pass also records its graph, kept as the features' ``graph``
    (``PixelGraph``) where the model gives gradients and the graph fits ``KEPT_GRAPH_BYTES``.
    Recording costs the forward nothing measurable (37.2 ms and 37.4 for ViT-tiny, 20.6 and
    21.0 for ConvNeXt-atto, one 224x336 photo on 2 cores)."""
    unit = model.preprocessing.to_unit_tensor(image.image, size).to(model.device)
    if keep_graph and _graph_fits(model, unit):
        try:
            return _features(model, unit.requires_grad_(True))
        except RuntimeError:  # code that works only without a graph (an in-place change of what autograd keeps)
            unit = unit.detach()
    with torch.no_grad():
        return _features(model, unit)


def _graph_fits(model: LoadedModel, unit: torch.Tensor) -> bool:
    return not model.forward_only and model.state.activation_bytes(tuple(unit.shape[-2:])).total <= KEPT_GRAPH_BYTES


def _features(model: LoadedModel, unit: torch.Tensor) -> ImageFeatures:
    x = model.preprocessing.normalise(unit)
    copy = model.state.overwritten_paths()
    with capture_outputs(model.module, copy=copy) as captured:
        logits = model.module(x)
    overwritten = captured.modified_in_place()
    if overwritten:
        copy = model.state.learn_overwritten(overwritten)
        with capture_outputs(model.module, copy=copy) as captured:
            logits = model.module(x)
    logits = first_tensor(logits)
    activations = {path: tensor.float().cpu() for path, tensor in captured.items()}
    graph = PixelGraph(unit, logits, model.state.weights_version()) if logits.requires_grad else None
    return ImageFeatures(input=x.detach(), logits=logits.detach().float().cpu(), activations=activations,
                         state=model.state, graph=graph)
