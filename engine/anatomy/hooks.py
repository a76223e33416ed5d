"""Hooks on a model's modules as context managers: they are always removed, even when a job fails.

``hooked`` is the one place that registers module hooks and removes them in ``finally``;
``capture_outputs``, ``truncate_after`` and every method that watches or changes what a
module passes on go through it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from engine.core.errors import MethodInputError
from engine.anatomy.layers import find_module, is_hookable

ForwardHook = Callable[[nn.Module, tuple, Any], Any]  # (module, inputs, output) -> replacement output or None
PreHook = Callable[[nn.Module, tuple], Any]  # (module, inputs) -> replacement inputs or None


def first_tensor(output: Any) -> torch.Tensor | None:
    """A module's output, or the first tensor inside it when it returns several (GoogLeNet's
    auxiliary outputs, a tuple, a list or a dict of outputs), looking inside nested ones."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


@contextmanager
def hooked(forward: Iterable[tuple[nn.Module, ForwardHook]] = (),
           pre: Iterable[tuple[nn.Module, PreHook]] = (), with_kwargs: bool = False) -> Iterator[None]:
    """Within the block, each ``(module, hook)`` of ``forward`` runs after its module's
    forward and each of ``pre`` before it; all are removed on leaving, even on error.
    ``with_kwargs``: the hooks also receive the call's keyword arguments (PyTorch's
    ``with_kwargs``), and pre hooks may replace them.

    The pairs may come from generators: they are registered inside the block's guard, so
    a failure half way through registering removes the ones already in place.
    """
    handles = []
    try:
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook, with_kwargs=with_kwargs))
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


class CapturedOutputs(dict):
    """Module path -> output tensor, remembering each tensor's version counter.

    A later in-place operation (ResNet's ``out += identity``) overwrites a tensor that
    was already captured; its version counter then differs, which ``modified_in_place``
    reports so the caller can capture those paths again as copies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, int] = {}

    def modified_in_place(self) -> set[str]:
        return {path for path, version in self.versions.items() if self[path]._version != version}


@contextmanager
def capture_outputs(model: nn.Module, paths: Iterable[str] | None = None, detach: bool = True,
                    copy: Iterable[str] = ()) -> Iterator[CapturedOutputs]:
    """Record the output of each named module (all of them when ``paths`` is None).

    A module called more than once per forward keeps its first output, so a path always
    means one tensor. With ``detach=False`` the tensors stay in the autograd graph, which
    is what gradient-based methods need. Paths in ``copy`` are cloned when captured,
    because the model modifies them in place afterwards.
    """
    wanted = None if paths is None else set(paths)
    copied = set(copy)
    captured = CapturedOutputs()

    def make_hook(path: str):
        def hook(_module, _inputs, output):
            if path in captured:
                return
            tensor = first_tensor(output)
            if tensor is None:
                return
            tensor = tensor.detach() if detach else tensor
            if path in copied:
                tensor = tensor.clone()
            captured[path] = tensor
            captured.versions[path] = tensor._version

        return hook

    with hooked((module, make_hook(path)) for path, module in model.named_modules()
                if (wanted is None or path in wanted) and is_hookable(module)):
        yield captured


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


@contextmanager
def truncate_after(model: nn.Module, path: str) -> Iterator[dict[str, torch.Tensor]]:
    """Run a forward only as far as ``path``: its output is in the yielded dict.

    Optimisation methods that only need one layer (DeepDream, inversion) save the rest of
    the network's compute on every step. Use ``forward_to`` to run it.
    """
    module = find_module(model, path)
    if not is_hookable(module):
        raise MethodInputError(f"'{path}' is compiled TorchScript: ConvScope cannot read its layers' outputs. "
                               "Load the model as an architecture plus a state-dict file instead")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        captured[path] = first_tensor(output)
        raise StopForward

    with hooked([(module, hook)]):
        yield captured


def forward_to(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of layer ``path`` for input ``x``, computing nothing after it."""
    with truncate_after(model, path) as captured:
        try:
            model(x)
        except StopForward:
            pass
    if path not in captured or captured[path] is None:
        raise MethodInputError(f"layer '{path}' did not run in the forward pass, so it has no output to use")
    return captured[path]
