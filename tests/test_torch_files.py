"""Every file ConvScope unpickles goes through one safe loader: each kind of bad file, through
each way in (the bundled model's and a zoo architecture's --weights, a model file, a style
model, a training checkpoint), is one line naming the file, and never PyTorch's advice to
load it with weights_only=False."""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.app.cli import main
from engine.core.errors import ConvScopeError, ModelLoadError, UntrustedFileError
from engine.core.torch_files import read_state_dict, read_torch_file
from engine.data.samples import sample_path
from engine.models.registry import load_model
from tests.test_user_files import RunsOnLoad

BRICK = str(sample_path("brick"))
UNSAFE_WORDS = ("weights_only", "weights only", "will likely succeed", "arbitrary code execution")


def good_weights(path: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1)}, path)
    return path


def make_bad_file(kind: str, path: Path, monkeypatch) -> Path:
    """``path`` turned into one kind of bad file; returns the path to give."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        good_weights(path)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "pickled":
        torch.save({"weights": torch.zeros(2), "optimiser": nn.Linear(2, 2)}, path)
    elif kind == "missing":
        pass
    elif kind == "folder":
        path.mkdir()
    elif kind == "unreadable":
        good_weights(path)
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything: make the file system refuse, as it would anyone else
            original = pathlib.Path.open

            def refuse(self, *args, **kwargs):
                if self == path:
                    raise PermissionError(errno.EACCES, "Permission denied", str(self))
                return original(self, *args, **kwargs)

            monkeypatch.setattr(pathlib.Path, "open", refuse)
    return path


# What each kind of bad file is called in the message (the model file's pickle asks for trust instead).
SAYS = {
    "empty": "is empty (0 bytes",
    "random": "it is not a pytorch file at all",
    "truncated": "damaged or incomplete pytorch file",
    "pickled": "not a plain weights file",
    "missing": "does not exist",
    "folder": "is a folder",
    "unreadable": "permission denied",
}
KINDS = list(SAYS)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_line(code, out, err, name, says):
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0].lower()
    assert line.startswith("error: ") and name.lower() in line and says in line, line
    assert not any(word in line for word in UNSAFE_WORDS), line


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model", ["efficientnet_lite0", "resnet18"])
def test_bad_weights_files_for_a_named_architecture(capsys, tmp_path, monkeypatch, kind, model):
    path = make_bad_file(kind, tmp_path / "weights.pth", monkeypatch)
    code, out, err = cli(capsys, "layers", "--model", model, "--weights", path)
    assert_one_clear_line(code, out, err, "weights.pth", SAYS[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_model_files(capsys, tmp_path, monkeypatch, kind):
    path = make_bad_file(kind, tmp_path / "model.pt", monkeypatch)
    says = "pickled python object; loading it can run any code" if kind == "pickled" else SAYS[kind]
    code, out, err = cli(capsys, "layers", "--model", path)
    assert_one_clear_line(code, out, err, "model.pt", says)
    if kind == "pickled":
        assert "--trust" in err and "torch.nn.modules.linear.Linear" in err


@pytest.mark.parametrize("kind", KINDS)
def test_bad_style_model_files(capsys, tmp_path, monkeypatch, kind, chelsea_path):
    path = make_bad_file(kind, tmp_path / "style.pt", monkeypatch)
    says = {"pickled": "holds python objects beyond tensors", "missing": "no style model",
            "folder": "is a folder, not a style model file"}.get(kind, SAYS[kind])
    code, out, err = cli(capsys, "run", "fast-style", "--image", chelsea_path, "--style-model", path, "--size", "32")
    assert_one_clear_line(code, out, err, "style.pt", says)


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "pickled", "unreadable"])
def test_bad_training_checkpoints(capsys, tmp_path, monkeypatch, kind, chelsea_path):
    """A damaged <save>.ckpt stops fast-style-train before it trains, and says how to start over."""
    make_bad_file(kind, tmp_path / "bricks.pt.ckpt", monkeypatch)
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    says = "holds python objects beyond tensors" if kind == "pickled" else SAYS[kind]
    code, out, err = cli(capsys, "run", "fast-style-train", "--dataset", "samples", "--style", BRICK, "--steps", "1",
                         "--batch", "1", "--size", "32", "--width", "8", "--blocks", "1",
                         "--save", tmp_path / "bricks.pt")
    assert_one_clear_line(code, out, err, "bricks.pt.ckpt", says)
    assert "--restart" in err
    assert not (tmp_path / "bricks.pt").exists()


def test_a_bad_file_never_ends_in_a_traceback_in_the_engine(tmp_path, monkeypatch):
    """The window opens files through load_model: each failure is a ConvScopeError it can show."""
    for kind in KINDS:
        path = make_bad_file(kind, tmp_path / f"{kind}.pt", monkeypatch)
        with pytest.raises(ConvScopeError) as caught:
            load_model(str(path))
        assert not any(word in str(caught.value).lower() for word in UNSAFE_WORDS)
        with pytest.raises(ModelLoadError):
            load_model("efficientnet_lite0", weights_path=path)


def test_the_bundled_model_takes_weights_in_either_layout_and_wrapped(tmp_path, bundled):
    """--weights for the bundled model reads what the zoo's does: a checkpoint wrapping a state dict, prefixes."""
    state = bundled.module.state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    loaded = load_model("efficientnet_lite0", weights_path=path)
    assert all(torch.equal(value, state[key]) for key, value in loaded.module.state_dict().items())
    assert loaded.weights == str(path)


def test_weights_for_another_network_say_they_do_not_fit(capsys, tmp_path):
    path = good_weights(tmp_path / "other.pth")
    code, out, err = cli(capsys, "layers", "--weights", path)
    assert_one_clear_line(code, out, err, "other.pth", "do not fit efficientnet_lite0")


@pytest.mark.parametrize("disguise", ["bare", "inside-state-dict"])
def test_a_malicious_pickle_runs_through_no_entry_point(capsys, tmp_path, chelsea_path, monkeypatch, disguise):
    marker = tmp_path / "pwned"
    evil = RunsOnLoad(os.system, f"touch {marker}")
    content = evil if disguise == "bare" else {"conv.weight": torch.zeros(2, 2), "conv.bias": evil}
    path = tmp_path / "innocent.pt"
    torch.save(content, path)
    (tmp_path / "bricks.pt.ckpt").write_bytes(path.read_bytes())
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    for args in (["layers", "--weights", path], ["layers", "--model", "resnet18", "--weights", path],
                 ["layers", "--model", path], ["run", "fast-style", "--image", chelsea_path, "--style-model", path],
                 ["run", "fast-style-train", "--style", BRICK, "--steps", "1", "--size", "32", "--width", "8",
                  "--blocks", "1", "--save", tmp_path / "bricks.pt"]):
        code, _out, err = cli(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
        assert not marker.exists(), args
    with pytest.raises(UntrustedFileError):
        read_torch_file(path, "model file")
    assert not marker.exists()


def test_the_loader_strips_pytorchs_advice_from_every_message(tmp_path, monkeypatch):
    """Even an error the loader does not know comes without the advice to unpickle in full."""
    import engine.core.torch_files as torch_files

    def fails(*args, **kwargs):
        raise RuntimeError("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
                           "will likely succeed, but it can result in arbitrary code execution.")

    path = good_weights(tmp_path / "w.pt")
    monkeypatch.setattr(torch_files.torch, "load", fails)
    with pytest.raises(ModelLoadError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert message == ("cannot read w.pt: it is a damaged or incomplete PyTorch file, perhaps from an interrupted "
                       'download or copy; choose another with "File > Open weights file..." or --weights FILE')
    assert not any(word in message.lower() for word in UNSAFE_WORDS)
