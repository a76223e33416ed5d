"""Which layer to look at: "early", "middle" and "late" on any network, and Grad-CAM's layer.

A model ConvScope knows by name carries hand-picked presets (``engine.models.zoo``). Any
other network (timm's, an ONNX file, the user's own) gets them from its anatomy:

- **late**, also the recommended Grad-CAM layer, is the last spatial layer (a map, a
  channels-last map or a token grid with more than one cell) that the class score still
  depends on: one forward and backward pass of a random image tells which layers' grids
  receive gradient. In a CNN that is the last stage before global pooling; in a ViT that
  pools its class token, the patch tokens of the last block's output never reach the
  score (a Grad-CAM there is blank, the failure of pytorch-grad-cam #403 and the like),
  so it is the input of the last attention, ``blocks.N.norm1``. Among layers that hand
  on the same tensor (a block and its last activation) the stage's name is kept. Linear
  and convolution outputs inside a block (a ViT's ``qkv``) are passed over when a block,
  norm or activation output is there instead.
- **early** and **middle** come from the model's stages where it names them (timm's
  ``feature_info``: each stage's module and its stride): early is the last stage at
  stride 4 (edges, colours, simple textures), middle the last at stride 8-16 (textures,
  patterns). A model whose stages all share one stride (a ViT's blocks) takes the blocks a
  fifth and half of the way in. Without stages, the spatial layers at those fractions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.anatomy.hooks import capture_outputs, first_tensor, hooked
from engine.anatomy.layouts import TOKENS, MapLayout
from engine.anatomy.twin import has_script_modules, module_twin

# Outputs a recommended layer is not taken from while a block, norm or activation output
# sharing its place is there: projections inside attention and MLPs.
_PROJECTIONS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Dropout, nn.Identity)
_DEPTH_FRACTIONS = {"early": 0.2, "middle": 0.5}


PRESET_KEYWORDS = ("early", "middle", "late")
GRADCAM = "Grad-CAM"


@dataclass(frozen=True)
class LayerGuide:
    """What the layers are good for, as the layer tree and ``python main.py layers`` mark
    them: the recommended Grad-CAM layer (``score_layer``), the layers "early", "middle" and
    "late" stand for, and the layers whose units see the whole image though no receptive
    field was traced for them (``engine.anatomy.whole_image``). It takes a forward and
    backward pass to work out, so the tree is shown before it and marked once it is known
    (``LoadedModel.layer_guide``)."""

    gradcam: str | None = None
    presets: Mapping[str, str] = field(default_factory=dict)
    whole_image: frozenset[str] = frozenset()

    def roles(self, path: str) -> list[str]:
        """What layer ``path`` is marked as: "Grad-CAM", then its preset keywords in order."""
        marks = [GRADCAM] if path == self.gradcam else []
        return marks + [keyword for keyword in PRESET_KEYWORDS if self.presets.get(keyword) == path]

    def marked_paths(self) -> set[str]:
        """Every layer this guide says something about."""
        return {path for path in (self.gradcam, *self.presets.values()) if path} | set(self.whole_image)


def model_stages(module: nn.Module) -> list[tuple[str, float]]:
    """(module path, stride) of each stage the model names (timm's ``feature_info``), in
    order; empty for models that name none."""
    info = getattr(module, "feature_info", None)
    stages = []
    for entry in info if isinstance(info, (list, tuple)) else getattr(info, "info", []) or []:
        if isinstance(entry, dict) and entry.get("module") and entry.get("reduction"):
            stages.append((str(entry["module"]), float(entry["reduction"])))
    paths = {path for path, _ in module.named_modules()}
    return [(path, stride) for path, stride in stages if path in paths]


def depth_presets(module: nn.Module, layouts: Mapping[str, MapLayout], late: str | None) -> dict[str, str]:
    """{"early", "middle", "late"} -> module path, for a model without hand-picked presets;
    ``late`` is the recommended layer (``score_layer``), which "early" and "middle" precede."""
    order = list(layouts)
    spatial = [path for path in order if layouts[path].spatial and layouts[path].cells > 1]
    if not spatial:
        return {}
    late = late or spatial[-1]
    limit = order.index(late) if late in order else len(order)
    stages = [(path, stride) for path, stride in model_stages(module)
              if path in layouts and layouts[path].spatial and order.index(path) < limit]
    presets = {"late": late}
    strides = {stride for _, stride in stages}
    if len(stages) >= 2 and len(strides) > 1:
        presets["early"] = _last_at(stages, lambda stride: stride <= 4) or stages[0][0]
        presets["middle"] = _last_at(stages, lambda stride: 8 <= stride <= 16) or stages[len(stages) // 2][0]
        if presets["middle"] == presets["early"]:  # every stage is coarse (LeViT starts at stride 16)
            later = [path for path, _ in stages if order.index(path) > order.index(presets["early"])]
            presets["middle"] = later[0] if later else presets["middle"]
    else:
        pool = [path for path, _ in stages] if len(stages) >= 3 else \
            [path for path in spatial if order.index(path) < limit and _is_leaf(module, path)
             and not isinstance(module.get_submodule(path), _PROJECTIONS)] or spatial
        for keyword, fraction in _DEPTH_FRACTIONS.items():
            presets[keyword] = pool[round(fraction * (len(pool) - 1))]
    return presets


def score_layer(module: nn.Module, layouts: Mapping[str, MapLayout], input_size: tuple[int, int]) -> str | None:
    """The last spatial layer whose grid the class scores depend on (see the module's
    docstring), from one forward and backward pass of a random image on a twin of
    ``module``; None when no spatial layer gets any gradient or the pass fails."""
    candidates = [path for path, layout in layouts.items() if layout.spatial and layout.cells > 1]
    probed = _classifier_gradients(module, layouts, candidates, input_size)
    if probed is None:
        return None
    modules, outputs, gradients = probed
    reached = [path for path, gradient in gradients.items()
               if bool(layouts[path].as_map(gradient, input_size).detach().abs().amax() > 0)]
    if not reached:
        return None
    preferred = [path for path in reached if not isinstance(modules.get(path), _PROJECTIONS)] or reached
    last = preferred[-1]
    # The stage (or outermost block) that hands on the same tensor names it best.
    same = [path for path in preferred if outputs[path] is outputs[last]]
    stages = {path for path, _ in model_stages(module)}
    named = [path for path in same if path in stages]
    return named[0] if named else min(same, key=lambda path: (path.count("."), len(path)))


def read_tokens(module: nn.Module, layouts: Mapping[str, MapLayout], path: str,
                input_size: tuple[int, int]) -> tuple[int, ...] | None:
    """The positions of layer ``path``'s tokens that what the classifier reads depends on
    (torchvision's ViT reads its class token alone out of ``encoder.ln``, a mean-pooling
    ViT every patch token), from the same kind of probe as ``score_layer``; None when
    the layer holds no tokens or the probe fails."""
    layout = layouts.get(path)
    if layout is None or layout.kind != TOKENS:
        return None
    probed = _classifier_gradients(module, layouts, [path], input_size)
    if probed is None or path not in probed[2]:
        return None
    gradient = probed[2][path].detach()[0]  # L x C
    return tuple(int(i) for i in torch.nonzero(gradient.abs().amax(dim=-1) > 0).flatten())


def _classifier_gradients(module: nn.Module, layouts: Mapping[str, MapLayout], candidates: list[str],
                          input_size: tuple[int, int]):
    """(the twin's modules by path, the candidates' outputs, their gradients) of a random mix
    of what the classifier reads, from one pass of a random image on a twin of ``module``;
    layers the score does not depend on are left out of the gradients. None when there is
    nothing to probe or the pass fails."""
    if not candidates or has_script_modules(module):
        return None
    try:
        twin = module_twin(module).eval()
    except Exception:  # noqa: BLE001 - a model that cannot be copied gets the plain fallback
        return None
    modules = dict(twin.named_modules())
    # The score is a random mix of what the classifier reads (the input of the last Linear
    # layer to run), so that a classifier whose weights start at zero (timm's MLP-Mixer
    # and others, before training) still tells which layers reach it.
    classifier = next((modules[path] for path in reversed(list(layouts))
                       if isinstance(modules.get(path), nn.Linear)), None)
    read: dict[str, torch.Tensor] = {}

    def keep_input(_module, inputs):
        if "input" not in read and inputs and isinstance(inputs[0], torch.Tensor):
            read["input"] = inputs[0]

    parameter = next(twin.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((1, 3, *input_size), generator=generator).to(device).requires_grad_(True)
    try:
        with torch.enable_grad(), capture_outputs(twin, candidates, detach=False) as outputs, \
                hooked(pre=[(classifier, keep_input)] if classifier is not None else []):
            logits = first_tensor(twin(pixels))
            if "input" in read:
                features = read["input"]
                mix = torch.randn(features.shape[1:], generator=generator).to(features.device, features.dtype)
                score = (features[0] * mix).sum()
            else:
                score = logits[0, int(logits[0].argmax())]
            kept = [path for path in candidates if path in outputs and outputs[path].requires_grad]
            gradients = torch.autograd.grad(score, [outputs[path] for path in kept], allow_unused=True)
    except Exception:  # noqa: BLE001 - the pass may fail for a model's own reasons; the fallback stands
        return None
    return modules, dict(outputs), {path: gradient for path, gradient in zip(kept, gradients) if gradient is not None}


def _last_at(stages: list[tuple[str, float]], wanted) -> str | None:
    matching = [path for path, stride in stages if wanted(stride)]
    return matching[-1] if matching else None



def _is_leaf(module: nn.Module, path: str) -> bool:
    try:
        return not any(True for _ in module.get_submodule(path).children())
    except AttributeError:
        return False
