"""The method registry: ``METHODS[id]`` is a ``MethodSpec``; one module per method.

Every module in this package that defines ``SPEC`` is a method, so adding a method is
adding a file. The table itself is ``engine.methods.registry.METHODS``, filled here. ``FAMILIES`` orders them the way the lecture does, for menus and ``--help``;
a method missing from it is listed last rather than left out.
"""

from __future__ import annotations

import importlib
import pkgutil

from engine.methods.base import MethodContext
from engine.methods.params import MethodSpec, Param
from engine.methods.registry import METHODS

FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Weights and activations", ("filters", "activations")),
    ("Over a dataset", ("neighbors", "embed", "patches", "occlusion", "rise")),
    ("Gradients", ("saliency", "smoothgrad", "integrated-gradients", "gradcam", "guided-backprop", "guided-gradcam",
                   "segment", "sanity-check")),
    ("Transformers", ("attention-rollout",)),
    ("Optimising the input", ("class-viz", "adversarial", "inversion", "dream")),
    ("Texture and style", ("texture", "style", "fast-style-train", "fast-style")),
)


def _discover() -> dict[str, MethodSpec]:
    found: dict[str, MethodSpec] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in ("base", "params", "registry"):
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, MethodSpec):
            if spec.id in found:
                raise RuntimeError(f"two modules define the method '{spec.id}'")
            found[spec.id] = spec
    order = [method_id for _, ids in FAMILIES for method_id in ids]
    rank = {method_id: i for i, method_id in enumerate(order)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(order)), item[0])))


def family_of(method_id: str) -> str:
    return next((name for name, ids in FAMILIES if method_id in ids), "Other")


METHODS.update(_discover())

__all__ = ["FAMILIES", "METHODS", "MethodContext", "MethodSpec", "Param", "family_of"]
