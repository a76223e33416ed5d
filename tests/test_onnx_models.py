"""ONNX files: converted by onnx2torch, they give what the PyTorch model they were exported from gives.

A random-init ResNet-18 is exported once per module, as a user of this PyTorch would (the
TorchScript exporter at its default opset, which onnx2torch does not know for every
operator), at 64x64 with static shapes and again with dynamic axes. Its batch norms get
random statistics, so that no two stored tensors are equal (the exporter would share them).
Tiny graphs built with ``onnx.helper`` give the cases no exporter makes on purpose.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from engine.core.errors import MethodInputError, ModelLoadError
from engine.core.jobs import drive
from engine.data.images import LoadedImage
from engine.methods import METHODS, MethodContext
from engine.methods.registry import model_notes
from engine.models.model import LoadedModel
from engine.models.registry import load_model
from tests.test_methods import random_image

SIZE = 64
# Where the exported ResNet-18's last block ends: torchvision's module "layer4", and the
# graph node "/layer4/layer4.1/relu_1/Relu", whose layer name onnx2torch writes with slashes.
TORCH_LAST_BLOCK, ONNX_LAST_BLOCK = "layer4", "layer4/layer4/1/relu_1/Relu"


def relative_difference(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    with torch.no_grad():
        for part in model.modules():
            if isinstance(part, nn.BatchNorm2d):
                part.running_mean.normal_(0, 0.1)
                part.running_var.uniform_(0.5, 1.5)
                part.bias.normal_(0, 0.1)
    return model


def export(model: nn.Module, path, size=(SIZE, SIZE), **kwargs) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(model, torch.randn(1, 3, *size), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], **kwargs)
    return str(path)


@pytest.fixture(scope="module")
def torch_resnet():
    return resnet()


@pytest.fixture(scope="module")
def static_file(tmp_path_factory, torch_resnet):
    return export(torch_resnet, tmp_path_factory.mktemp("onnx") / "resnet18.onnx")


@pytest.fixture(scope="module")
def static_model(static_file):
    return load_model(static_file)


def twin_of(torch_model: nn.Module, onnx_model: LoadedModel) -> LoadedModel:
    """The PyTorch model as ConvScope would hold it, with the ONNX model's preprocessing."""
    for parameter in torch_model.parameters():
        parameter.requires_grad_(False)
    return LoadedModel(name="torch", module=torch_model, preprocessing=onnx_model.preprocessing,
                       labels=onnx_model.labels, weights="random")


def run(method: str, model: LoadedModel, image: LoadedImage, **params):
    return drive(METHODS[method].start(MethodContext(model=model, image=image), params))


# -- the exported ResNet-18 -------------------------------------------------------------------
def test_a_static_export_gives_the_torch_models_logits_saliency_and_gradcam(static_model, torch_resnet):
    photo = random_image((90, 60))  # not square: squashed to the graph's 64x64
    twin = twin_of(torch_resnet, static_model)
    x = static_model.preprocessing.to_tensor(photo.image)
    assert tuple(x.shape) == (1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert relative_difference(static_model.module(x), torch_resnet(x)) < 1e-4

    target = {"target": 7}
    onnx_saliency, torch_saliency = run("saliency", static_model, photo, **target), run("saliency", twin, photo, **target)
    assert onnx_saliency.array.shape == (SIZE, SIZE)
    assert relative_difference(onnx_saliency.array, torch_saliency.array) < 1e-4

    onnx_cam = run("gradcam", static_model, photo, layer=ONNX_LAST_BLOCK, **target)
    torch_cam = run("gradcam", twin, photo, layer=TORCH_LAST_BLOCK, **target)
    assert onnx_cam.layer == ONNX_LAST_BLOCK and np.any(torch_cam.array)
    assert relative_difference(onnx_cam.array, torch_cam.array) < 1e-4


def test_layers_are_named_after_the_graph_nodes_and_labels_are_imagenets(static_model):
    names = [name for name, _ in static_model.module.named_children()]
    assert names[:4] == ["conv1/Conv", "relu/Relu", "maxpool/MaxPool", "layer1/layer1/0/conv1/Conv"]
    assert ONNX_LAST_BLOCK in names and "fc/Gemm" in names
    assert static_model.labels[0] == "tench" and len(static_model.labels) == 1000
    with pytest.raises(MethodInputError, match="layer4/layer4/1/relu_1/Relu"):  # the node's name as Netron shows it
        static_model.named_module("/layer4/layer4.1/relu_1/Relu")


def test_a_graph_with_a_fixed_size_takes_every_photo_at_exactly_that_size(static_model):
    preprocessing = static_model.preprocessing
    assert preprocessing.size == SIZE and preprocessing.fixed_size == (SIZE, SIZE)
    for width, height in ((451, 300), (300, 451), (64, 64), (10, 400)):
        assert preprocessing.input_size(width, height) == (SIZE, SIZE)
    assert "squashed" in preprocessing.as_dict()["resize"]
    assert any("fixes the input at 64x64" in note for note in static_model.notes)


class Mixed(nn.Module):
    """At opset 20: Pad-19, Split-18, ReduceMean-18, Resize-19, ReduceMax-20, Reshape-19..., all
    later than the versions onnx2torch knows."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")))
        a, b = torch.split(x, 4, dim=1)
        x = torch.cat([a, b * torch.sigmoid(a.mean((2, 3), keepdim=True))], 1)
        x = nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.fc(x.amax((2, 3)))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The PyTorch model, and its export at opset 20 with dynamic batch, height and width."""
    torch.manual_seed(0)
    model = Mixed().eval()
    path = export(model, tmp_path_factory.mktemp("mixed") / "mixed.onnx", size=(16, 16), opset_version=20,
                  dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
    return model, path


def test_operators_of_later_opsets_convert_as_their_earlier_versions_with_the_same_gradients(mixed):
    torch_model, path = mixed
    assert {"ReduceMean", "Resize", "Split", "Pad"} <= {node.op_type for node in onnx.load(path).graph.node}
    model = load_model(path)
    x = torch.randn(2, 3, 20, 28, requires_grad=True)
    onnx_gradient, = torch.autograd.grad(model.module(x)[:, 3].sum(), x)
    torch_gradient, = torch.autograd.grad(torch_model(x)[:, 3].sum(), x)
    assert relative_difference(onnx_gradient, torch_gradient) < 1e-5


def test_a_graph_with_dynamic_axes_takes_any_size(mixed):
    torch_model, path = mixed
    model = load_model(path)
    assert model.preprocessing.fixed_size is None and model.preprocessing.size == 224
    x = model.preprocessing.to_tensor(random_image((96, 64)).image)
    assert tuple(x.shape) == (1, 3, 224, 336)  # the aspect ratio kept
    with torch.no_grad():
        assert relative_difference(model.module(x), torch_model(x)) < 1e-5


def test_a_graph_fixed_at_a_size_that_is_not_square_is_refused_with_what_to_export(tmp_path):
    path = export(Mixed().eval(), tmp_path / "wide.onnx", size=(12, 16))
    with pytest.raises(ModelLoadError, match=r"fixes its input at 12x16.*dynamic_axes"):
        load_model(path)


def test_a_graph_that_fixes_its_batch_at_one_image_is_refused(tmp_path):
    class Flattening(nn.Module):  # x.view(1, -1): the export's reshape fixes the batch
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, stride=2), nn.Linear(4 * 7 * 7, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(1, -1))

    path = export(Flattening().eval(), tmp_path / "one-at-a-time.onnx", size=(16, 16))
    with pytest.raises(ModelLoadError, match=r"one image at a time.*dynamic batch axis"):
        load_model(path)


# -- tiny graphs ------------------------------------------------------------------------------
CLASSES = 10


def classifier_graph(path, *, before=(), after=(), opset=17, name="tiny") -> str:
    """x (1x3x16x16) -> [before] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> [after] -> y."""
    rng = np.random.default_rng(0)
    stored = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
              numpy_helper.from_array(rng.standard_normal((CLASSES, 4)).astype(np.float32), "fc")]
    chain = ["x"]

    def node(op_type, name, **attributes):
        inputs = [chain[-1]] + {"Conv": ["w"], "Gemm": ["fc"]}.get(op_type, [])
        chain.append(f"{name}_out")
        return helper.make_node(op_type, inputs, [chain[-1]], name=name, **attributes)

    nodes = [node(*spec[:2], **(spec[2] if len(spec) > 2 else {})) for spec in before]
    nodes += [node("Conv", "conv", pads=[1, 1, 1, 1]), node("Relu", "relu"), node("GlobalAveragePool", "pool"),
              node("Flatten", "flatten"), node("Gemm", "fc", transB=1)]
    nodes += [node(*spec[:2], **(spec[2] if len(spec) > 2 else {})) for spec in after]
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", CLASSES])], initializer=stored)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return str(path)


def test_operators_onnx2torch_cannot_convert_are_named_with_their_node_and_opset(tmp_path):
    path = classifier_graph(tmp_path / "hardmax.onnx", after=[("Hardmax", "winner")])
    with pytest.raises(ModelLoadError) as error:
        load_model(path)
    message = str(error.value)
    assert "Hardmax" in message and "'winner'" in message and "opset 17" in message
    assert "open the original PyTorch model" in message and "File > Open model file..." in message


def test_a_later_operator_version_that_changed_what_it_computes_asks_for_an_earlier_opset(tmp_path):
    # AveragePool-19 added dilations: with them set, its opset 11 converter would compute something else.
    path = classifier_graph(tmp_path / "dilated.onnx", opset=19,
                            before=[("AveragePool", "dilated", {"kernel_shape": [3, 3], "dilations": [2, 2]})])
    with pytest.raises(ModelLoadError, match=r"AveragePool \(onnx2torch converts it up to opset 11, opset 19; "
                                             r"node 'dilated'\).*opset_version=17"):
        load_model(path)
    undilated = classifier_graph(tmp_path / "undilated.onnx", opset=19,
                                 before=[("AveragePool", "pool3", {"kernel_shape": [3, 3]})])
    assert load_model(undilated).module(torch.zeros(1, 3, 16, 16)).shape == (1, CLASSES)


def test_a_node_whose_converter_refuses_its_attributes_is_named(tmp_path):
    path = classifier_graph(tmp_path / "dcr.onnx", before=[("DepthToSpace", "shuffle", {"blocksize": 1, "mode": "DCR"})])
    with pytest.raises(ModelLoadError, match=r"node 'shuffle' \(DepthToSpace, opset 17\) fails in onnx2torch "
                                             r"\(DepthToSpace for mode other than CRD is not implemented\)"):
        load_model(path)


def test_a_final_softmax_is_left_out_so_the_methods_see_the_class_scores(tmp_path):
    with_softmax = load_model(classifier_graph(tmp_path / "probabilities.onnx", after=[("Softmax", "softmax", {"axis": 1})]))
    without = load_model(classifier_graph(tmp_path / "scores.onnx"))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(with_softmax.module(x), without.module(x))
    assert any("Softmax is left out" in note for note in with_softmax.notes)
    assert with_softmax.labels[:2] == ["class 0", "class 1"]  # 10 classes: numbered


def test_a_graph_no_gradient_goes_through_loads_and_only_the_gradient_free_methods_run(tmp_path):
    # The image made integers, as a model that quantises its input does: Cast has no gradient.
    path = classifier_graph(tmp_path / "quantised.onnx", before=[("Cast", "to_int", {"to": TensorProto.INT32}),
                                                                 ("Cast", "to_float", {"to": TensorProto.FLOAT})])
    model = load_model(path)
    assert "'to_int' (Cast, opset 17)" in model.forward_only
    said = model_notes(model)[-1]  # what the CLI prints and the window's status shows on loading it
    assert said.startswith("no gradient can be taken through this model") and "occlusion" in said
    photo = random_image((16, 16))
    with pytest.raises(MethodInputError) as refused:
        run("saliency", model, photo)
    assert "saliency takes gradients" in str(refused.value) and "'to_int' (Cast" in str(refused.value)
    assert "activations" in str(refused.value) and "gradcam --variant scorecam" in str(refused.value)
    with pytest.raises(MethodInputError, match="gradcam takes gradients"):
        run("gradcam", model, photo, layer="conv")
    assert run("gradcam", model, photo, layer="conv", variant="scorecam").array.shape == (16, 16)
    assert run("activations", model, photo, layer="relu").layer == "relu"


def test_differentiable_graphs_are_not_forward_only(static_model, tmp_path):
    assert static_model.forward_only is None
    assert load_model(classifier_graph(tmp_path / "plain.onnx")).forward_only is None


@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage \x13" * 50, "truncated"])
def test_a_damaged_file_is_a_clear_model_load_error(tmp_path, static_file, content):
    path = tmp_path / "damaged.onnx"
    if content == "truncated":
        whole = open(static_file, "rb").read()
        content = whole[:len(whole) // 3]
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="damaged.onnx is not a (readable|valid) ONNX model"):
        load_model(str(path))


# -- the command line and the window ------------------------------------------------------------
def test_the_cli_lists_an_onnx_models_layers_by_node_name(capsys, static_file, tmp_path):
    from engine.app.cli import main

    assert main(["layers", "--model", static_file]) == 0
    out, err = capsys.readouterr()
    assert "layer1/layer1/0/conv1/Conv" in out and ONNX_LAST_BLOCK in out
    assert "note: converted from ONNX (opset" in err

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf" * 10)
    assert main(["layers", "--model", str(garbage)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: garbage.onnx is not a readable ONNX model") and len(err.strip().splitlines()) == 1


def test_the_window_opens_an_onnx_file_from_its_dialog(qtbot, window, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    path = classifier_graph(tmp_path / "tiny-graph.onnx")
    offered = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args, **kwargs: offered.append(args) or (path, ""))
    window.open_model_file_dialog()
    qtbot.waitUntil(lambda: window.model_info.name == "tiny-graph", timeout=60_000)
    assert "*.onnx" in offered[0][3]
    assert "conv" in window.layer_tree.paths()
    assert "ONNX" in window.status.text.text()
