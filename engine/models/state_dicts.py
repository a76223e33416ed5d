"""Putting a state dict into a network, or saying which of its keys do not fit.

Shared by every loader that pairs a weights file with an architecture it did not come
with: torchvision's (``engine.models.zoo``) and a user's Python file
(``engine.models.python_files``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.core.errors import ModelLoadError

QUOTED_KEYS = 3  # how many keys of each kind a mismatch message names


def load_state_dict(model: nn.Module, name: str, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state_dict`` into ``model`` (called ``name`` in the message), or raise
    ``ModelLoadError`` naming the missing, unexpected and wrongly shaped keys of ``source``.

    Every key is checked before any is copied, so weights that do not fit leave ``model``
    as it was.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state_dict[key].shape)} instead of {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    problems = [
        f"{what} {_first_few(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape:", wrong_shape))
        if keys
    ]
    if problems:
        raise ModelLoadError(f"the weights in {source.name} do not fit {name}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)


def _first_few(items: list[str], count: int = QUOTED_KEYS) -> str:
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more
