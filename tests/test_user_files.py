"""Model and weights files a user picks: TorchScript, state dicts, pickles, and bad files.

The security tests save pickles whose loading runs a payload that leaves a marker file;
loading them without trust must refuse them before anything runs.
"""

from __future__ import annotations

import builtins
import os
import shlex
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.core.errors import ModelLoadError, UntrustedFileError
from engine.models.user_files import load_model_file, load_state_dict_file


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def same_outputs(first: nn.Module, second: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(first(x), second(x))


class RunsOnLoad:
    """Unpickling this calls ``function(*arguments)``: what a malicious file does."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def shell_payload(marker: Path) -> RunsOnLoad:
    return RunsOnLoad(os.system, f"touch {shlex.quote(str(marker))}")


def open_payload(marker: Path) -> RunsOnLoad:
    return RunsOnLoad(builtins.open, str(marker), "w")


# --- whole models ------------------------------------------------------------------------


def test_torchscript_file_loads_and_gives_the_same_outputs(tmp_path, image):
    model = tiny_model()
    path = tmp_path / "tiny.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
        torch.jit.script(model).save(str(path))
    loaded = load_model_file(path)
    assert isinstance(loaded, nn.Module)
    assert same_outputs(model, loaded, image)


def test_state_dict_given_as_a_model_asks_for_an_architecture(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(ModelLoadError, match="state dict") as caught:
        load_model_file(path)
    assert "architecture" in str(caught.value) and "--model ARCH --weights" in str(caught.value)
    assert not isinstance(caught.value, UntrustedFileError)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_module_is_refused_without_trust_and_loads_with_it(tmp_path, image, zip_format):
    model = tiny_model()
    path = tmp_path / "pickled.pt"
    torch.save(model, path, _use_new_zipfile_serialization=zip_format)

    with pytest.raises(UntrustedFileError) as caught:
        load_model_file(path)
    message = str(caught.value)
    assert message.startswith("pickled.pt is a pickled Python object; loading it can run any code inside it")
    assert "--trust" in message and "confirm in the dialog" in message
    if zip_format:  # the names a zip checkpoint would import are read from it, without running it
        assert "torch.nn.modules.container.Sequential" in message

    loaded = load_model_file(path, trust=True)
    assert same_outputs(model, loaded, image)


def test_trusted_module_wrapped_in_a_checkpoint_loads(tmp_path, image):
    model = tiny_model()
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 7, "model": model}, path)
    assert same_outputs(model, load_model_file(path, trust=True), image)


# --- security ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [shell_payload, open_payload], ids=["os.system", "open"])
@pytest.mark.parametrize("disguise", ["bare", "inside-state-dict"])
def test_malicious_pickle_does_not_run_without_trust(tmp_path, payload, disguise):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    content = evil if disguise == "bare" else {"conv.weight": torch.zeros(2, 2), "conv.bias": evil}
    path = tmp_path / "innocent.pth"
    torch.save(content, path)

    with pytest.raises(UntrustedFileError, match="innocent.pth is a pickled Python object"):
        load_model_file(path)
    assert not marker.exists()

    with pytest.raises(ModelLoadError) as caught:
        load_state_dict_file(path)
    assert not isinstance(caught.value, UntrustedFileError)  # weights files are never trusted
    assert not marker.exists()

    # The payload is live: unpickling the file without safeguards runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_refusal_names_what_the_pickle_would_call(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(shell_payload(tmp_path / "pwned"), path)
    with pytest.raises(UntrustedFileError, match=r"it calls \w+\.system"):
        load_model_file(path)
    assert not (tmp_path / "pwned").exists()


# --- state dicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {f"module.{key}": value for key, value in sd.items()},
        lambda sd: {"state_dict": {f"_orig_mod.{key}": value for key, value in sd.items()}},
    ],
    ids=["plain", "state_dict-key", "model-key", "data-parallel", "compiled-in-checkpoint"],
)
def test_state_dict_file_is_unwrapped(tmp_path, wrap):
    state_dict = tiny_model().state_dict()
    path = tmp_path / "weights.pth"
    torch.save(wrap(state_dict), path)
    loaded = load_state_dict_file(path)
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[key], state_dict[key]) for key in state_dict)


def test_torchscript_given_as_weights_says_so(tmp_path):
    path = tmp_path / "tiny.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(tiny_model()).save(str(path))
    with pytest.raises(ModelLoadError, match="TorchScript"):
        load_state_dict_file(path)


def test_pickled_module_given_as_weights_is_refused_without_running(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(tiny_model(), path)
    with pytest.raises(ModelLoadError, match="not a plain weights file") as caught:
        load_state_dict_file(path)
    assert not isinstance(caught.value, UntrustedFileError)


def test_file_without_tensors_is_not_a_state_dict(tmp_path):
    path = tmp_path / "settings.pth"
    torch.save({"learning_rate": 0.1}, path)
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_state_dict_file(path)


# --- bad files ---------------------------------------------------------------------------

LOADERS = [load_model_file, load_state_dict_file]


@pytest.mark.parametrize("load", LOADERS)
def test_missing_file(tmp_path, load):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nowhere.pt")


@pytest.mark.parametrize("load", LOADERS)
def test_empty_file(tmp_path, load):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(ModelLoadError, match="is empty"):
        load(path)


@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize(
    "content",
    [b"\xff\xd8\xff\xe0 a JPEG, not a model" * 20, b"hello world\n", None],
    ids=["jpeg", "text", "truncated-checkpoint"],
)
def test_file_that_is_not_a_checkpoint_is_unreadable_not_untrusted(tmp_path, load, content):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save(tiny_model(), path)
        content = path.read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="cannot read model.pt") as caught:
        load(path, trust=True) if load is load_model_file else load(path)
    assert not isinstance(caught.value, UntrustedFileError)


def test_torchscript_model_explains_what_it_cannot_show(tmp_path, chelsea_path):
    """Saliency needs only inputs and outputs; layer methods say why they cannot run."""
    import torch

    from engine.core.errors import MethodInputError
    from engine.core.jobs import CancelToken, drive
    from engine.app.session import Session
    from tests.conftest import TinyNet

    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet(classes=1000).eval(), torch.zeros(1, 3, 32, 32)), str(path))
    session = Session()
    session.load_model(str(path))
    session.open_image(chelsea_path)
    assert drive(session.start("saliency", {}, CancelToken())).result.array.shape == (224, 337)
    with pytest.raises(MethodInputError, match="TorchScript"):
        drive(session.start("activations", {}, CancelToken()))
