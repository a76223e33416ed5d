"""Opening an ONNX file: its graph converted to a PyTorch module by onnx2torch, so that every
method, gradients included, runs on it as on any other network.

What the conversion gives, and what this module adds to it:

- Layer names. onnx2torch makes one submodule per graph node, named after the node: the
  node's name with each ``.`` (which PyTorch forbids in a module name) written as ``/`` and
  a leading ``/`` dropped; a node without a name is called by its operator type; a name
  used twice gets ``_1``, ``_2``...; a node of another domain than ONNX's own is prefixed
  with ``domain/``. So the node ``/layer1/layer1.0/conv1/Conv`` of a PyTorch export is the
  layer ``layer1/layer1/0/conv1/Conv``, and an unnamed Conv is ``Conv``, ``Conv_1``... A
  node name typed as Netron shows it is matched to its layer by the layer look-up's
  close-match suggestion.
- Operator versions. onnx2torch converts each operator at the versions it knows, most of
  them up to opset 17, while PyTorch's exporter writes opset 18 and later. A later
  version of an operator whose ONNX schema only widened its types, or added attributes
  and optional inputs that the node leaves unset, computes the same function on float
  tensors, so the node is converted as the earlier version (``_compatible_converters``:
  ONNX's own schemas, ``onnx.defs``, say what changed). The reductions of opset 18, whose
  axes moved from an attribute to an input, are converted when the axes are constants.
  Any node that still cannot be converted is named in the message, with its operator and
  opset.
- Shared weights. PyTorch's exporter stores a tensor it uses twice once, behind Identity
  nodes, but onnx2torch reads a convolution's weights only from the stored tensors
  themselves: such Identity nodes are bypassed before converting.
- The input size. A graph whose height and width are fixed numbers takes images of exactly
  that size: the model's ``Preprocessing`` is ``exact``, so a photo is squashed to that
  square (never cropped: a map still covers the whole photo, stretched back over it), and
  a graph whose fixed height and width differ is refused. A graph exported with dynamic
  height and width takes any size, like any other model here.
- Batches. Every method runs batches, so a graph that fixes its batch at one image
  (a reshape to a constant shape) is refused with what to export instead: an image run
  with another must give what it gives alone.
- The final Softmax. The methods differentiate and rank the class scores before the
  softmax (the logits), so a graph that ends with a Softmax over its classes loses it.
- Gradients. onnx2torch's conversions are differentiable where their operators are: each
  one that takes a float tensor was tried alone (onnx2torch 1.5.15), a backward pass
  against finite differences, and none failed. Round, Floor, Ceil and Sign pass on a zero
  gradient, their derivative almost everywhere. The ones that pass on none turn floats
  into integers or booleans (Cast to an integer type, ArgMax, ArgMin, TopK's indices, the
  comparisons, IsInf, IsNaN, NonZero, Shape); a graph whose output reaches its input only
  through them gives no gradient at all. Such a model still loads: ``forward_only`` says
  why (the probe at load time names the nodes), the methods that need gradients refuse
  it, and the others run.

Preprocessing metadata is rarely in an ONNX file: the ImageNet mean and deviation are used,
and the labels are ImageNet's names for 1000 classes, numbers otherwise.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from engine.anatomy.hooks import first_tensor
from engine.core.errors import ModelLoadError
from engine.core.errors import first_line
from engine.models.preprocessing import Preprocessing

ONNX_SUFFIX = ".onnx"
PROTOBUF_LIMIT = 2**31 - 1  # bytes: the ONNX checker reads a larger model from its file only
# The highest opset at which onnx2torch knows almost every operator it converts: what a
# message asks an export to use.
CONVERTIBLE_OPSET = 17
OPEN_THE_ORIGINAL = 'or open the original PyTorch model with "File > Open model file..." or --model FILE'
# An image run in a batch of two must give what it gives alone, to float rounding.
BATCH_TOLERANCE = 1e-4
# Attribute values that a later version of an operator added to an attribute the earlier
# one had (ONNX's changelog): the earlier converter would misread them.
_NEW_ATTRIBUTE_VALUES = {
    ("Pad", "mode"): {"wrap"},  # Pad-19
    ("Resize", "coordinate_transformation_mode"): {"half_pixel_symmetric"},  # Resize-19
    ("ScatterND", "reduction"): {"max", "min"},  # ScatterND-18
}
_REDUCTIONS_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                  "ReduceProd", "ReduceSumSquare")
# Operators whose integer output describes a tensor's shape, not its values: a gradient
# never went through them, so they are not where one is lost.
_SHAPE_OPERATORS = {"Shape", "Size"}
_REGISTRY_LOCK = threading.Lock()  # onnx2torch's converter table is changed and read by one conversion at a time


@dataclass
class OnnxModel:
    """A converted ONNX graph and what was learnt about it while converting."""

    module: nn.Module
    preprocessing: Preprocessing
    forward_only: str | None = None  # why no gradient can be taken through it; None: gradients work
    notes: list[str] = field(default_factory=list)  # what the user should know about how it was opened


@dataclass(frozen=True)
class _Node:
    """A graph node as a message names it."""

    name: str
    op_type: str
    domain: str
    opset: int

    def described(self) -> str:
        domain = f", domain {self.domain}" if self.domain else ""
        return f"'{self.name}' ({self.op_type}{domain}, opset {self.opset})"


def is_onnx_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def read_onnx_file(path: str | os.PathLike) -> OnnxModel:
    """The network in an ONNX file, as a PyTorch module, with its preprocessing.

    Raises ``ModelLoadError`` for a file that is not a readable ONNX model, a graph that is
    not an image classifier ConvScope can feed, and operators that cannot be converted.
    """
    path = Path(path)
    proto = _read_proto(path)
    size = _input_size(proto, path.name)
    _bypass_initializer_identities(proto)
    nodes = _nodes(proto)
    module = _convert(proto, nodes, path.name)
    notes = [f"converted from ONNX (opset {_opset(proto)}) by onnx2torch; its layers are named after the graph's nodes"]
    if _drop_final_softmax(module):
        notes.append("its final Softmax is left out: the methods use the class scores before it")
    preprocessing = Preprocessing() if size is None else Preprocessing(size=size, fixed_size=(size, size))
    if size is not None:
        notes.append(f"its graph fixes the input at {size}x{size}: images are resized to exactly that, so a photo "
                     f"that is not square is squashed (never cropped)")
    module.eval()
    for parameter in module.parameters():  # as ``load_model`` leaves every model: gradients are the input's only
        parameter.requires_grad_(False)
    sample = _sample(preprocessing.size)
    first_alone, forward_only = _gradient_problem(module, nodes, sample[:1], path.name)
    _check_batches(module, sample, first_alone, path.name)
    return OnnxModel(module=module, preprocessing=preprocessing, forward_only=forward_only, notes=notes)


# -- reading ----------------------------------------------------------------------------------

def _read_proto(path: Path):
    import onnx

    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist or is not a file")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, a missing external-data file...: the file is unreadable
        raise ModelLoadError(f"{path.name} is not a readable ONNX model (it may be truncated, or not ONNX at all): "
                             f"{first_line(exc)}") from None
    try:
        onnx.checker.check_model(str(path) if proto.ByteSize() > PROTOBUF_LIMIT else proto)
    except Exception as exc:  # onnx.checker.ValidationError and the C++ checker's errors
        raise ModelLoadError(f"{path.name} is not a valid ONNX model (it may be truncated or damaged): "
                             f"{first_line(exc)}") from None
    if not proto.graph.node:
        raise ModelLoadError(f"{path.name} holds an ONNX graph without any operation")
    return proto


def _opset(proto, domain: str = "") -> int:
    """The opset the model imports for ``domain`` ("" and "ai.onnx" are ONNX's own)."""
    versions = {("" if entry.domain == "ai.onnx" else entry.domain): entry.version for entry in proto.opset_import}
    return versions.get(domain, 1)


def _input_size(proto, file_name: str) -> int | None:
    """The side of the square images the graph takes when it fixes their size, else None;
    refuses a graph that does not take one batch of RGB images."""
    from onnx import TensorProto

    stored = {initializer.name for initializer in proto.graph.initializer}
    inputs = [value for value in proto.graph.input if value.name not in stored]
    if len(inputs) != 1:
        names = ", ".join(f"'{value.name}'" for value in inputs) or "none"
        raise ModelLoadError(f"{file_name} takes {len(inputs)} inputs ({names}); ConvScope feeds a model one input, "
                             f"a batch of images")
    value = inputs[0]
    tensor = value.type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        kind = TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "not a tensor"
        raise ModelLoadError(f"{file_name} takes {kind} input '{value.name}'; ConvScope feeds float32 images. "
                             f"Export the model with a float32 input")
    if not tensor.HasField("shape"):  # a graph that does not say: any size, as far as it tells
        return None
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim]
    shown = "x".join("?" if dim is None else str(dim) for dim in dims)
    if len(dims) != 4:
        raise ModelLoadError(f"{file_name} takes a {len(dims)}-D input ({shown}); ConvScope feeds images as "
                             f"N x 3 x height x width")
    if dims[1] is not None and dims[1] != 3:
        if dims[3] == 3:
            raise ModelLoadError(f"{file_name} takes its images channels last ({shown}), as TensorFlow exports do; "
                                 f"ConvScope feeds N x 3 x height x width. Convert it with its input channels first "
                                 f"(tf2onnx: --inputs-as-nchw {value.name})")
        raise ModelLoadError(f"{file_name} takes images with {dims[1]} channels ({shown}); ConvScope feeds RGB images")
    height, width = dims[2], dims[3]
    if height is None or width is None:
        return None
    if height != width:
        raise ModelLoadError(f"{file_name} fixes its input at {height}x{width} (height x width); ConvScope can feed "
                             f"a fixed size only when it is square. Export the model with dynamic height and width "
                             f"(torch.onnx.export(..., dynamic_axes={{'{value.name}': {{2: 'height', 3: 'width'}}}}))")
    return height


def _bypass_initializer_identities(proto) -> None:
    """Nodes that read a stored tensor through an Identity node read the stored tensor itself."""
    stored = {initializer.name for initializer in proto.graph.initializer}
    outputs = {value.name for value in proto.graph.output}
    aliases = {node.output[0]: node.input[0] for node in proto.graph.node
               if node.op_type == "Identity" and node.input and node.input[0] in stored and node.output[0] not in outputs}
    if not aliases:
        return
    kept = [node for node in proto.graph.node if not (node.op_type == "Identity" and node.output[0] in aliases)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = aliases.get(name, name)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)


# -- converting -------------------------------------------------------------------------------

def _convert(proto, nodes: dict[str, _Node], file_name: str) -> fx.GraphModule:
    from onnx2torch import convert

    with _REGISTRY_LOCK:
        _register_reductions_with_axes_input()
        compatible, missing = _converters_for(proto, nodes)
        if missing:
            raise ModelLoadError(_missing_message(file_name, missing))
        with _registered(compatible):
            try:
                return convert(proto)
            except Exception as exc:  # a converter refused a node's attributes or inputs: find which
                failed = _failing_node(proto, nodes)
                where = f"node {failed[0].described()}" if failed else "the graph"
                reason = first_line(failed[1] if failed else exc)
                raise ModelLoadError(f"{file_name} cannot be converted to PyTorch: {where} fails in onnx2torch "
                                     f"({reason}). Export the model again without it (at opset {CONVERTIBLE_OPSET} or "
                                     f"lower), {OPEN_THE_ORIGINAL}") from None


def _nodes(proto) -> dict[str, _Node]:
    """Each node by the name onnx2torch gives its module (its layer name here)."""
    from onnx2torch.onnx_graph import OnnxGraph

    return {name: _Node(node.proto.name or name, node.operation_type, node.domain, _opset(proto, node.domain))
            for name, node in OnnxGraph(proto.graph).nodes.items()}


def _converters_for(proto, nodes: dict[str, _Node]):
    """(converters to register while converting, for later operator versions that compute what
    an earlier converted one does; the nodes that cannot be converted, each with why)."""
    from onnx import defs
    from onnx2torch.node_converters.registry import OperationDescription, get_converter

    protos = {name: node for name, node in zip(nodes, proto.graph.node)}
    compatible, missing = {}, []
    for name, node in nodes.items():
        try:
            get_converter(operation_type=node.op_type, version=node.opset, domain=node.domain)
            continue
        except NotImplementedError:
            pass
        try:
            version = defs.get_schema(node.op_type, max_inclusive_version=node.opset, domain=node.domain).since_version
        except Exception:  # onnx.defs.SchemaError: an operator ONNX itself does not define (a custom domain)
            missing.append((node, "an operator outside the ONNX standard"))
            continue
        converter, why = _earlier_converter(node, protos[name], version)
        if converter is None:
            missing.append((node, why))
        else:
            compatible[OperationDescription(node.domain, node.op_type, version)] = converter
    return compatible, missing


def _earlier_converter(node: _Node, proto_node, version: int):
    """(the converter of an earlier version of the node's operator that computes what this
    version computes for this node, or None; why there is none)."""
    from onnx import defs
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    known = sorted(d.version for d in _CONVERTER_REGISTRY if (d.domain, d.operation_type) == (node.domain, node.op_type))
    if not known:
        return None, "onnx2torch has no converter for it"
    earlier = [v for v in known if v < version]
    if not earlier:
        return None, f"onnx2torch converts it from opset {known[0]} on"
    later_version = f"onnx2torch converts it up to opset {known[-1]}"
    old = defs.get_schema(node.op_type, max_inclusive_version=earlier[-1], domain=node.domain)
    new = defs.get_schema(node.op_type, version, domain=node.domain)
    old_inputs, new_inputs = [i.name for i in old.inputs], [i.name for i in new.inputs]
    given = [name for name in proto_node.input]
    same_function = (
        new_inputs[:len(old_inputs)] == old_inputs
        and not any(given[len(old_inputs):])  # the inputs added since are left empty
        and [o.name for o in old.outputs] == [o.name for o in new.outputs]
        and all(attribute.name in old.attributes for attribute in proto_node.attribute)  # no attribute added since is set
        and not any(_new_value(node.op_type, attribute) for attribute in proto_node.attribute)
    )
    if not same_function:
        return None, later_version
    return _CONVERTER_REGISTRY[OperationDescription(node.domain, node.op_type, earlier[-1])], later_version


def _new_value(op_type: str, attribute) -> bool:
    """Whether the attribute has a value that only a later version of the operator knows."""
    from onnx import helper

    values = _NEW_ATTRIBUTE_VALUES.get((op_type, attribute.name))
    if not values:
        return False
    value = helper.get_attribute_value(attribute)
    return (value.decode() if isinstance(value, bytes) else value) in values


@contextmanager
def _registered(converters: dict):
    """onnx2torch's converter table with ``converters`` added, for the length of the block."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    added = [key for key in converters if key not in _CONVERTER_REGISTRY]
    _CONVERTER_REGISTRY.update({key: converters[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            del _CONVERTER_REGISTRY[key]


def _failing_node(proto, nodes: dict[str, _Node]):
    """(the first node whose converter fails, its exception), or None."""
    from onnx.shape_inference import infer_shapes
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    try:
        graph = OnnxGraph(infer_shapes(proto).graph)
    except Exception:
        return None
    for name, node in graph.nodes.items():
        try:
            get_converter(operation_type=node.operation_type, version=nodes[name].opset, domain=node.domain)(node, graph)
        except Exception as exc:  # what the converter says is the reason the message gives
            return nodes[name], exc
    return None


def _missing_message(file_name: str, missing: list) -> str:
    by_operator: dict[tuple, list[_Node]] = {}
    for node, why in missing:
        by_operator.setdefault((node.op_type, node.domain, node.opset, why), []).append(node)
    parts = []
    for (op_type, domain, opset, why), group in by_operator.items():
        names = ", ".join(f"'{node.name}'" for node in group[:3]) + (f" and {len(group) - 3} more" if len(group) > 3 else "")
        domain_text = f", domain {domain}" if domain else ""
        parts.append(f"{op_type} ({why}{domain_text}, opset {opset}; node{'s' if len(group) > 1 else ''} {names})")
    versions_only = all("opset" in why for _node, why in missing)
    advice = (f"Export the model again at opset {CONVERTIBLE_OPSET} (torch.onnx.export(..., opset_version="
              f"{CONVERTIBLE_OPSET}))" if versions_only else
              f"Export the model again without these operators (at opset {CONVERTIBLE_OPSET} or lower, from a float "
              f"model), {OPEN_THE_ORIGINAL}")
    return f"{file_name} cannot be converted to PyTorch: onnx2torch cannot convert {'; '.join(parts)}. {advice}"


def _register_reductions_with_axes_input() -> None:
    """Opset 18's reductions take their axes as an input: converted when those are constants
    (registered once, for good: unlike the compatible converters, they fit every such node)."""
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    def convert_reduction(node, graph):
        axes = None
        if len(node.input_values) > 1 and node.input_values[1]:
            axes = [int(axis) for axis in get_const_value(node.input_values[1], graph).reshape(-1).tolist()]
        if not axes and node.attributes.get("noop_with_empty_axes", 0):
            raise NotImplementedError("noop_with_empty_axes is not supported")
        module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes,
                                      keepdims=node.attributes.get("keepdims", 1))
        return OperationConverterResult(torch_module=module,
                                        onnx_mapping=OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))

    for op_type in _REDUCTIONS_18:
        for version in (18, 20) if op_type in ("ReduceMax", "ReduceMin") else (18,):
            if OperationDescription("", op_type, version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op_type, version=version)(convert_reduction)


# -- after converting -------------------------------------------------------------------------

def _drop_final_softmax(module: fx.GraphModule) -> bool:
    """Make the module return the scores a final Softmax over the classes normalises."""
    output = next(node for node in module.graph.nodes if node.op == "output")
    last = output.args[0]
    if not isinstance(last, fx.Node) or last.op != "call_module":
        return False
    softmax = module.get_submodule(last.target)
    axis = getattr(softmax, "dim", getattr(softmax, "axis", None))
    is_softmax = type(softmax).__name__ in ("Softmax", "OnnxSoftmaxV1V11") and not getattr(softmax, "is_log", False)
    if not is_softmax or axis not in (1, -1) or len(last.args) != 1:
        return False
    output.args = (last.args[0],)
    module.graph.erase_node(last)
    module.delete_submodule(last.target)
    module.recompile()
    return True


def _sample(size: int) -> torch.Tensor:
    """Two different images, in the range a normalised photo has."""
    return torch.randn((2, 3, size, size), generator=torch.Generator().manual_seed(0))


def _check_batches(module: nn.Module, sample: torch.Tensor, first_alone: torch.Tensor, file_name: str) -> None:
    """Refuse a module that cannot run ``sample``'s two images as one batch, or whose output
    for the first of them then differs from ``first_alone``, its output for it alone."""
    advice = (f"Export it again with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={{'input': {{0: "
              f"'batch'}}}}), the input's name for 'input')")
    with torch.no_grad():
        try:
            together = first_tensor(module(sample))
        except Exception as exc:  # a reshape to a constant shape, most often
            raise ModelLoadError(f"{file_name} takes one image at a time ({first_line(exc)}), but ConvScope runs "
                                 f"images in batches. {advice}") from None
    scale = first_alone.abs().max().clamp(min=1e-6)
    if (together.shape[0] != len(sample) or together.shape[1:] != first_alone.shape[1:]
            or (together[:1] - first_alone).abs().max() > BATCH_TOLERANCE * scale):
        raise ModelLoadError(f"{file_name} gives other results for an image run with another than for it alone: its "
                             f"graph fixes the batch at one image, and ConvScope runs images in batches. {advice}")


def _gradient_problem(module: nn.Module, nodes: dict[str, _Node], image: torch.Tensor,
                      file_name: str) -> tuple[torch.Tensor, str | None]:
    """The module's output for ``image`` (1 x 3 x H x W), and why no input gradient can be
    taken through the module (None when one can)."""
    cut: list[str] = []  # nodes a gradient reached that pass none on

    def note_cut(name):
        def hook(_module, inputs, output):
            received = any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            if received and not any(isinstance(t, torch.Tensor) and t.requires_grad for t in outputs):
                cut.append(name)
        return hook

    handles = [part.register_forward_hook(note_cut(name)) for name, part in module.named_children() if name in nodes]
    try:
        x = image.clone().requires_grad_(True)
        with torch.enable_grad():
            try:
                output = first_tensor(module(x))
            except Exception as exc:  # the model cannot run at all: say so with the size it was given
                raise ModelLoadError(f"{file_name} does not run on a 1x3x{image.shape[2]}x{image.shape[3]} image: "
                                     f"{first_line(exc)}") from None
            if output.requires_grad:
                weights = torch.rand(output.shape, generator=torch.Generator().manual_seed(1))
                try:
                    gradient, = torch.autograd.grad((output * weights).sum(), x, allow_unused=True)
                except RuntimeError as exc:
                    return output.detach(), f"a backward pass through it fails ({first_line(exc)})"
                if gradient is not None and bool(gradient.isfinite().all()) and bool(gradient.any()):
                    return output.detach(), None
                if gradient is not None:
                    return output.detach(), ("its output does not change with its input to first order (the gradient "
                                             "is zero everywhere)")
    finally:
        for handle in handles:
            handle.remove()
    culprits = [nodes[name] for name in cut if nodes[name].op_type not in _SHAPE_OPERATORS]
    named = ", ".join(f"{node.described()}" for node in culprits[:3]) or "an operation that is not differentiable"
    return output.detach(), (f"no gradient reaches its input: it passes through {named}, whose output is not a "
                              f"differentiable float")

