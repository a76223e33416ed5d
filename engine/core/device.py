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


# What the allocators say when memory runs out. CUDA and MPS: "... out of memory ...".
# PyTorch's CPU allocator (c10/core/impl/alloc_cpu.cpp) on Linux and macOS:
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code 12
# (Cannot allocate memory)"; on Windows: "DefaultCPUAllocator: not enough memory: you tried
# to allocate N bytes." oneDNN, which runs convolutions on the CPU, reports a scratchpad
# it could not allocate as "could not create a primitive" (seen under a capped address
# space with other work on the cores); it raises that for nothing else a valid model does.
OUT_OF_MEMORY_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                         "could not create a primitive")


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised from (``raise ... from exc``), is a failed allocation.

    A ConvScope error's own words are never taken for an allocator's, only its cause:
    code that turns a RuntimeError into a message for the user may have wrapped an
    allocation that failed.
    """
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom)):
            return True
        if not isinstance(exc, ConvScopeError):
            text = str(exc).lower()
            if any(phrase in text for phrase in OUT_OF_MEMORY_PHRASES):
                return True
        exc = exc.__cause__
    return False


OUT_OF_MEMORY_MESSAGE = (
    "ran out of memory: try a smaller image size or fewer steps, or close other programs (on a GPU, the CPU has more memory)"
)
