"""The model's modules as a tree, with output shapes, layouts, parameter counts and receptive fields.

``trace_model`` runs one traced forward pass (see ``receptive_field``) and ``build_layer_tree``
nests every module as ``named_children`` does. The tree depends only on the architecture
and the input size, so ``ModelState.layer_tree`` keeps one per input size: the GUI asks for
it on every click and pays for the pass once. What each layer is good for (the Grad-CAM
layer, the presets, the layers that see the whole image) takes real passes to find, so it
comes apart from the tree, as a ``LayerGuide`` (``engine.anatomy.layer_choice``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from engine.core.errors import MethodInputError
from engine.anatomy.layer_choice import LayerGuide
from engine.anatomy.layouts import OTHER, MapLayout, find_layouts, registers_of
from engine.anatomy.receptive_field import LayerTrace, ReceptiveField, trace_layers
from engine.anatomy.twin import has_script_modules, module_twin

InputSize = tuple[int, int]  # (height, width) of the model input
Device = str | torch.device
WHOLE_IMAGE = "whole image"  # the receptive field of a unit that depends on every pixel

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
    mode). ``receptive_field`` is None as well when the output has no spatial axes, or
    when the trace lost track of them (a transformer's tokens). ``layout`` says how the
    output lies over the image (``engine.anatomy.layouts``: a map, channels-last, tokens,
    a vector); None for a module that did not run.
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
    layout: MapLayout | None = None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def layout_text(self) -> str:
        """The layout in words ("spatial 14x14", "tokens 14x14 + class token"), "" when none fits."""
        return self.layout.describe() if self.layout is not None and self.layout.kind != OTHER else ""

    def sees_whole_image(self, guide: LayerGuide | None = None) -> bool:
        """Whether every unit of the output depends on the whole image: a pooling or
        convolution that left no spatial axes, or a layer ``guide`` found so (tokens after
        attention), which the trace alone cannot tell."""
        if self.output_shape is None:
            return False
        if self.is_conv_or_pool and self.receptive_field is None:
            return True
        return guide is not None and self.path in guide.whole_image

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


def trace_model(model: nn.Module, input_size: InputSize, device: Device | None = None,
                until: str | None = None) -> dict[str, LayerTrace]:
    """Output shape and receptive field of every module for a 1x3xHxW input (``input_size``
    is (H, W)), in the order the modules finished running: the one way ConvScope works out
    a model's shapes and fields (``ModelState`` keeps what it finds).

    The pass runs on a twin of the model on the meta device: shapes only, with no memory
    for the maps and no arithmetic, so a 4000 px input costs what a 224 px one does. A
    model the meta device cannot follow (it looks at values: ``if x.max() > 0``) runs a
    zero image on ``device`` (default: where its parameters are), on a twin that shares its
    weights, so the model's own hooks and flags are never touched. ``until``: the pass
    stops once that module has run. Raises ``MethodInputError`` when the model does not
    accept an input of that size.
    """
    height, width = int(input_size[0]), int(input_size[1])
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    if device is None:
        device = parameter.device if parameter is not None else torch.device("cpu")
    if not has_script_modules(model):
        try:
            meta = module_twin(model, lambda tensor: tensor.to("meta"))
            return trace_layers(meta, torch.zeros(1, 3, height, width, device="meta", dtype=dtype), until)
        except Exception:  # noqa: BLE001 - anything the meta device cannot follow runs for real below
            pass
    try:
        twin = model if has_script_modules(model) else module_twin(model)
    except Exception:  # noqa: BLE001 - a model that cannot be copied is traced itself, as it stands
        twin = model
    try:
        return trace_layers(twin, torch.zeros(1, 3, height, width, device=device, dtype=dtype), until)
    except (RuntimeError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MethodInputError(f"the model does not accept a 1x3x{height}x{width} input: {first_line}") from exc


def build_layer_tree(model: nn.Module, input_size: InputSize = (224, 224), device: Device | None = None) -> LayerNode:
    """The tree of all modules for a 1x3xHxW input, from one ``trace_model`` pass (uncached:
    ``loaded_model.state.layer_tree(size)`` keeps one per input size)."""
    traces = trace_model(model, input_size, device)
    shapes = {path: trace.output_shape for path, trace in traces.items() if trace.output_shape is not None}
    return tree_from_traces(model, traces, find_layouts(shapes, input_size, registers_of(model)))


def tree_from_traces(model: nn.Module, traces: Mapping[str, LayerTrace],
                     layouts: Mapping[str, MapLayout]) -> LayerNode:
    """The tree of all modules, nested as ``named_children`` does, with what ``traces`` found
    and each output's layout from ``layouts`` (``find_layouts`` of the same traces)."""
    return _node(model, "", traces, layouts, seen={id(model)})


def _node(module: nn.Module, path: str, traces: Mapping[str, LayerTrace], layouts: Mapping[str, MapLayout],
          seen: set[int]) -> LayerNode:
    children = []
    for name, child in module.named_children():
        # A module registered twice appears once, under its first path, as in named_modules().
        if id(child) in seen:
            continue
        seen.add(id(child))
        children.append(_node(child, f"{path}.{name}" if path else name, traces, layouts, seen))
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
        layout=layouts.get(path),
    )


def format_layers(tree: LayerNode, guide: LayerGuide | None = None) -> str:
    """The text listing of ``python main.py layers``: one line per module, indented by depth,
    with its layout, its receptive field where a convolution or pooling sets it ("whole
    image" where every unit sees all of it) and, with a ``guide``, what each layer is
    marked as ("Grad-CAM", "early", "middle", "late")."""
    rows = [["layer", "type", "output", "layout", "params", "receptive field", "use"]]
    for node in tree.walk():
        depth = node.path.count(".") + 1 if node.path else 0
        rows.append([
            "  " * depth + (node.path or "(model)"),
            node.type_name,
            "x".join(map(str, node.output_shape)) if node.output_shape else "-",
            node.layout_text,
            f"{node.total_params:,}",
            _field_text(node, guide),
            ", ".join(guide.roles(node.path)) if guide is not None else "",
        ])
    if guide is None:
        rows = [row[:-1] for row in rows]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    right_aligned = rows[0].index("params")
    return "\n".join("  ".join(cell.rjust(width) if column == right_aligned else cell.ljust(width)
                                for column, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows)


def _field_text(node: LayerNode, guide: LayerGuide | None) -> str:
    if node.is_conv_or_pool and node.output_shape is None:
        return "-"  # did not run
    if node.sees_whole_image(guide):
        return WHOLE_IMAGE
    return str(node.receptive_field) if node.is_conv_or_pool and node.receptive_field else ""
