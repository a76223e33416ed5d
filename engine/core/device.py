"""Choosing where the model runs."""

from __future__ import annotations

import torch

from engine.core.errors import ConvScopeError


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(1, torch.cuda.device_count())]
    return devices


def resolve_device(name: str | None) -> torch.device:
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConvScopeError("CUDA was asked for, but this machine has no usable CUDA GPU; use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvScopeError(f"unknown device '{name}'; use cpu or cuda") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConvScopeError(f"there is no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    # The CPU allocator says "DefaultCPUAllocator: can't allocate memory: you tried to allocate ...".
    text = str(exc).lower()
    return (oom is not None and isinstance(exc, oom)) or "out of memory" in text or "can't allocate memory" in text


OUT_OF_MEMORY_MESSAGE = (
    "ran out of memory: try a smaller image size or fewer steps, close other programs, or switch to the CPU"
)
