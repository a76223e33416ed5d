"""A twin of a network: its module objects copied, its tensors shared (or replaced), no hooks.

Work that must register hooks, switch train/eval flags or swap modules (folding, tracing)
does it on a twin, so the model itself is never touched: another thread may be running
it at that moment, and hooks registered on it would fire in that thread's forward pass.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn


def has_script_modules(module: nn.Module) -> bool:
    """Whether any part of ``module`` is compiled TorchScript, which cannot be twinned."""
    return any(isinstance(part, torch.jit.ScriptModule) for part in module.modules())


def module_twin(module: nn.Module, tensor: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``module``'s module objects, without any hooks, around its parameters and
    buffers, each the same tensor object or, with ``tensor``, ``tensor(t)`` (a parameter's
    replacement is a parameter again).

    Raises whatever ``copy.deepcopy`` raises for a module it cannot copy (TorchScript
    modules among them: check ``has_script_modules`` first).
    """
    memo: dict[int, object] = {}
    for name, value in list(module.named_parameters(remove_duplicate=True)) + list(module.named_buffers()):
        if tensor is None:
            memo[id(value)] = value
        elif isinstance(value, nn.Parameter):
            memo[id(value)] = nn.Parameter(tensor(value.detach()), requires_grad=value.requires_grad)
        else:
            memo[id(value)] = tensor(value)
    # Hook dictionaries are not copied, only replaced by empty ones: a hook another thread
    # registers on the model meanwhile cannot make the copy fail half way.
    for part in module.modules():
        for attribute, value in vars(part).items():
            if attribute.endswith(("_hooks", "_hooks_with_kwargs", "_hooks_always_called")) and isinstance(value, dict):
                memo[id(value)] = OrderedDict() if isinstance(value, OrderedDict) else type(value)()
    return copy.deepcopy(module, memo)


_REWRITTEN: dict[tuple[type, Callable], type] = {}


def rewrite_forward(part: nn.Module, name: str, forward: Callable) -> None:
    """Give ``part`` (a twin's own module object) ``forward`` in place of its class's: its class
    becomes a subclass called ``name`` (made once per class and forward), so it stays an
    instance of the model's class while the model's module keeps its own."""
    key = (type(part), forward)
    if key not in _REWRITTEN:
        _REWRITTEN[key] = type(name, (type(part),), {"forward": forward})
    part.__class__ = _REWRITTEN[key]
