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

How: a forward hook on each ReLU-like module registers a hook on its output *tensor*
that clamps the gradient arriving there to be non-negative; the module's own backward
then applies ``f'(x)``, which for ReLU and ReLU6 is already zero where ``x <= 0``. A
LeakyReLU's own backward would pass ``0.01 * g`` for negative inputs, so its hook also
multiplies by the mask ``output > 0`` (taken at forward time; the output is positive
exactly where the input was). Tensor hooks work on in-place modules, where module
backward hooks (``register_full_backward_hook``) fail: an in-place ReLU's output is its
input tensor, and a tensor hook registered before a later in-place change still receives
the gradient of the value it was registered on.

The DeconvNet rule (Zeiler & Fergus 2014), which guided backprop refines, is the other
half alone: each unit sends back ``relu(g)`` wherever its input was, positive or not
(``rule="deconvnet"``). The module's own backward has already multiplied by ``f'(x)``
when the gradient reaches the unit's input, so a hook on the input *tensor*, registered
before the unit runs, adds back ``relu(g) * (1 - f'(x))``: exact even when that tensor
also feeds other operations (a residual branch), whose share of its gradient is kept.

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
    if rule == "guided":
        with hooked((unit, partial(_guide, state)) for unit in units):
            yield state
    else:
        hand_overs = [(unit, _DeconvUnit(state)) for unit in units]
        with hooked(forward=((unit, hand_over.watch_output) for unit, hand_over in hand_overs),
                    pre=((unit, hand_over.watch_input) for unit, hand_over in hand_overs)):
            yield state


def _guide(state: GuidedReLUs, module: nn.Module, inputs, output) -> None:
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return
    # ReLU and ReLU6 zero the gradient where the input was <= 0 in their own backward;
    # LeakyReLU would pass a fraction of it, so its positive mask is kept.
    positive = output > 0 if isinstance(module, nn.LeakyReLU) else None
    output.register_hook(partial(_positive_gradient, state, positive))


def _positive_gradient(state: GuidedReLUs, positive: torch.Tensor | None, grad: torch.Tensor) -> torch.Tensor | None:
    if not state.active:
        return None  # leave the gradient as it is
    grad = grad.clamp(min=0)
    return grad if positive is None else grad * positive


class _DeconvUnit:
    """The DeconvNet rule at one unit: hooks on its input and output tensors, and what the
    output's hook hands over to the input's for the call in progress."""

    def __init__(self, state: GuidedReLUs) -> None:
        self.state = state
        self.pending: dict | None = None

    def watch_input(self, module: nn.Module, inputs) -> None:
        # Before the unit runs: an in-place unit then changes the tensor, and this hook
        # still receives the gradient of the value it saw.
        x = inputs[0] if inputs else None
        self.pending = {} if isinstance(x, torch.Tensor) and x.requires_grad else None
        if self.pending is not None:
            x.register_hook(partial(self._restore_masked, self.pending))

    def watch_output(self, module: nn.Module, inputs, output) -> None:
        pending, self.pending = self.pending, None
        if pending is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return  # its input needed no gradient: nothing flows back through this unit
        # What the module's backward keeps of the gradient: its derivative, read from the
        # output now (the output is positive exactly where the input was).
        if isinstance(module, nn.LeakyReLU):
            pending["kept"] = torch.where(output > 0, 1.0, module.negative_slope).to(output.dtype)
        elif isinstance(module, nn.ReLU6):
            pending["kept"] = ((output > 0) & (output < 6)).to(output.dtype)
        else:
            pending["kept"] = (output > 0).to(output.dtype)
        output.register_hook(partial(self._positive_gradient, pending))

    def _positive_gradient(self, pending: dict, grad: torch.Tensor) -> torch.Tensor | None:
        if not self.state.active:
            return None
        pending["positive_gradient"] = grad.clamp(min=0)
        return pending["positive_gradient"]

    def _restore_masked(self, pending: dict, grad: torch.Tensor) -> torch.Tensor | None:
        if not self.state.active or "positive_gradient" not in pending:
            return None
        # The unit's backward passed kept * relu(g); the DeconvNet passes relu(g) itself.
        return grad + pending.pop("positive_gradient") * (1 - pending["kept"])
