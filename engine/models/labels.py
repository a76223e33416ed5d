"""Class labels, and turning what a user types (``281`` or ``tabby``) into a class index."""

from __future__ import annotations

from engine.core.errors import MethodInputError


def imagenet_labels() -> list[str]:
    # torchvision ships the 1000 ImageNet class names with its model metadata: offline.
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def generic_labels(count: int) -> list[str]:
    return [f"class {i}" for i in range(count)]


def resolve_class(labels: list[str], spec: str | int) -> int:
    """An index, an exact label, or a label fragment that matches exactly one class."""
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(labels):
            raise MethodInputError(f"class index {index} is out of range: this model has {len(labels)} classes (0-{len(labels) - 1})")
        return index
    lowered = text.lower()
    exact = [i for i, label in enumerate(labels) if label.lower() == lowered]
    if exact:
        return exact[0]
    partial = [i for i, label in enumerate(labels) if lowered in label.lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise MethodInputError(f"no class is called '{text}'; give a class index (0-{len(labels) - 1}) or a label")
    shown = ", ".join(f"{labels[i]} ({i})" for i in partial[:8])
    more = f" and {len(partial) - 8} more" if len(partial) > 8 else ""
    raise MethodInputError(f"'{text}' matches several classes: {shown}{more}; be more specific or give the index")
