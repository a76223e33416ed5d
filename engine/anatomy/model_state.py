"""Everything ConvScope works out about one loaded network, worked out once: ``ModelState``.

A ``LoadedModel`` owns one (``loaded_model.state``), made with it and freed with it; nothing
about a model is kept anywhere else. What it holds:

- the fast copy (``engine.anatomy.fast_copy``: batch norms folded into the layers before them,
  activations in place, patch convolutions with a faster backward), which of its
  convolutions were folded, whether input gradients can be taken through it, and whether
  the model takes channels-last input;
- per input size: every module's output shape and receptive field (one traced pass,
  ``engine.anatomy.layer_tree.trace_model``) and the layer tree built from them; the
  tiling of DeepDream and the patches' boxes read the same fields the tree shows;
- what the activation capture learnt: the layers whose outputs the model later
  overwrites in place (``engine.anatomy.activations``);
- which modules apply ReLU as a function, and the network guided backprop runs: the
  gradient network (the fast copy or the model) with those ReLUs made modules
  (``engine.anatomy.relus``), one per network it was made from;
- the network after a layer as a module of its own (``layer_tail``), which turns the
  layer's output, kept from the photo's forward pass, into the logits: Grad-CAM's
  gradient from the head alone;
- what each layer is good for: the recommended Grad-CAM layer, early/middle/late for a
  model without hand-picked presets, and the layers whose units see the whole image
  (``engine.anatomy.layer_choice``, ``engine.anatomy.whole_image``);
- how fast this machine runs the model (``speed``): seconds per image of a forward pass
  and of a forward and backward pass, timed once per input size and device, and each
  method's measured time against its predicted time (``note_run``), so the estimates a
  panel shows before a run (``engine.methods.cost``) learn from the runs themselves.

The fast copy depends on the weights: it is rebuilt when any parameter or buffer changes
(``fast_copy.weights_version``: other weights loaded into the same module, the sanity
check's randomisation, a move to another device or dtype). The networks with ReLU
modules share their weights with the network they were made from, but a move to another
device replaces a buffer object, so they follow the same version. A model with nothing
to change (``fast_copy.could_speed_up``: no batch norm, no activation module, no patch
convolution, no linear layer on a machine whose matrix products outpace its convolutions)
has no copy whatever its weights, and skips that check. Everything else depends on the
architecture and the code only, so it stays.

Thread safety: the GUI thread (the layer tree) and the engine thread (a method) may ask at
the same moment. Each named thing has its own lock (one per key, made under a short
dictionary lock): the first asker computes while holding only that key's lock, so a second
asker of the same thing waits for it and receives the same object, and askers of other
things (another input size) are not held up. A computation that fails publishes nothing:
the next asker tries again. The fast copy has one lock of its own, because a new weights
version replaces the old copy instead of adding a key.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from numbers import Integral
from types import MappingProxyType
from typing import Callable, Iterable, TypeVar

import torch
from torch import nn

from engine.anatomy.hooks import first_tensor
from engine.anatomy.tail import layer_tail
from engine.anatomy.fast_copy import FastCopy, backward_works, build_fast_copy, could_speed_up, weights_version
from engine.anatomy.layer_choice import depth_presets, read_tokens, score_layer
from engine.anatomy.layouts import MAP, TOKENS, MapLayout, find_layouts, registers_of
from engine.anatomy.layers import penultimate_layer
from engine.core.errors import MethodInputError
from engine.anatomy.layer_tree import InputSize, LayerNode, trace_model, tree_from_traces
from engine.anatomy.receptive_field import LayerTrace, ReceptiveField
from engine.anatomy.relus import functional_relu_calls, with_relu_modules
from engine.anatomy.twin import has_script_modules, module_twin
from engine.anatomy.whole_image import whole_image_layers

T = TypeVar("T")
# Images per timed pass when calibrating: methods run batches (occlusion 8, SmoothGrad and
# integrated gradients as many as fit), and a batch of one costs more per image than that.
CALIBRATION_BATCH = 2
# Weight of the newest run in a method's measured/predicted ratio.
RUN_WEIGHT = 0.5
Size = int | tuple[int, int] | None  # an input size: (height, width), a square's side, or None for the model's own
# Per-size results kept at most (traces, shapes, fields and trees together): a session that
# opens many pictures of different sizes does not grow without bound.
KEPT_RESULTS = 64


@dataclass
class _Slot:
    """One thing worked out once: its lock, and its value once published."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False
    value: object = None


@dataclass(frozen=True)
class Speed:
    """This machine's pace with the model at one input size: seconds per image."""

    forward_s: float  # an inference pass
    backward_s: float  # a forward pass and a backward pass to the input


@dataclass(frozen=True)
class ActivationBytes:
    """The bytes one image's layer outputs take, at one input size."""

    total: int  # every leaf module's output: about what a pass keeps for its backward
    largest: int  # the largest of them: what an inference pass holds at its peak, a few times over


# A normalised input batch, or what makes one: a pass that needs no new fast copy never makes it.
Sample = torch.Tensor | Callable[[], torch.Tensor]


def _made(sample: Sample) -> torch.Tensor:
    return sample if isinstance(sample, torch.Tensor) else sample()


@dataclass
class _FastCopyRecord:
    version: tuple  # fast_copy.weights_version of the model the copy was built from
    copy: FastCopy | None  # None: the model has no fast copy (nothing to fold, or it would compute something else)
    backward_lock: threading.Lock = field(default_factory=threading.Lock)
    backward_works: bool | None = None  # found on first use


class ModelState:
    """What is known about ``module``, computed on first use, once; ``input_size`` is the
    side of the model's square input (``Preprocessing.size``), the size used when none is given."""

    def __init__(self, module: nn.Module, input_size: int) -> None:
        self.module = module
        self.input_size: InputSize = (int(input_size), int(input_size))
        self._lock = threading.Lock()  # guards _slots and _overwritten; never held while computing
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._fast_lock = threading.Lock()
        self._fast: _FastCopyRecord | None = None
        self._relu_lock = threading.Lock()
        self._relu_networks: tuple[tuple, dict[int, tuple[nn.Module, nn.Module, int]]] = ((), {})
        self._channels_last = True
        self._overwritten: frozenset[str] = frozenset()
        self._run_ratios: dict[str, float] = {}  # method id -> measured / predicted seconds

    # -- computed once ----------------------------------------------------------------------
    def _once(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
                self._forget_oldest()
            else:
                self._slots.move_to_end(key)
        with slot.lock:
            if not slot.done:
                slot.value = compute()
                slot.done = True
            return slot.value

    @property
    def scripted(self) -> bool:
        """Whether the model holds TorchScript, which takes neither hooks nor copies."""
        return self._once("scripted", lambda: has_script_modules(self.module))

    @property
    def could_speed_up(self) -> bool:
        """Whether the model has anything a fast copy would change (``fast_copy.could_speed_up``)."""
        return self._once("could speed up", lambda: could_speed_up(self.module))

    def weights_version(self) -> tuple:
        """``fast_copy.weights_version`` of the model, over its modules listed once (the tree
        is fixed; the tensors they hold are read each time)."""
        return weights_version(self._once("modules", lambda: tuple(self.module.modules())))

    def layer_tail(self, path: str) -> nn.Module | None:
        """The network after layer ``path`` as a module of its own, taking the layer's output
        (``engine.anatomy.tail``); None where it cannot be cut there. Traced once per layer;
        it shares the model's modules, so it follows their weights."""
        return None if self.scripted else self._once(("tail", path), lambda: layer_tail(self.module, path))

    def for_these_weights(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, kept until any of the model's weights change (``weights_version``):
        what depends on the weights as well as the architecture, as a flat picture's logits."""
        return self._once(("weights", self.weights_version(), key), compute)

    def _forget_oldest(self) -> None:
        finished = [key for key, slot in self._slots.items() if slot.done and isinstance(key, tuple)]
        for key in finished[:max(0, len(self._slots) - KEPT_RESULTS)]:
            del self._slots[key]

    def _size(self, size: Size) -> InputSize:
        if size is None:
            return self.input_size
        if isinstance(size, Integral):
            return (int(size), int(size))
        return (int(size[0]), int(size[1]))

    # -- shapes, receptive fields, the layer tree --------------------------------------------
    def layer_traces(self, size: Size = None, until: str | None = None) -> Mapping[str, LayerTrace]:
        """Each module's output shape and receptive field for a 1x3xHxW input, in the order
        the modules finished running; with ``until``, only as far as that module (a deep
        head that cannot take the size then does not matter). Raises ``MethodInputError``
        when the model does not accept the size."""
        size = self._size(size)
        return self._once(("traces", size, until),
                          lambda: MappingProxyType(trace_model(self.module, size, until=until)))

    def output_shapes(self, size: Size = None, until: str | None = None) -> Mapping[str, tuple]:
        """Module path -> output shape (of its first call) for a 1x3xHxW input, in the order
        the modules finished running; modules that did not run or returned no tensor are
        left out. Read-only: it is shared by every caller."""
        size = self._size(size)
        return self._once(("shapes", size, until), lambda: MappingProxyType(
            {path: trace.output_shape for path, trace in self.layer_traces(size, until).items()
             if trace.output_shape is not None}))

    def activation_bytes(self, size: Size = None) -> ActivationBytes:
        """What one image's leaf module outputs take at ``size`` (H, W): read from the trace at
        the model's own input size and scaled by the number of pixels, so a photo of a new
        size costs no traced pass (a fixed-size model runs at its own size anyway)."""
        own = self.input_size
        measured = self._once("activation bytes", lambda: _leaf_output_bytes(self.module, self.output_shapes(own)))
        scale = (self._size(size)[0] * self._size(size)[1]) / (own[0] * own[1])
        return ActivationBytes(total=round(measured.total * scale), largest=round(measured.largest * scale))

    def receptive_fields(self, size: Size = None) -> Mapping[str, ReceptiveField | None]:
        """Module path -> receptive field of its output (None: the unit sees the whole image)."""
        size = self._size(size)
        return self._once(("fields", size), lambda: MappingProxyType(
            {path: trace.receptive_field for path, trace in self.layer_traces(size).items()}))

    def layer_tree(self, size: Size = None) -> LayerNode:
        """The tree of the model's modules with shapes, layouts and fields at this input size."""
        size = self._size(size)
        return self._once(("tree", size), lambda: tree_from_traces(self.module, self.layer_traces(size),
                                                                   self.layouts(size)))

    def layouts(self, size: Size = None) -> Mapping[str, MapLayout]:
        """Module path -> how its output lies over the image (``engine.anatomy.layouts``): a
        map, channels-last, a transformer's tokens, a vector."""
        size = self._size(size)
        registers = registers_of(self.module)
        return self._once(("layouts", size), lambda: MappingProxyType(
            find_layouts(self.output_shapes(size), size, registers)))

    def as_map(self, path: str, tensor: torch.Tensor, input_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Layer ``path``'s output ``tensor`` as N x C x h x w when the layer is spatial in any
        layout (tokens without their prefix), else as it is; ``input_size`` (H, W) is the
        input it came from, which fixes a token grid's shape."""
        layout = self.layouts().get(path)
        if layout is None or not layout.spatial or layout.kind == MAP:
            return tensor
        return layout.as_map(tensor, input_size)

    def score_layer(self) -> str | None:
        """The recommended Grad-CAM layer: the last spatial layer the class score depends on
        (``engine.anatomy.layer_choice.score_layer``), at the model's own input size."""
        return self._once("score layer", lambda: score_layer(self.module, self.layouts(), self.input_size))

    def classifier_prefix(self, path: str) -> tuple[int, ...]:
        """The prefix tokens (class, distillation) of the penultimate layer ``path`` that the
        classifier reads, where it reads those and no patch token (torchvision's ViT takes
        its class token out of ``encoder.ln`` in code, with no module after it); () for other
        layers, which a user picked to see their patches. Found by one gradient probe
        (``engine.anatomy.layer_choice.read_tokens``) at the model's own input size."""
        def find() -> tuple[int, ...]:
            layout = self.layouts().get(path)
            try:
                if layout is None or layout.kind != TOKENS or path != penultimate_layer(self.module, self.output_shapes()):
                    return ()
            except MethodInputError:
                return ()
            read = read_tokens(self.module, self.layouts(), path, self.input_size)
            if layout is None or not read or any(index >= layout.prefix for index in read):
                return ()
            return read

        return self._once(("classifier prefix", path), find)

    def whole_image_layers(self) -> frozenset[str]:
        """The spatial layers whose units see the whole image though the trace found no
        receptive field for them (tokens after attention: ``engine.anatomy.whole_image``),
        at the model's own input size."""
        return self._once("whole image", lambda: whole_image_layers(self.module, self.layouts(), self.receptive_fields(),
                                                                    self.input_size))

    def depth_presets(self) -> Mapping[str, str]:
        """"early", "middle" and "late" worked out from the anatomy, for models without
        hand-picked presets (``engine.anatomy.layer_choice.depth_presets``)."""
        return self._once("depth presets", lambda: MappingProxyType(
            depth_presets(self.module, self.layouts(), self.score_layer())))

    # -- the fast copy ----------------------------------------------------------------------
    def _usable_copy(self, sample: Sample, layer: str | None) -> _FastCopyRecord | None:
        """The record of the fast copy for the current weights, built on ``sample`` if there is
        none yet; None where the model itself must run (no copy, or ``layer``'s output is
        altered in it)."""
        if self.module.training or self.scripted or not self.could_speed_up:  # without walking the modules each pass
            return None
        version = self.weights_version()
        with self._fast_lock:
            if self._fast is None or self._fast.version != version:
                self._fast = _FastCopyRecord(version, build_fast_copy(self.module, _made(sample)))
            record = self._fast
        if record.copy is None or (layer is not None and layer in record.copy.altered):
            return None
        return record

    def fast_copy(self, sample: Sample, layer: str | None = None) -> nn.Module:
        """The network to run for outputs only: the fast copy, or the model itself when it has
        none, or when ``layer`` (whose output the caller reads) has another output in the
        copy (a layer its normalisation was folded into, a layer cut to the class tokens).

        ``sample`` (a normalised input batch, or what makes one: made only when needed) is
        what a new copy is built and checked on; the copy stays until the weights change."""
        record = self._usable_copy(sample, layer)
        return self.module if record is None else record.copy.module

    def gradient_network(self, sample: Sample, layer: str | None = None) -> nn.Module:
        """The network to take input gradients through: the fast copy where a backward pass
        through it works (tried once per copy, on ``sample``), else the model itself."""
        record = self._usable_copy(sample, layer)
        if record is None:
            return self.module
        with record.backward_lock:
            if record.backward_works is None:
                record.backward_works = backward_works(record.copy.module, _made(sample))
        return record.copy.module if record.backward_works else self.module

    # -- channels-last layout ---------------------------------------------------------------
    @property
    def channels_last_works(self) -> bool:
        """False once the model failed on channels-last input (it reshapes with ``.view()``)."""
        return self._channels_last

    def in_fast_layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (an input batch) in the layout the network runs fastest in."""
        if not self._channels_last or x.dim() != 4:
            return x
        return x.contiguous(memory_format=torch.channels_last)

    def run_in_fast_layout(self, run: Callable[[torch.Tensor], T], x: torch.Tensor) -> T:
        """``run(x)`` with ``x`` in the fast layout; a model whose code cannot take
        channels-last input goes back to the ordinary layout for good (the model's fact, so
        its fast copy shares it), and other errors pass through."""
        tried_channels_last = self._channels_last and x.dim() == 4
        try:
            return run(self.in_fast_layout(x))
        except RuntimeError as exc:
            if not tried_channels_last or "view size is not compatible" not in str(exc):
                raise
            self._channels_last = False  # only ever set to False: threads that race agree
            return run(x)

    # -- learnt from use --------------------------------------------------------------------
    def overwritten_paths(self) -> frozenset[str]:
        """Layers whose outputs the model later overwrites in place, as captures found them:
        captured as copies from the start, so later images need one forward pass."""
        return self._overwritten

    def learn_overwritten(self, paths: Iterable[str]) -> frozenset[str]:
        with self._lock:
            self._overwritten = self._overwritten | frozenset(paths)
            return self._overwritten

    def functional_relus(self, sample: torch.Tensor) -> Mapping[str, str]:
        """Module path -> class name of each module that applies a ReLU as a function
        (``engine.anatomy.relus``), found in one forward pass of ``sample``, run on a twin
        that shares the model's weights so the model's own hooks are left alone. None are
        seen in compiled TorchScript, which takes no hooks."""
        def find() -> Mapping[str, str]:
            if self.scripted:
                return MappingProxyType({})
            return MappingProxyType(functional_relu_calls(module_twin(self.module), sample))

        return self._once("functional relus", find)

    def relu_module_network(self, sample: Sample, layer: str | None = None) -> tuple[nn.Module, int]:
        """``gradient_network(sample, layer)`` with every ReLU it applies as a function made a
        ReLU module (``engine.anatomy.relus.with_relu_modules``: a twin sharing its weights),
        and how many were; the network itself, and 0, when it applies none.

        Made once per network it is made from and weights version. Raises
        ``ReluRewriteError`` when torch.fx cannot rewrite a module (not kept: the next
        asker tries again)."""
        sample = _made(sample)
        base = self.gradient_network(sample, layer)
        if self.scripted:
            return base, 0  # compiled code: neither its calls nor its ReLUs can be reached
        calls = self.functional_relus(sample)
        if not calls:
            return base, 0
        version = self.weights_version()
        with self._relu_lock:
            kept_version, networks = self._relu_networks
            if kept_version != version:
                networks = {}
                self._relu_networks = (version, networks)
            if id(base) not in networks:  # the entry holds base itself, so its id is not reused
                networks[id(base)] = (base, *with_relu_modules(base, dict(calls), sample))
            _, network, made = networks[id(base)]
        return network, made

    # -- this machine's pace ----------------------------------------------------------------
    def speed(self, size: Size = None, fresh: bool = False, check: Callable[[], None] | None = None) -> Speed:
        """Seconds per image of an inference pass and of a forward and backward pass, at
        ``size``, on the device the model is on: timed once (the faster of two timed passes
        after an untimed one, so a first call's allocations do not count), then kept;
        ``fresh``: timed again now (the machine got busier or quieter). ``check`` is called
        between the passes (a cancel token's check: a timing nobody waits for gives way)."""
        size = self._size(size)
        parameter = next(self.module.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        key = ("speed", size, str(device))
        if fresh:
            with self._lock:
                self._slots.pop(key, None)
        return self._once(key, lambda: self._calibrate(size, device, check or (lambda: None)))

    def _calibrate(self, size: InputSize, device: torch.device, check: Callable[[], None]) -> Speed:
        generator = torch.Generator().manual_seed(0)
        batch = torch.randn((CALIBRATION_BATCH, 3, *size), generator=generator).to(device)
        forward = self.fast_copy(batch[:1])
        backward = self.gradient_network(batch[:1])

        def infer() -> None:
            with torch.inference_mode():
                self.run_in_fast_layout(forward, batch)

        def differentiate() -> None:
            pixels = batch.clone().requires_grad_(True)
            output = first_tensor(self.run_in_fast_layout(backward, pixels))
            if output.requires_grad:  # else no gradient goes through the network: no backward pass to time
                output.sum().backward()

        return Speed(forward_s=_fastest(infer, device, check) / CALIBRATION_BATCH,
                     backward_s=_fastest(differentiate, device, check) / CALIBRATION_BATCH)

    def note_run(self, method: str, predicted_s: float, measured_s: float) -> None:
        """A finished run of ``method``: its measured seconds against those predicted from
        ``speed``; later predictions for the method are scaled by the weighted ratio."""
        if predicted_s <= 0 or measured_s <= 0:
            return
        ratio = measured_s / predicted_s
        with self._lock:
            old = self._run_ratios.get(method)
            self._run_ratios[method] = ratio if old is None else RUN_WEIGHT * ratio + (1 - RUN_WEIGHT) * old

    def run_ratios(self) -> dict[str, float]:
        """Method id -> how much longer (>1) or shorter its runs took than predicted."""
        with self._lock:
            return dict(self._run_ratios)


def _leaf_output_bytes(module: nn.Module, shapes: Mapping[str, tuple]) -> ActivationBytes:
    """Bytes of the outputs of the modules in ``shapes`` that hold no other module there
    (a container's output is its last child's, counted once), in the model's dtype."""
    parameter = next(module.parameters(), None)
    item = parameter.element_size() if parameter is not None and parameter.is_floating_point() else 4
    paths = sorted(shapes)
    leaves = [path for path, following in zip(paths, paths[1:] + [None])
              if not (following is not None and (path == "" or following.startswith(path + ".")))]
    sizes = [math.prod(shapes[path]) * item for path in leaves]
    return ActivationBytes(total=sum(sizes), largest=max(sizes, default=0))


def _fastest(fn: Callable[[], None], device: torch.device, check: Callable[[], None], repeats: int = 2) -> float:
    """Seconds of the fastest of ``repeats`` timed calls, after one untimed call; ``check()`` before each."""
    def timed() -> float:
        check()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    check()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return min(timed() for _ in range(repeats))
