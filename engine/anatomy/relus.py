"""ReLU-like units of a model: its ReLU modules, and the ReLUs it applies as functions, made modules.

ReLU-like means a hinge at zero with slope 1 above it: ``nn.ReLU``, ``nn.ReLU6`` and
``nn.LeakyReLU``, in place or not (guided backprop's rule applies to those; see
``engine.attribution.guided``). Many models apply ReLU as a *function* instead
(``F.relu``, ``torch.relu``, ``x.relu()``...: torchvision's GoogLeNet and Inception in
``BasicConv2d``, DenseNet in its ``forward``, most hand-written code), and no module hook
can reach those ReLUs.

``functional_relu_calls`` finds the modules whose own code makes such calls, by watching
one forward pass under a ``TorchFunctionMode`` (as ``engine.anatomy.receptive_field``
traces fields). ``with_relu_modules`` then makes a twin of the network
(``engine.anatomy.twin``: the same weights, the model itself untouched) in which each of
those modules is replaced by a ``torch.fx`` trace of its own code, every ReLU-like call
in it now a call of a new ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.LeakyReLU`` module, so the
module-hook rule reaches every unit.

Only those modules are traced, each with all its submodules as leaves (called, not traced
through), and each replaced where it was: every layer keeps its path ('inception4c',
'features.denseblock3', 'inception4c.branch1.conv') and its hooks fire as before, and
code elsewhere in the model (however dynamic) is never traced. A module whose own code fx
cannot trace (control flow on a tensor's values, iteration over an input) is reported
with fx's reason: ``ReluRewriteError``. A container the traced code only indexes into
(``self.blocks[0](x)``) stays in place but is not itself called, so hooks on it do not fire.

What is found depends on the model's code, not on the image, so ``ModelState`` keeps both:
``functional_relus`` and ``relu_module_network``. The twin is made from the network
gradients are taken through, the fast copy where there is one, so the rewrite keeps its
folded batch norms: guided backprop on GoogLeNet (224 px, 2 threads) took 58 ms through
the rewritten fast copy, 80 through the rewritten model, and Captum's GuidedBackprop 81
on a GoogLeNet written with ReLU modules by hand.
"""

from __future__ import annotations

import threading
from functools import partial
from numbers import Real

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from engine.anatomy.hooks import first_tensor, hooked
from engine.anatomy.twin import module_twin
from engine.core.errors import first_line

RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
# The torch functions and Tensor methods that compute a ReLU-like activation, with their
# arguments after the input in order; hardtanh only as hardtanh(x, 0, 6), which is ReLU6
# (any other hardtanh is no more ReLU-like than an nn.Hardtanh module).
_ARGUMENTS = {"relu": ("inplace",), "relu_": (), "relu6": ("inplace",), "leaky_relu": ("negative_slope", "inplace"),
              "leaky_relu_": ("negative_slope",), "hardtanh": ("min_val", "max_val", "inplace"),
              "hardtanh_": ("min_val", "max_val")}
_DEFAULTS = {"inplace": False, "negative_slope": 0.01, "min_val": -1.0, "max_val": 1.0}
_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_, F.hardtanh, F.hardtanh_}
_METHODS = {"relu", "relu_"}  # the Tensor methods (Tensor has no relu6 or leaky_relu)
# How far the rewritten network's output may be from the network's, relative to the
# output's largest value (at least 1): the same operations run, so it should be 0.
TOLERANCE = 1e-6


class ReluRewriteError(Exception):
    """The module at ``path`` (class ``kind``) applies ReLU as a function and could not be rewritten: ``reason``."""

    def __init__(self, path: str, kind: str, reason: str) -> None:
        super().__init__(f"'{path or '(the model)'}' ({kind}): {reason}")
        self.path, self.kind, self.reason = path, kind, reason


def is_relu_like(module: nn.Module) -> bool:
    return isinstance(module, RELU_LIKE)


def _settings(name: str, args: tuple, kwargs: dict) -> dict | None:
    """The call's arguments after the input by name, defaults filled in; None for a call
    that is not ReLU-like (a hardtanh other than ReLU6)."""
    settings = dict(_DEFAULTS, **dict(zip(_ARGUMENTS[name], args)), **kwargs)
    if name.endswith("_"):
        settings["inplace"] = True
    if name.startswith("hardtanh"):
        try:
            if (float(settings["min_val"]), float(settings["max_val"])) != (0.0, 6.0):
                return None
        except (TypeError, ValueError):  # a traced (not constant) bound
            return settings
    return settings


def _unit_for(name: str, settings: dict) -> nn.Module | None:
    """The module that computes the call, or None when an argument is not a constant."""
    if not all(isinstance(settings[key], (bool, Real)) for key in _ARGUMENTS[name.rstrip("_")]):
        return None
    inplace = bool(settings["inplace"])
    if name.startswith("leaky_relu"):
        return nn.LeakyReLU(float(settings["negative_slope"]), inplace=inplace)
    if name.startswith(("relu6", "hardtanh")):
        return nn.ReLU6(inplace=inplace)
    return nn.ReLU(inplace=inplace)


# -- finding the calls -------------------------------------------------------------------------------
class _ReluCallWatcher(TorchFunctionMode):
    """Sees every torch call of a forward pass; notes ReLU calls made outside ReLU modules."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, nn.Module]] = []  # the modules running, innermost last
        self.found: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _ARGUMENTS and _settings(name, tuple(args[1:]), kwargs) is not None:
            path, module = self.stack[-1] if self.stack else ("", None)
            if module is None or not is_relu_like(module):
                self.found.setdefault(path, type(module).__name__ if module is not None else "model")
        return func(*args, **kwargs)


def functional_relu_calls(model: nn.Module, sample: torch.Tensor) -> dict[str, str]:
    """Module path -> class name of each module whose own code calls a ReLU function, found
    in one forward pass of ``sample`` (a model input) without gradients. Hooks are
    registered on ``model``: pass a twin."""
    watcher = _ReluCallWatcher()

    def enter(path: str, module: nn.Module, _inputs) -> None:
        watcher.stack.append((path, module))

    def leave(_module, _inputs, _output) -> None:
        watcher.stack.pop()

    modules = list(model.named_modules())
    with hooked(forward=((module, leave) for _, module in modules),
                pre=((module, partial(enter, path)) for path, module in modules)):
        with torch.no_grad(), watcher:
            model(sample)
    return watcher.found


# -- making them modules -----------------------------------------------------------------------------
class _OwnCodeTracer(fx.Tracer):
    """Traces one module's own code: every submodule it calls is a leaf.

    fx patches ``nn.Module.__call__`` and ``__getattr__`` for every thread while it
    traces; another thread running a model at that moment (the window's layer tree) gets
    the plain behaviour back here, not proxies of the weights this module shares with it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _rewritten(module: nn.Module) -> tuple[fx.GraphModule, int]:
    """``module``'s own code traced, its ReLU-like calls made modules; and how many were.
    Raises whatever fx raises for code it cannot trace."""
    graph = _OwnCodeTracer().trace(module)
    made = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in _FUNCTIONS:
            name = node.target.__name__
        elif node.op == "call_method" and node.target in _METHODS:
            name = node.target
        else:
            continue
        if not node.args:
            continue  # the input passed by keyword: left as it is (and found by the check after)
        settings = _settings(name, tuple(node.args[1:]), dict(node.kwargs))
        unit = _unit_for(name, settings) if settings is not None else None
        if unit is None:
            continue  # not ReLU-like, or not a constant setting: left as it is (and found by the check after)
        target = f"functional_{name.rstrip('_')}_{made}"
        while hasattr(module, target):
            target += "_"
        module.add_module(target, unit)  # on the twin's module, so the GraphModule picks it up with the rest
        with graph.inserting_before(node):
            replacement = graph.call_module(target, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        made += 1
    rewritten = fx.GraphModule(module, graph, class_name=f"{type(module).__name__}WithReLUModules")
    # Keep every child where it was, also those the code does not call itself (a container
    # it indexes into, a module it does not use), so that each path still names its layer.
    for name, child in module.named_children():
        if rewritten._modules.get(name) is not child:
            rewritten._modules[name] = child
    return rewritten, made


def with_relu_modules(network: nn.Module, calls: dict[str, str], sample: torch.Tensor) -> tuple[nn.Module, int]:
    """A twin of ``network`` (the same weights, ``network`` untouched) in which each module in
    ``calls`` (path -> class name, from ``functional_relu_calls``) is its fx rewrite; and how
    many ReLU-like calls became modules.

    The twin is checked on ``sample``: no ReLU function is called outside a ReLU module any
    more, and its output is the network's. Raises ``ReluRewriteError`` naming the module
    and the reason (fx's message's first line) otherwise.
    """
    twin = module_twin(network)
    modules = dict(twin.named_modules())
    made = 0
    rewrites: dict[int, nn.Module] = {}
    for path in sorted(calls, key=lambda p: -p.count(".") if p else 1):  # innermost first; the model itself last
        original = modules[path]
        try:
            rewrites[id(original)], count = _rewritten(original)
        except Exception as exc:  # fx raises TraceError, NameError, TypeError, RuntimeError...: all say why
            raise ReluRewriteError(path, calls[path], first_line(exc)) from None
        made += count
        for parent in twin.modules():  # every place the module sits (a module may sit in two)
            for name, child in parent._modules.items():
                if child is original:
                    parent._modules[name] = rewrites[id(original)]
        if path == "":
            twin = rewrites[id(original)]
    _check(network, twin, calls, sample)
    return twin, made


def _check(network: nn.Module, twin: nn.Module, calls: dict[str, str], sample: torch.Tensor) -> None:
    left = functional_relu_calls(twin, sample)  # not handed out yet: its hooks disturb no one
    if left:
        path = next(iter(left))
        raise ReluRewriteError(path, calls.get(path, left[path]), "a ReLU call there could not be made a module (its "
                                                                  "input passed by name, or a setting computed at run time)")
    with torch.no_grad():
        expected = first_tensor(network(sample.clone())).float()
        got = first_tensor(twin(sample.clone())).float()
    scale = max(1.0, float(expected.abs().max()))
    if got.shape != expected.shape or not bool(((got - expected).abs() <= TOLERANCE * scale).all()):
        path = next(iter(calls))
        raise ReluRewriteError(path, calls[path], "its rewrite by torch.fx computes something else for this image "
                                                  "(its code depends on more than fx records)")
