"""Receptive fields of every layer, worked out from the architecture.

One forward pass runs under a ``TorchFunctionMode`` that sees every torch operation and
carries, for each tensor it produced, the receptive field of that tensor's units: per axis
(h, w) its ``size``, the ``jump`` between neighbouring units and the ``start`` (centre of
unit 0's field), all in input pixels where pixel ``i`` spans ``[i, i + 1)``. Sliding
windows (convolutions, pools) grow and stride the field, padding shifts it, element-wise
operations and concatenations take the union of their inputs' fields. Because the rules
follow the operations and not the module types, residual adds, concatenations, depthwise
convolutions and ``F.pad``-based "SAME" padding need no special cases.

What the fields mean, and where they stop:

* The field is *local*: an input whose map is 1x1 and is broadcast onto a larger map (the
  gate of a squeeze-and-excitation block, a global normaliser) is left out of the union,
  although strictly every unit then depends on the whole image.
* A field counts padding positions, so near the border ``ReceptiveField.box`` reaches
  past the image; it is never clipped.
* A tensor without spatial axes (after ``flatten``, ``linear``, a mean over the map) has
  the field ``None``: its units see the whole image. Operations that change the map's size
  in ways not modelled here (cropping by slicing, ``grid_sample``...) give ``None`` too.
* Upsampling (``interpolate``) is modelled as a linear map, which is exact for the jump
  and an approximation for the start and size.
* A module called more than once in a forward pass (torchvision's ResNet blocks call one
  ReLU twice) is reported for its first call.
* TorchScript modules cannot be hooked and their operations are invisible, so they get
  no entry.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from engine.anatomy.hooks import StopForward, first_tensor, hooked
from engine.anatomy.layers import is_hookable

__all__ = ["INPUT_PIXEL", "LayerTrace", "ReceptiveField", "trace_layers"]


class _Axis(NamedTuple):
    """The receptive field along one axis."""

    size: float
    jump: float
    start: float

    def window(self, kernel: int, stride: int, padding: float, dilation: int = 1) -> "_Axis":
        """After a sliding window (convolution or pool) over this axis."""
        reach = dilation * (kernel - 1)  # effective kernel size minus one
        return _Axis(
            size=self.size + reach * self.jump,
            jump=self.jump * stride,
            start=self.start + (reach / 2 - padding) * self.jump,
        )

    def padded(self, before: float) -> "_Axis":
        """After padding ``before`` units in front (a negative amount crops)."""
        return self._replace(start=self.start - before * self.jump)

    def hull(self, other: "_Axis") -> "_Axis | None":
        """The smallest field holding both; None when their units are not spaced alike."""
        if not math.isclose(self.jump, other.jump):
            return None
        low = min(self.start - self.size / 2, other.start - other.size / 2)
        high = max(self.start + self.size / 2, other.start + other.size / 2)
        return _Axis(size=high - low, jump=self.jump, start=(low + high) / 2)


@dataclass(frozen=True)
class ReceptiveField:
    """Where in the input image the units of one feature map look.

    Each tuple is (h, w), in input pixels. ``size`` is the field's extent, ``jump`` the
    distance between the fields of neighbouring units, ``start`` the centre of the field
    of unit (0, 0); pixel ``i`` spans ``[i, i + 1)``, so the input itself has size 1,
    jump 1 and start 0.5.
    """

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]

    @classmethod
    def square(cls, size: float, jump: float = 1, start: float = 0.5) -> "ReceptiveField":
        """The same field along both axes."""
        return cls((size, size), (jump, jump), (start, start))

    @property
    def is_square(self) -> bool:
        return self.size[0] == self.size[1] and self.jump[0] == self.jump[1] and self.start[0] == self.start[1]

    def centre(self, y: int, x: int) -> tuple[float, float]:
        """(row, column) of the centre of unit (y, x)'s field."""
        return self.start[0] + y * self.jump[0], self.start[1] + x * self.jump[1]

    def box(self, y: int, x: int) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) of unit (y, x)'s field; bottom and right exclusive.

        Not clipped to the image: near the border the box covers padding.
        """
        centre_y, centre_x = self.centre(y, x)
        half_h, half_w = self.size[0] / 2, self.size[1] / 2
        return centre_y - half_h, centre_x - half_w, centre_y + half_h, centre_x + half_w

    def __str__(self) -> str:
        return f"{_pair_text(self.size)} px, jump {_pair_text(self.jump)}, start {_pair_text(self.start)}"

    @property
    def _axes(self) -> tuple[_Axis, _Axis]:
        return (_Axis(self.size[0], self.jump[0], self.start[0]), _Axis(self.size[1], self.jump[1], self.start[1]))

    @classmethod
    def _from_axes(cls, h: _Axis | None, w: _Axis | None) -> "ReceptiveField | None":
        if h is None or w is None:
            return None
        return cls((h.size, w.size), (h.jump, w.jump), (h.start, w.start))


INPUT_PIXEL = ReceptiveField.square(1, 1, 0.5)  # the field of the input tensor itself


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _pair_text(pair: tuple[float, float]) -> str:
    """"196" when both axes agree, "196x212" (h x w) when they do not."""
    h, w = pair
    return _number_text(h) if h == w else f"{_number_text(h)}x{_number_text(w)}"


@dataclass(frozen=True)
class LayerTrace:
    """What one module produced in the traced forward pass (its first call's output)."""

    output_shape: tuple[int, ...] | None  # of the first tensor when it returns several
    receptive_field: ReceptiveField | None  # None: no spatial axes, the unit sees everything


# --- Propagation rules -----------------------------------------------------------------


class _Tracked(NamedTuple):
    """What the tracer knows about one tensor."""

    field: ReceptiveField | None
    spatial_dims: tuple[int, int] | None  # positions of the h and w axes; None with no field


_NO_FIELD = _Tracked(None, None)
_TrackedInputs = list[tuple[torch.Tensor, _Tracked]]  # the arguments of one call the tracer knows


def _pair(value: Any) -> tuple[Any, Any]:
    if isinstance(value, (list, tuple, torch.Size)):
        return (value[0], value[0]) if len(value) == 1 else (value[-2], value[-1])
    return value, value


def _bind(names: Sequence[str], args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by parameter name."""
    return {**dict(zip(names, args)), **kwargs}


def _sliding_window(field: ReceptiveField, kernel, stride, padding, dilation=1) -> ReceptiveField | None:
    kernel = _pair(kernel)
    stride = _pair(stride) if stride not in (None, (), []) else kernel  # pools default to stride = kernel
    padding, dilation = _pair(padding), _pair(dilation)
    return ReceptiveField._from_axes(
        *(axis.window(k, s, p, d) for axis, k, s, p, d in zip(field._axes, kernel, stride, padding, dilation))
    )


def _conv2d(field, args, kwargs, in_hw, out_hw):
    call = _bind(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args, kwargs)
    kernel = tuple(call["weight"].shape[-2:])
    dilation = _pair(call.get("dilation", 1))
    padding = call.get("padding", 0)
    if padding == "valid":
        padding = 0
    elif padding == "same":  # PyTorch puts the odd extra pixel after, like TensorFlow
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return _sliding_window(field, kernel, call.get("stride", 1), padding, dilation)


def _max_pool2d(field, args, kwargs, in_hw, out_hw):
    call = _bind(("input", "kernel_size", "stride", "padding", "dilation"), args, kwargs)
    return _sliding_window(
        field, call["kernel_size"], call.get("stride"), call.get("padding", 0), call.get("dilation", 1)
    )


def _avg_pool2d(field, args, kwargs, in_hw, out_hw):
    call = _bind(("input", "kernel_size", "stride", "padding"), args, kwargs)
    return _sliding_window(field, call["kernel_size"], call.get("stride"), call.get("padding", 0))


def _lp_pool2d(field, args, kwargs, in_hw, out_hw):
    call = _bind(("input", "norm_type", "kernel_size", "stride"), args, kwargs)
    return _sliding_window(field, call["kernel_size"], call.get("stride"), 0)


def _adaptive_pool2d(field, args, kwargs, in_hw, out_hw):
    # An output that divides the input is an ordinary pool with kernel = stride = in / out
    # (a 1x1 output pools the whole map); otherwise the windows differ in size and overlap
    # unevenly, which one field cannot describe.
    if any(n_out == 0 or n_in % n_out for n_in, n_out in zip(in_hw, out_hw)):
        return None
    kernel = tuple(n_in // n_out for n_in, n_out in zip(in_hw, out_hw))
    return _sliding_window(field, kernel, kernel, 0)


def _pad(field, args, kwargs, in_hw, out_hw):
    call = _bind(("input", "pad"), args, kwargs)
    amounts = list(call["pad"])  # (w_before, w_after, h_before, h_after, ...): last axis first
    w_before = amounts[0] if len(amounts) >= 2 else 0
    h_before = amounts[2] if len(amounts) >= 4 else 0
    h, w = field._axes
    return ReceptiveField._from_axes(h.padded(h_before), w.padded(w_before))


# How many input units an output unit of each interpolation mode blends, along one axis.
_INTERPOLATION_TAPS = {"nearest": 1, "nearest-exact": 1, "area": 1, "bilinear": 2, "linear": 2, "bicubic": 4}


def _interpolate(field, args, kwargs, in_hw, out_hw):
    call = _bind(("input", "size", "scale_factor", "mode"), args, kwargs)
    taps = _INTERPOLATION_TAPS.get(call.get("mode", "nearest"), 2)
    axes = []
    for axis, n_in, n_out in zip(field._axes, in_hw, out_hw):
        scale = n_out / n_in
        # Output unit j samples near input position (j + 0.5) / scale - 0.5 (half-pixel centres).
        axes.append(
            _Axis(
                size=axis.size + (taps - 1) * axis.jump,
                jump=axis.jump / scale,
                start=axis.start + (0.5 / scale - 0.5) * axis.jump,
            )
        )
    return ReceptiveField._from_axes(*axes)


_SpatialRule = Callable[[ReceptiveField, tuple, dict, tuple[int, int], tuple[int, int]], "ReceptiveField | None"]

# Operations on the two trailing (h, w) axes, by function name as the mode sees it.
_SPATIAL_RULES: dict[str, _SpatialRule] = {
    "conv2d": _conv2d,
    "max_pool2d": _max_pool2d,
    "_max_pool2d": _max_pool2d,
    "max_pool2d_with_indices": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "lp_pool2d": _lp_pool2d,
    "adaptive_avg_pool2d": _adaptive_pool2d,
    "adaptive_max_pool2d": _adaptive_pool2d,
    "_adaptive_max_pool2d": _adaptive_pool2d,
    "adaptive_max_pool2d_with_indices": _adaptive_pool2d,
    "pad": _pad,
    "constant_pad_nd": _pad,
    "interpolate": _interpolate,
}

_PERMUTATIONS = {"permute"}
_TRANSPOSITIONS = {"transpose", "transpose_", "swapaxes", "swapdims"}


def _spatial_op(name: str, args: tuple, kwargs: dict, source: _Tracked, out: torch.Tensor) -> _Tracked:
    feature_map = args[0] if args else kwargs.get("input")
    trailing = (feature_map.dim() - 2, feature_map.dim() - 1)
    if source.field is None or source.spatial_dims != trailing:
        return _NO_FIELD
    in_hw, out_hw = tuple(feature_map.shape[-2:]), tuple(out.shape[-2:])
    field = _SPATIAL_RULES[name](source.field, args, kwargs, in_hw, out_hw)
    return _NO_FIELD if field is None else _Tracked(field, (out.dim() - 2, out.dim() - 1))


def _moved_axes(name: str, args: tuple, kwargs: dict, source: _Tracked, ndim: int) -> _Tracked:
    """Permutations and transpositions keep the field but move the spatial axes."""
    if source.field is None:
        return _NO_FIELD
    if name in _PERMUTATIONS:  # x.permute(0, 2, 3, 1), x.permute((0, 2, 3, 1)) or torch.permute(x, dims)
        order = args[1:] if len(args) > 2 else _bind(("input", "dims"), args, kwargs)["dims"]
        order = [d % ndim for d in order]
    else:
        call = _bind(("input", "dim0", "dim1"), args, kwargs)
        first, second = call["dim0"] % ndim, call["dim1"] % ndim
        order = list(range(ndim))
        order[first], order[second] = second, first
    return _Tracked(source.field, tuple(order.index(d) for d in source.spatial_dims))


def _element_wise(inputs: _TrackedInputs, out: torch.Tensor) -> _Tracked:
    """Any other operation: a unit sees the union of what the matching input units see.

    An input "matches" when its spatial axes land, aligned as broadcasting aligns them, on
    output axes of the same sizes. Inputs that are 1x1 there are broadcast onto the map
    (squeeze-and-excitation gates) and left out, which keeps the field local. Any other
    input means the operation reshaped the map: no field.
    """
    out_dims = None
    for tensor, tracked in inputs:
        out_dims = _aligned_dims(tensor, tracked, out)
        if out_dims is not None:
            break
    if out_dims is None:
        return _NO_FIELD

    h_axis = w_axis = None
    for tensor, tracked in inputs:
        if _aligned_dims(tensor, tracked, out) == out_dims:
            h, w = tracked.field._axes
            h_axis = h if h_axis is None else h_axis.hull(h)
            w_axis = w if w_axis is None else w_axis.hull(w)
        elif not _is_broadcast(tensor, out, out_dims):
            return _NO_FIELD
    field = ReceptiveField._from_axes(h_axis, w_axis)
    return _NO_FIELD if field is None else _Tracked(field, out_dims)


def _aligned_dims(tensor: torch.Tensor, tracked: _Tracked, out: torch.Tensor) -> tuple[int, int] | None:
    """Where the tensor's spatial axes sit in ``out``, if they are there with the same sizes."""
    if tracked.field is None:
        return None
    shift = out.dim() - tensor.dim()  # broadcasting and reshapes align trailing axes
    dims = tuple(d + shift for d in tracked.spatial_dims)
    if any(d < 0 or d >= out.dim() for d in dims):
        return None
    same_size = all(out.shape[o] == tensor.shape[i] for o, i in zip(dims, tracked.spatial_dims))
    return dims if same_size else None


def _is_broadcast(tensor: torch.Tensor, out: torch.Tensor, out_dims: tuple[int, int]) -> bool:
    """Whether the tensor has size 1 (or no axis at all) where ``out`` has its map."""
    shift = out.dim() - tensor.dim()
    return all(d - shift < 0 or tensor.shape[d - shift] == 1 for d in out_dims)


def _propagate(func: Callable, args: tuple, kwargs: dict, inputs: _TrackedInputs, out: torch.Tensor) -> _Tracked:
    name = getattr(func, "__name__", "")
    if name in _SPATIAL_RULES:
        feature_map = args[0] if args else kwargs.get("input")
        source = next((tracked for tensor, tracked in inputs if tensor is feature_map), None)
        return _NO_FIELD if source is None else _spatial_op(name, args, kwargs, source, out)
    if (name in _PERMUTATIONS or name in _TRANSPOSITIONS) and args and inputs[0][0] is args[0]:
        return _moved_axes(name, args, kwargs, inputs[0][1], out.dim())
    return _element_wise(inputs, out)


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in an argument or result, looking inside lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)


class _FieldTracer(TorchFunctionMode):
    """Sees every torch call in its ``with`` block and tracks the fields of the results.

    Tensors are remembered by id() through weak references: an entry goes when its tensor
    does, so a freed tensor's id can never be mistaken for a new one, and the trace does
    not keep every intermediate map of the network alive.
    """

    def __init__(self) -> None:
        super().__init__()
        self._entries: dict[int, tuple[weakref.ref, _Tracked]] = {}

    def track(self, tensor: torch.Tensor, tracked: _Tracked) -> None:
        key = id(tensor)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is tensor:  # an in-place op: same tensor, new contents
            self._entries[key] = (entry[0], tracked)
            return
        entries = self._entries
        self._entries[key] = (weakref.ref(tensor, lambda _ref: entries.pop(key, None)), tracked)

    def lookup(self, tensor: torch.Tensor) -> _Tracked | None:
        entry = self._entries.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def forget_all(self) -> None:
        self._entries.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)  # the mode is suspended inside, so this does not recurse
        inputs = [(t, tracked) for t in _tensors_in((args, kwargs)) if (tracked := self.lookup(t)) is not None]
        if inputs:
            for out in _tensors_in(result):
                self.track(out, _propagate(func, args, kwargs, inputs, out))
        return result


# --- Tracing a model -------------------------------------------------------------------


def trace_layers(model: nn.Module, x: torch.Tensor, until: str | None = None) -> dict[str, LayerTrace]:
    """Output shape and receptive field of every module whose forward ran on ``x``.

    Keys are paths as ``model.named_modules()`` gives them (the model itself is ""), in the
    order the modules finished running (a container after what it contains), as
    ``capture_outputs`` sees them. With ``until``, the pass stops once that module has run.
    One forward pass runs in eval mode without gradients; the model's train/eval flags are
    restored and the hooks removed afterwards, even on error.
    """
    tracer = _FieldTracer()
    traces: dict[str, LayerTrace] = {}

    def recorder(path: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if path in traces:  # called again in the same pass: the first call's output stands
                return
            tensor = first_tensor(output)
            if tensor is None:
                traces[path] = LayerTrace(None, None)
            else:
                tracked = tracer.lookup(tensor)
                traces[path] = LayerTrace(tuple(tensor.shape), None if tracked is None else tracked.field)
            if path == until:
                raise StopForward

        return record

    modules = dict(model.named_modules())
    training_flags = [(module, module.training) for module in modules.values()]
    try:
        with hooked((module, recorder(path)) for path, module in modules.items() if is_hookable(module)):
            model.eval()
            with torch.no_grad(), tracer:
                tracer.track(x, _Tracked(INPUT_PIXEL, (x.dim() - 2, x.dim() - 1)))
                try:
                    model(x)
                except StopForward:
                    pass
    finally:
        for module, training in training_flags:
            module.training = training
        tracer.forget_all()
    return traces
