"""A network defined in the user's own .py file, with a weights file: opened only once
trusted, built as the file says, its weights checked, and Python's import state left as
it was.

The file written here defines the same layers as ``tests.conftest.TinyNet`` (partly
through a helper module beside it), so the network it builds, given TinyNet's weights,
must give TinyNet's logits exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from engine.app.cli import main
from engine.core.errors import ModelLoadError, UntrustedFileError
from engine.data.images import load_image
from engine.models.preprocessing import Preprocessing
from engine.models.python_files import build_python_model
from engine.models.registry import load_model
from tests.conftest import TinyNet

HELPER = "tiny_blocks"  # the helper module beside the model file
HELPER_SOURCE = """\
from torch import nn

WIDTH = 16


def conv_relu(channels_in, channels_out):
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU()]
"""
NETWORK_SOURCE = f"""\
import pathlib

from torch import nn

import {HELPER}

pathlib.Path(__file__).with_name("ran").touch()  # a mark that the file was run


class TinyNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.features = nn.Sequential(*{HELPER}.conv_relu(3, 8), nn.MaxPool2d(2), *{HELPER}.conv_relu(8, {HELPER}.WIDTH))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear({HELPER}.WIDTH, classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))
"""
# How the network is named: each way the convention allows, ending the file.
ENDINGS = {
    "build_model": "\n\nclass Head(nn.Module):  # a second class: build_model says which is the network\n"
                   "    def forward(self, x):\n        return x\n\n\ndef build_model():\n    return TinyNet()\n",
    "model variable": "\n\nmodel = TinyNet()\n",
    "the one class": "",
}


def write_model(folder: Path, ending: str = "", source: str = NETWORK_SOURCE, helper: str = HELPER_SOURCE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{HELPER}.py").write_text(helper)
    path = folder / "net.py"
    path.write_text(source + ending)
    return path


@pytest.fixture
def reference() -> TinyNet:
    torch.manual_seed(3)
    return TinyNet().eval()


@pytest.fixture
def weights(tmp_path, reference) -> Path:
    path = tmp_path / "net-weights.pt"
    torch.save(reference.state_dict(), path)
    return path


def logits(module, x):
    with torch.no_grad():
        return module.eval()(x)


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_the_file_builds_the_network_and_the_weights_go_into_it(tmp_path, reference, weights, ending):
    path = write_model(tmp_path / "model", ending)
    loaded = load_model(str(path), weights_path=weights, trust=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(logits(loaded.module, x), logits(reference, x))
    assert loaded.name == "net" and len(loaded.labels) == 5
    # The sidecar's weights name both files.
    assert str(path.resolve()) in loaded.weights and str(weights.resolve()) in loaded.weights


def test_without_a_weights_file_the_network_keeps_its_own(tmp_path):
    path = write_model(tmp_path, "\n\ndef build_model():\n    torch.manual_seed(11)\n    return TinyNet()\n",
                       source="import torch\n" + NETWORK_SOURCE)
    loaded = load_model(str(path), trust=True)
    torch.manual_seed(11)
    own = TinyNet()
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(logits(loaded.module, x), logits(own, x))
    assert "with the weights its own code gives it" in loaded.weights and str(path.resolve()) in loaded.weights


def test_refused_without_trust_and_nothing_runs(tmp_path, weights):
    path = write_model(tmp_path / "model", ENDINGS["build_model"])
    with pytest.raises(UntrustedFileError) as caught:
        load_model(str(path), weights_path=weights)
    message = str(caught.value)
    assert message.startswith("net.py is Python code: opening it as a model runs it")
    assert "confirm in the dialog" in message and "--trust" in message
    assert not (path.parent / "ran").exists()
    load_model(str(path), weights_path=weights, trust=True)
    assert (path.parent / "ran").exists()  # the mark works: trusted, the file ran


def test_the_command_line_opens_it_with_trust_and_names_both_files(capsys, tmp_path, reference, weights, chelsea_path):
    path = write_model(tmp_path / "model", ENDINGS["build_model"])
    code = main(["classify", "--model", str(path), "--weights", str(weights), "--image", chelsea_path])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: net.py is Python code") and "--trust" in err

    code = main(["classify", "--model", str(path), "--weights", str(weights), "--trust", "--image", chelsea_path])
    top5 = json.loads(capsys.readouterr().out)["top5"]
    x = Preprocessing().to_tensor(load_image(chelsea_path).image)
    probabilities, indices = logits(reference, x).softmax(1)[0].topk(5)
    assert code == 0
    assert [entry["index"] for entry in top5] == indices.tolist()
    assert [entry["prob"] for entry in top5] == pytest.approx(probabilities.tolist(), abs=1e-6)  # printed rounded

    out = tmp_path / "activations.png"
    code = main(["run", "activations", "--model", str(path), "--weights", str(weights), "--trust",
                 "--image", chelsea_path, "--layer", "features.3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == "net"
    assert str(path.resolve()) in sidecar["weights"] and str(weights.resolve()) in sidecar["weights"]


# --- files that do not define a usable network --------------------------------------------

# The first line of an ending, counted in the whole file (an ending starts with a blank line).
FIRST = len(NETWORK_SOURCE.splitlines()) + 2
CLASSIFIER_LINE = next(number for number, line in enumerate(NETWORK_SOURCE.splitlines(), 1) if "self.classifier =" in line)
MALFORMED = {
    # name: (what the file ends with, what the message says)
    "syntax error": ("\ndef build_model(:\n    return TinyNet()\n",
                     f"net.py line {FIRST} is not valid Python: invalid syntax; fix it"),
    "raises while importing": ("\nraise RuntimeError('no GPU here')\n",
                               f"importing net.py failed: net.py line {FIRST}: RuntimeError: no GPU here; fix it"),
    "exits while importing": ("\nimport sys\nsys.exit(1)\n",
                              f"importing net.py failed: net.py line {FIRST + 1}: SystemExit: 1"),
    "raises while building": ("\ndef build_model():\n    raise ValueError('needs a GPU')\n",
                              f"build_model() in net.py failed: net.py line {FIRST + 1} (in build_model): "
                              f"ValueError: needs a GPU"),
    "raises in the network's class": ("\ndef build_model():\n    return TinyNet(classes=-1)\n",
                                      f"build_model() in net.py failed: net.py line {CLASSIFIER_LINE} (in __init__): "
                                      f"RuntimeError: Trying to create tensor with negative dimension -1"),
    "raises in a helper": ("\ndef build_model():\n    return {helper}.conv_relu(1, 'eight')\n",
                           "build_model() in net.py failed: tiny_blocks.py line 7 (in conv_relu): TypeError: "),
    "returns a non-module": ("\ndef build_model():\n    return {{'net': TinyNet()}}\n",
                             "build_model() in net.py returned a dict, not a torch.nn.Module; define a function "
                             "build_model() that returns the torch.nn.Module"),
    "defines two candidates": ("\nclass Other(nn.Module):\n    pass\n",
                               "net.py defines 2 nn.Module classes that need no arguments (TinyNet, Other), so which "
                               "one is the network is not clear: add `def build_model(): return Other()` to it"),
}


@pytest.mark.parametrize("ending, says", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_file_says_what_and_where(tmp_path, ending, says):
    path = write_model(tmp_path, ending.format(helper=HELPER))
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(path), trust=True)
    message = str(caught.value)
    assert says in message, message
    assert not isinstance(caught.value, UntrustedFileError)
    assert "Traceback" not in message and "\n" not in message


def test_a_file_that_defines_nothing_usable_says_what_it_must_define(tmp_path):
    path = tmp_path / "layers.py"
    path.write_text("from torch import nn\n\nmodel = 'resnet'\n\n\nclass Head(nn.Module):\n"
                    "    def __init__(self, channels, classes=10):\n        super().__init__()\n")
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(path), trust=True)
    assert str(caught.value) == (
        "layers.py defines no network ConvScope can build (Head needs channels) (its `model` is a str): define a "
        "function build_model() that returns the torch.nn.Module, or a module-level `model = ...` holding one, or a "
        "single nn.Module class whose constructor needs no arguments")


def test_a_syntax_error_is_found_before_trust_without_running_anything(tmp_path):
    path = write_model(tmp_path, "\ndef build_model(:\n")
    with pytest.raises(ModelLoadError, match=f"net.py line {FIRST} is not valid Python") as caught:
        load_model(str(path))
    assert not isinstance(caught.value, UntrustedFileError) and not (tmp_path / "ran").exists()


def test_a_syntax_error_in_a_helper_names_the_helper(tmp_path):
    path = write_model(tmp_path, ENDINGS["build_model"], helper=HELPER_SOURCE + "\ndef broken(:\n")
    with pytest.raises(ModelLoadError, match=r"tiny_blocks.py line 9 is not valid Python: invalid syntax; fix it"):
        load_model(str(path), trust=True)


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_a_missing_model_file_or_folder_is_one_line(tmp_path, where):
    path = tmp_path / "net.py"
    if where == "folder":
        path.mkdir()
    says = "is a folder, not a Python file" if where == "folder" else "does not exist"
    with pytest.raises(ModelLoadError, match=says) as caught:
        load_model(str(path))
    assert 'File > Open model file..." or --model FILE' in str(caught.value)


# --- weights ---------------------------------------------------------------------------------


def test_weights_that_do_not_fit_are_explained_and_change_nothing(tmp_path):
    path = write_model(tmp_path / "model", ENDINGS["build_model"])
    other = TinyNet(classes=3).state_dict()
    del other["features.0.bias"]
    other["extra.weight"] = torch.zeros(1)
    weights = tmp_path / "other.pt"
    torch.save(other, weights)
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(path), weights_path=weights, trust=True)
    assert str(caught.value) == ("the weights in other.pt do not fit net.py: missing features.0.bias; unexpected "
                                 "extra.weight; wrong shape: classifier.weight (3, 16) instead of (5, 16), "
                                 "classifier.bias (3,) instead of (5,)")


def test_a_missing_weights_file_is_said_before_the_file_runs(tmp_path):
    path = write_model(tmp_path / "model", ENDINGS["build_model"])
    with pytest.raises(ModelLoadError, match="nowhere.pt does not exist") as caught:
        load_model(str(path), weights_path=tmp_path / "nowhere.pt")
    assert not isinstance(caught.value, UntrustedFileError) and not (path.parent / "ran").exists()


def test_a_pickle_as_weights_is_refused_unrun(tmp_path):
    path = write_model(tmp_path / "model", ENDINGS["build_model"])
    weights = tmp_path / "pickled.pt"
    torch.save(TinyNet(), weights)
    with pytest.raises(ModelLoadError, match="not a plain weights file") as caught:
        load_model(str(path), weights_path=weights, trust=True)
    assert not isinstance(caught.value, UntrustedFileError)


# --- Python's import state ---------------------------------------------------------------------


@pytest.mark.parametrize("ending", [ENDINGS["build_model"], "\nraise ValueError('broken')\n"], ids=["built", "failed"])
def test_sys_path_and_sys_modules_are_restored(tmp_path, ending):
    path = write_model(tmp_path, ending)
    path_before, modules_before = list(sys.path), set(sys.modules)
    try:
        build_python_model(path)
    except ModelLoadError:
        pass
    assert sys.path == path_before
    assert not any(name == HELPER or name.startswith("_convscope_user_model") for name in sys.modules)
    assert set(sys.modules) - modules_before == set()
    assert not (tmp_path / "__pycache__").exists()  # nothing written beside the user's files
    assert (tmp_path / "ran").exists()


def test_each_file_imports_its_own_helper(tmp_path):
    """Two models whose helpers share a name: the second does not get the first's helper."""
    first = write_model(tmp_path / "first", ENDINGS["build_model"])
    second = write_model(tmp_path / "second", ENDINGS["build_model"], helper=HELPER_SOURCE.replace("16", "4"))
    assert build_python_model(first).classifier.in_features == 16
    assert build_python_model(second).classifier.in_features == 4


# --- the window ----------------------------------------------------------------------------------

WINDOW_TIMEOUT = 60_000


def test_the_window_runs_a_python_file_only_once_trusted_then_takes_its_weights(qtbot, window, tmp_path, monkeypatch,
                                                                               reference):
    from PySide6.QtWidgets import QFileDialog, QMessageBox

    path = write_model(tmp_path / "model", ENDINGS["build_model"])
    weights = path.with_suffix(".pt")  # named like the script: the file chooser starts on it
    torch.save(reference.state_dict(), weights)
    questions, answers, chooser_starts = [], [], []

    def question(_parent, title, text, *_buttons):
        questions.append((title, text))
        return answers.pop(0)

    def choose(_parent, _caption, start, *_filters):
        chooser_starts.append(start)
        return str(chosen), ""

    monkeypatch.setattr(QMessageBox, "question", question)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", choose)

    # Declined: nothing runs, the model is kept.
    answers[:] = [QMessageBox.StandardButton.No]
    with qtbot.waitSignal(window.worker.job_failed, timeout=WINDOW_TIMEOUT):
        window.load_model(str(path))
    assert questions[0][0] == "Run a Python model file?" and "net.py is Python code" in questions[0][1]
    assert window.model_info.name == "efficientnet_lite0" and not (path.parent / "ran").exists()

    # Trusted, then the weights question cancelled: still nothing.
    answers[:] = [QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Cancel]
    with qtbot.waitSignal(window.worker.job_failed, timeout=WINDOW_TIMEOUT):
        window.load_model(str(path))
    assert not answers and window.status.model_label.text() == "model: efficientnet_lite0"  # no load started
    assert window.model_info.name == "efficientnet_lite0" and not (path.parent / "ran").exists()

    # Trusted, with its weights: the network is the file's, with the reference's logits.
    answers[:] = [QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Yes]
    chosen = weights
    with qtbot.waitSignal(window.worker.job_failed, timeout=WINDOW_TIMEOUT):
        window.load_model(str(path))
    qtbot.waitUntil(lambda: window.model_info.name == "net", timeout=WINDOW_TIMEOUT)
    assert chooser_starts == [str(weights)]
    assert str(path.resolve()) in window.model_info.weights and str(weights.resolve()) in window.model_info.weights
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert torch.equal(logits(window.session.model.module, x), logits(reference, x))

    # File > Open weights file... builds the same file's network around other weights, without asking again.
    torch.manual_seed(8)
    retrained = TinyNet().eval()
    chosen = tmp_path / "retrained.pt"
    torch.save(retrained.state_dict(), chosen)
    window.open_weights_file_dialog()
    qtbot.waitUntil(lambda: str(chosen.resolve()) in window.model_info.weights, timeout=WINDOW_TIMEOUT)
    assert len(questions) == 5 and window.model_info.name == "net"
    assert torch.equal(logits(window.session.model.module, x), logits(retrained, x))
