"""The rest of a network after one of its layers, as a module of its own: ``layer_tail``.

Grad-CAM needs a layer's output A and d score / d A. The window has A already: opening a
photo keeps every layer's output (``engine.anatomy.activations``). With the network's
tail, the part that turns A into the logits, the gradient costs a pass through the head
alone instead of the whole network (on ResNet-50 at 224 px, well under a millisecond
against about 150 ms).

The tail is cut from the network's torch.fx graph: the nodes after the layer's call, with
the layer's output as the only input. It exists only where that is the whole story: the
network traces, calls the layer once, and nothing after the layer reads anything computed
before it (no skip connection across the cut). Elsewhere there is none, and the whole
network runs as before.
"""

from __future__ import annotations

import torch
from torch import fx, nn


def layer_tail(module: nn.Module, path: str) -> fx.GraphModule | None:
    """The module mapping layer ``path``'s output to ``module``'s output, or None (see above)."""
    try:
        graph = _LayerAsLeaf(path).trace(module)
    except Exception:  # data-dependent control flow, shape unpacking: fx cannot trace this code
        return None
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == path]
    if len(calls) != 1:
        return None
    cut = calls[0]
    order = list(graph.nodes)
    after = order[order.index(cut) + 1:]
    before = set(order[:order.index(cut)])
    tail = fx.Graph()
    activation = tail.placeholder("activation")
    copied = {cut: activation}
    for node in after:
        inputs = node.all_input_nodes
        if any(source in before and source.op != "get_attr" for source in inputs):
            return None  # something computed before the layer is read after it
        for source in inputs:
            if source.op == "get_attr" and source not in copied:
                copied[source] = tail.node_copy(source)
        copied[node] = tail.node_copy(node, lambda source: copied[source])
    try:
        tail.lint()
        return fx.GraphModule(module, tail)
    except Exception:
        return None


class _LayerAsLeaf(fx.Tracer):
    """Traces into the layer's ancestors only: every other module, the layer included, stays
    one call. The layer is then one node even when it is a container (a stage), and code fx
    cannot follow (control flow inside a block) is traced only if it holds the layer."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not self.path.startswith(qualified_name + ".")


def tail_output(tail: nn.Module, activation: torch.Tensor) -> torch.Tensor:
    """``tail`` run on a copy of ``activation`` (a leaf that requires grad), so that an
    in-place operation right after the cut leaves the leaf as it was."""
    return tail(activation.clone())
