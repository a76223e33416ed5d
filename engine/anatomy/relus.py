"""ReLU-like units of a model: its ReLU modules, and the ReLUs it applies as functions.

ReLU-like means a hinge at zero with slope 1 above it: ``nn.ReLU``, ``nn.ReLU6`` and
``nn.LeakyReLU``, in place or not (guided backprop's rule applies to those; see
``engine.attribution.guided``). A model that applies ReLU as a *function* (``F.relu`` /
``torch.relu`` outside a ReLU module, e.g. torchvision's GoogLeNet and Inception in
``BasicConv2d``, DenseNet's ``forward``) has ReLUs no module hook can reach;
``functional_relu_calls`` finds such calls by watching one forward pass under a
``TorchFunctionMode`` (as ``engine.anatomy.receptive_field`` traces fields). What it finds
depends on the model's code, not on the image, so ``ModelState.functional_relus`` keeps it.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.anatomy.hooks import hooked

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
# torch functions that compute a ReLU-like activation; hardtanh only with min_val == 0 (ReLU6).
_RELU_FUNCTIONS = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_"}


def is_relu_like(module: nn.Module) -> bool:
    return isinstance(module, RELU_LIKE)


class _ReluCallWatcher(TorchFunctionMode):
    """Sees every torch call of a forward pass; notes ReLU calls made outside ReLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []  # the modules running, innermost last
        self.found: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _RELU_FUNCTIONS and self._is_relu_like_call(name, args, kwargs):
            path, module = self.stack[-1] if self.stack else ("", None)
            if module is None or not is_relu_like(module):
                self.found.setdefault(path, type(module).__name__ if module is not None else "model")
        return func(*args, **kwargs)

    @staticmethod
    def _is_relu_like_call(name: str, args: tuple, kwargs: dict) -> bool:
        if not name.startswith("hardtanh"):
            return True
        low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        return float(low) == 0.0  # hardtanh(x, 0, 6) is ReLU6; hardtanh(x, -1, 1) is not ReLU-like


def functional_relu_calls(model: nn.Module, sample: torch.Tensor) -> dict[str, str]:
    """Module path -> class name of each module that calls a ReLU function itself, found in
    one forward pass of ``sample`` (a model input) without gradients."""
    watcher = _ReluCallWatcher()

    def enter(path: str, module: nn.Module, _inputs) -> None:
        watcher.stack.append((path, module))

    def leave(_module, _inputs, _output) -> None:
        watcher.stack.pop()

    modules = list(model.named_modules())
    with hooked(forward=((module, leave) for _, module in modules),
                pre=((module, partial(enter, path)) for path, module in modules)):
        with torch.no_grad(), watcher:
            model(sample)
    return watcher.found
