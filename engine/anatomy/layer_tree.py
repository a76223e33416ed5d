"""The model's modules as a tree, with output shapes, parameter counts and receptive fields.

``build_layer_tree`` runs one traced forward pass (see ``receptive_field``) and nests every
module as ``named_children`` does. The tree depends only on the architecture and the input
size, so ``LayerTreeCache`` keeps one per (model, input size): the GUI asks for it on every
click and pays for the forward pass once.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from engine.core.errors import MethodInputError
from engine.anatomy.receptive_field import LayerTrace, ReceptiveField, trace_layers

InputSize = tuple[int, int]  # (height, width) of the model input
Device = str | torch.device

# Layers whose receptive field the listing shows: the ones that grow or stride it.
_CONV_AND_POOL_TYPES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d,
    nn.FractionalMaxPool2d, nn.FractionalMaxPool3d,
)  # fmt: skip


@dataclass
class LayerNode:
    """One module of the model.

    ``output_shape`` and ``receptive_field`` come from the module's first call in the
    traced pass; both are None for a module that did not run (an auxiliary head in eval
    mode). ``receptive_field`` is None as well when the output has no spatial axes.
    """

    path: str  # as in model.named_modules(); "" for the model itself
    name: str  # the last part of the path
    type_name: str
    output_shape: tuple[int, ...] | None
    own_params: int  # parameters held by this module itself
    total_params: int  # ... and by everything below it
    receptive_field: ReceptiveField | None
    children: list[LayerNode] = field(default_factory=list)
    is_conv_or_pool: bool = False  # the listing shows receptive fields for these

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def walk(self) -> Iterator[LayerNode]:
        """This node and everything below it, depth first, in module order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, path: str) -> LayerNode | None:
        """The node at ``path`` in this subtree, or None."""
        node: LayerNode | None = self
        while node is not None and node.path != path:
            node = next((c for c in node.children if path == c.path or path.startswith(c.path + ".")), None)
        return node


def build_layer_tree(model: nn.Module, input_size: InputSize = (224, 224), device: Device = "cpu") -> LayerNode:
    """Trace one forward pass of a 1x3xHxW zero image and build the tree of all modules."""
    height, width = input_size
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, 3, height, width, device=device, dtype=dtype)
    try:
        traces = trace_layers(model, x)
    except (RuntimeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MethodInputError(f"the model does not accept a 1x3x{height}x{width} input: {first_line}") from exc
    return _node(model, "", traces, seen={id(model)})


def _node(module: nn.Module, path: str, traces: dict[str, LayerTrace], seen: set[int]) -> LayerNode:
    children = []
    for name, child in module.named_children():
        # A module registered twice appears once, under its first path, as in named_modules().
        if id(child) in seen:
            continue
        seen.add(id(child))
        children.append(_node(child, f"{path}.{name}" if path else name, traces, seen))
    trace = traces.get(path)
    return LayerNode(
        path=path,
        name=path.rpartition(".")[2],
        type_name=type(module).__name__,
        output_shape=trace.output_shape if trace else None,
        own_params=sum(p.numel() for p in module.parameters(recurse=False)),
        total_params=sum(p.numel() for p in module.parameters()),
        receptive_field=trace.receptive_field if trace else None,
        children=children,
        is_conv_or_pool=isinstance(module, _CONV_AND_POOL_TYPES),
    )


class LayerTreeCache:
    """Layer trees by (model, input size), each built once.

    Models are held weakly, so a model's trees go when the model does. Safe to share
    between threads; a tree being built blocks other lookups until it is ready.
    """

    def __init__(self) -> None:
        self._trees: weakref.WeakKeyDictionary[nn.Module, dict[InputSize, LayerNode]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, model: nn.Module, input_size: InputSize = (224, 224), device: Device = "cpu") -> LayerNode:
        size = (int(input_size[0]), int(input_size[1]))
        with self._lock:
            trees = self._trees.setdefault(model, {})
            if size not in trees:
                trees[size] = build_layer_tree(model, size, device)
            return trees[size]

    def clear(self) -> None:
        with self._lock:
            self._trees.clear()


_shared_cache = LayerTreeCache()


def cached_layer_tree(model: nn.Module, input_size: InputSize = (224, 224), device: Device = "cpu") -> LayerNode:
    """``build_layer_tree`` through one process-wide cache."""
    return _shared_cache.get(model, input_size, device)


def format_layers(tree: LayerNode) -> str:
    """The text listing of ``python main.py layers``: one line per module, indented by depth."""
    rows = [("layer", "type", "output", "params", "receptive field")]
    for node in tree.walk():
        depth = node.path.count(".") + 1 if node.path else 0
        rows.append(
            (
                "  " * depth + (node.path or "(model)"),
                node.type_name,
                "x".join(map(str, node.output_shape)) if node.output_shape else "-",
                f"{node.total_params:,}",
                _field_text(node) if node.is_conv_or_pool else "",
            )
        )
    path_w, type_w, shape_w, params_w = (max(len(row[column]) for row in rows) for column in range(4))
    lines = [
        f"{path:<{path_w}}  {type_name:<{type_w}}  {shape:<{shape_w}}  {params:>{params_w}}  {field_text}".rstrip()
        for path, type_name, shape, params, field_text in rows
    ]
    return "\n".join(lines)


def _field_text(node: LayerNode) -> str:
    if node.output_shape is None:
        return "-"  # did not run
    return str(node.receptive_field) if node.receptive_field else "global"
