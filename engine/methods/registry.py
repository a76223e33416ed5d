"""The table of methods: method id -> ``MethodSpec``.

``engine.methods`` fills it once, when it scans its package for method modules. It lives
apart from that scan so that a method which runs other methods (sanity-check, segment)
looks them up here, at run time, without importing the package that imports it.
"""

from __future__ import annotations

from engine.methods.params import MethodSpec

METHODS: dict[str, MethodSpec] = {}


def forward_only_note(reason: str) -> str:
    """What to say of a model no gradient can be taken through (``LoadedModel.forward_only``,
    ``reason`` why): which methods still run on it."""
    runs = [run for spec in METHODS.values() if (run := spec.gradient_free_run())]
    return (f"no gradient can be taken through this model: {reason}. The methods that need gradients refuse it; "
            f"these run: {', '.join(runs)}")


def model_notes(model) -> list[str]:
    """What the user should know about a loaded model (a ``LoadedModel``): how it was opened,
    and, when no gradient goes through it, which methods still run."""
    return list(model.notes) + ([forward_only_note(model.forward_only)] if model.forward_only else [])
