"""One forward pass per image, remembered: every layer's activations and the prediction.

Clicking through layers must feel instant, so the first look at an image runs the model
once with every module hooked and keeps all outputs (on the CPU, detached). Each later
click only renders what is already here. The cache is keyed by the model object, the
image object and the input size, so a new image or model starts a fresh forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.anatomy.hooks import capture_outputs, first_tensor
from engine.data.images import LoadedImage
from engine.models.model import LoadedModel


@dataclass
class ImageFeatures:
    input: torch.Tensor  # 1x3xHxW, normalised, on the model's device
    logits: torch.Tensor  # 1 x classes, CPU
    activations: dict[str, torch.Tensor]  # module path -> output, CPU, in execution order
    state: object = None  # the model's ModelState, which knows each layer's layout

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
    def __init__(self) -> None:
        # The key holds the model and image objects themselves, compared by identity: an
        # id() alone could be reused by a new image once the old one is freed.
        self._key: tuple | None = None
        self._features: ImageFeatures | None = None

    def clear(self) -> None:
        self._key = None
        self._features = None

    def get(self, model: LoadedModel, image: LoadedImage, size: int | None = None) -> ImageFeatures:
        key = (model.module, image, size, str(model.device))
        if self._features is None or not _same_key(self._key, key):
            self._features = compute_features(model, image, size)
            self._key = key
        return self._features

    def peek(self, model: LoadedModel, image: LoadedImage, size: int | None = None) -> ImageFeatures | None:
        """The features ``get`` would return if they are already computed, else None."""
        key = (model.module, image, size, str(model.device))
        return self._features if self._features is not None and _same_key(self._key, key) else None


def _same_key(old: tuple | None, new: tuple) -> bool:
    return old is not None and old[0] is new[0] and old[1] is new[1] and old[2:] == new[2:]


@torch.no_grad()
def compute_features(model: LoadedModel, image: LoadedImage, size: int | None = None) -> ImageFeatures:
    """Every layer's output and the logits for ``image``. Layers the model overwrites in
    place after their output was taken are captured as copies; which they are is learnt on
    the first forward (a second pass then) and kept in ``model.state``."""
    x = model.preprocessing.to_tensor(image.image, size).to(model.device)
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
    return ImageFeatures(input=x, logits=logits.float().cpu(), activations=activations, state=model.state)
