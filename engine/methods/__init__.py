"""The method registry: ``METHODS[id]`` is a ``MethodSpec``; one module per method."""

from __future__ import annotations

from . import activations, dream, embed, filters, neighbors, occlusion, patches, saliency
from .base import MethodContext, MethodSpec, Param

METHODS: dict[str, MethodSpec] = {spec.id: spec for spec in (
    filters.SPEC,
    activations.SPEC,
    saliency.SPEC,
    dream.SPEC,
    occlusion.SPEC,
    neighbors.SPEC,
    embed.SPEC,
    patches.SPEC,
)}

__all__ = ["METHODS", "MethodContext", "MethodSpec", "Param"]
