"""Guided backpropagation's ReLU rule (Springenberg et al. 2015), applied through modules.

In guided backprop every ReLU-like unit passes back only positive gradient, and only
where its input was positive: with ``g`` the gradient arriving at the unit's output and
``x`` its input, the unit sends back ``relu(g) * f'(x)`` with ``f'(x) = 0`` for ``x <= 0``.

ReLU-like here means a hinge at zero with slope 1 above it: ``nn.ReLU``, ``nn.ReLU6``
(whose own derivative is also 0 above 6) and ``nn.LeakyReLU`` (whose small negative
slope is cut off: "only where the input was positive"), in place or not. Smooth or
non-monotone activations (``nn.Hardswish``, ``nn.SiLU``, ``nn.GELU``, ``nn.ELU``,
``nn.Mish``...) are *not* ReLU-like: they pass gradient for negative inputs in a way
that depends on the curve's shape, so the guided rule has no standard meaning there and
they keep their ordinary gradient (as in Captum, which guides ``nn.ReLU`` only), modules
or functions alike; the note names the modules (EfficientNet-B0's SiLU, MobileNetV3's
Hardswish and Hardsigmoid, ConvNeXt's GELU).

The DeconvNet rule (Zeiler & Fergus 2014), which guided backprop refines, is the other
half alone: each unit sends back ``relu(g)`` wherever its input was, positive or not
(``rule="deconvnet"``).

How: a forward hook on each ReLU-like module registers a hook on the autograd node that
made its output (``output.grad_fn``: ``ReluBackward0``, ``HardtanhBackward0``,
``LeakyReluBackward0``), which replaces what the node passes back to the unit's input.
The node has already applied ``f'(x)`` to ``g``: for ReLU and ReLU6 the guided rule is
then ``relu`` of that (``f'`` is 0 or 1), and the DeconvNet's is ``relu(g)`` itself.
LeakyReLU's ``f'`` is 0.01 for negative inputs, so its guided rule keeps the mask
``output > 0`` from forward time (the output is positive exactly where the input was).
Node hooks work on in-place modules, where module backward hooks
(``register_full_backward_hook``) fail, and cost one pass over the gradient per unit
and nothing in the forward: the DeconvNet costs what guided backprop does (a hook on the
unit's input tensor instead would have to add back ``relu(g) * (1 - f'(x))``: a mask in
the forward and three more passes in the backward). What the unit's input passes on to
other operations (a residual branch) is untouched: the node is the unit's alone. Through the fast copy
(``engine.anatomy.fast_copy``), ResNet-18 at 224 px on 2 threads: guided backprop 58 ms
against Captum's ``GuidedBackprop`` 65 ms, the DeconvNet 58 against ``Deconvolution``'s
65 (``make bench BENCH=attribution_speed``).

A model that applies ReLU as a *function* (``F.relu`` / ``torch.relu`` / ``x.relu()``
outside a ReLU module, e.g. torchvision's GoogLeNet and Inception in ``BasicConv2d``,
DenseNet's ``forward``) has ReLUs no module hook can reach. ``guided_network`` hands out
the network to guide: the gradient network (the fast copy, batch norms folded, or the
model) or, for such a model, its twin in which torch.fx has made each of those calls a
ReLU module (``engine.anatomy.relus``; kept by ``model.state.relu_module_network``), so
every unit is guided and no map is half a plain gradient. Where fx cannot trace a module
that makes such calls, the method is refused with fx's reason.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator

import torch
from torch import nn

from engine.attribution.gradients import gradient_sample
from engine.core.errors import MethodInputError
from engine.anatomy.hooks import hooked
from engine.anatomy.layers import is_hookable
from engine.anatomy.relus import ReluRewriteError, is_relu_like
from engine.models.model import LoadedModel

RULES = ("guided", "deconvnet")
# Common activations that are not ReLU-like, named in messages so the user sees why.
OTHER_ACTIVATIONS = (nn.Hardswish, nn.SiLU, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.PReLU, nn.RReLU,
                     nn.Softplus, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh)


@dataclass
class GuidedReLUs:
    """What ``guided_relus`` applied: the ReLU-like modules (``functional`` of them made from
    function calls) and the activations left alone.

    ``active`` is read when the backward pass reaches each unit, so one forward pass can
    serve an ordinary backward (``active = False``) and a guided one: guided Grad-CAM
    takes Grad-CAM's layer gradient and the guided input gradient from the same graph.
    """

    units: int
    others: dict[str, int] = field(default_factory=dict)  # class name -> count
    active: bool = True
    rule: str = "guided"
    functional: int = 0

    @property
    def note(self) -> str:
        verb = "guided" if self.rule == "guided" else "DeconvNet rule"
        text = f"{verb} at {self.units} ReLU-like unit{'s' if self.units != 1 else ''}"
        if self.functional:
            text += f" ({self.functional} applied as functions, made modules)"
        if self.others:
            names = ", ".join(f"{count} {name}" for name, count in sorted(self.others.items()))
            text += f"; {names} (not ReLU-like) pass ordinary gradients"
        return text


def guided_network(model: LoadedModel, pixels: torch.Tensor, layer: str | None = None) -> tuple[nn.Module, int]:
    """The network to guide for ``model``: its gradient network (``gradient_network``: the
    fast copy, or the model where ``layer`` is read from a folded convolution), with every
    ReLU it applies as a function made a module; and how many were.

    ``pixels`` is a sample input (0..1). Raises ``MethodInputError`` when torch.fx cannot
    rewrite a module that applies ReLU as a function.
    """
    try:
        return model.state.relu_module_network(gradient_sample(model, pixels), layer=layer)
    except ReluRewriteError as exc:
        raise MethodInputError(f"this model applies ReLU as a function (F.relu) inside '{exc.path or '(the model)'}' "
                               f"({exc.kind}), and torch.fx could not rewrite that code to make those ReLUs modules "
                               f"guided backprop can reach: {exc.reason}. Use a model whose ReLUs are modules or "
                               f"that fx can trace (vgg16, resnet18, googlenet, the bundled model), or saliency / "
                               f"smoothgrad") from None


@contextmanager
def guided_relus(network: nn.Module, rule: str = "guided", functional: int = 0) -> Iterator[GuidedReLUs]:
    """Within the block, every ReLU-like module of ``network`` passes back guided gradients
    (or, with ``rule="deconvnet"``, the DeconvNet's: positive gradient wherever it arrives).

    ``network`` and ``functional`` come from ``guided_network``, which makes the ReLUs a
    model applies as functions modules first. Raises ``MethodInputError`` for TorchScript
    models and models without a ReLU-like unit. Hooks are removed on leaving, even on error.
    """
    if not is_hookable(network):
        raise MethodInputError("this is a compiled TorchScript model: guided backprop cannot change how its ReLUs pass "
                               "gradients. Load it as an architecture plus a state-dict file instead")
    units = [module for module in network.modules() if is_relu_like(module)]
    others = Counter(type(m).__name__ for m in network.modules()
                     if isinstance(m, OTHER_ACTIVATIONS) and not is_relu_like(m))
    if not units:
        used = f" (it uses {', '.join(sorted(others))})" if others else ""
        raise MethodInputError(f"guided backprop needs ReLU-like activations (ReLU, ReLU6, LeakyReLU) and this model has "
                               f"none{used}; smooth activations such as SiLU, GELU or Hardswish pass gradient for negative "
                               f"inputs, so the guided rule does not apply. Use saliency or smoothgrad instead")
    if rule not in RULES:
        raise ValueError(f"unknown rule '{rule}'; known: {', '.join(RULES)}")
    state = GuidedReLUs(units=len(units), others=dict(others), rule=rule, functional=functional)
    with hooked((unit, partial(_watch, state)) for unit in units):
        yield state


def _watch(state: GuidedReLUs, module: nn.Module, inputs, output) -> None:
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return  # its input needed no gradient: nothing flows back through this unit
    positive = output > 0 if state.rule == "guided" and isinstance(module, nn.LeakyReLU) else None
    output.grad_fn.register_hook(partial(_rule, state, positive))


def _rule(state: GuidedReLUs, positive: torch.Tensor | None, to_input: tuple, from_output: tuple) -> tuple | None:
    """What the unit's node passes back to its input: ``to_input`` (``f'(x) * g``) by the
    rule; ``from_output`` is ``(g,)``."""
    if not state.active or to_input[0] is None:
        return None  # the ordinary gradient
    if state.rule == "deconvnet":
        return (from_output[0].clamp(min=0),)
    if positive is not None:  # LeakyReLU: relu(g) where the input was positive
        return (from_output[0].clamp(min=0) * positive,)
    return (to_input[0].clamp(min=0),)
