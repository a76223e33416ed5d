"""torchvision zoo: specs, weights from the cache or a file, downloads, and offline failure.

No test reaches the network: weights are random state dicts the tests save themselves,
"downloaded" through file:// URLs, and any other URL fails the test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from engine.core.errors import JobCancelled, ModelLoadError, WeightsMissingError
from engine.core.jobs import CancelToken
from engine.models import zoo
from engine.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from engine.models.registry import available_models

REQUIRED_MODELS = {
    "alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "googlenet",
    "squeezenet1_1", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
}  # fmt: skip
_real_urlopen = urllib.request.urlopen


@pytest.fixture(autouse=True)
def hub_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty torch hub cache; only file:// URLs may be opened."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def local_only(url, *args, **kwargs):
        assert str(url).startswith("file:"), f"a test tried to reach the network: {url}"
        return _real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    return tmp_path / "torch" / "hub"


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A random-init resnet18 state dict, saved once for the module."""
    state_dict = get_model("resnet18", weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18-random.pth"
    torch.save(state_dict, path)
    return path, state_dict


@pytest.fixture(scope="module")
def squeezenet_state_dict() -> dict[str, torch.Tensor]:
    return get_model("squeezenet1_1", weights=None).state_dict()


def save_with_hash_name(state_dict: dict, folder: Path, stem: str) -> Path:
    """Save under torch.hub's "<stem>-<sha256 prefix>.pth" naming."""
    folder.mkdir(parents=True, exist_ok=True)
    unnamed = folder / f"{stem}.tmp"
    torch.save(state_dict, unnamed)
    digest = hashlib.sha256(unnamed.read_bytes()).hexdigest()
    return unnamed.rename(folder / f"{stem}-{digest[:8]}.pth")


def assert_same_parameters(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state_dict.keys()
    for key, tensor in state_dict.items():
        assert torch.equal(loaded[key], tensor), key


# --- specs ------------------------------------------------------------------------------


def test_specs_cover_the_required_models_with_imagenet_preprocessing():
    specs = {spec.name: spec for spec in zoo.ZOO_SPECS}
    assert REQUIRED_MODELS <= specs.keys()
    assert set(specs) <= {spec.name for spec in available_models()}
    for spec in specs.values():
        assert spec.source == "torchvision"
        assert spec.description
        assert spec.preprocessing.size == 224
        assert spec.preprocessing.mean == pytest.approx(IMAGENET_MEAN)
        assert spec.preprocessing.std == pytest.approx(IMAGENET_STD)
        assert [depth for depth, _ in spec.layer_presets] == ["early", "middle", "late"]


@pytest.mark.parametrize("spec", zoo.ZOO_SPECS, ids=lambda spec: spec.name)
def test_every_architecture_builds_and_has_its_presets_in_depth_order(spec):
    model = zoo.build_architecture(spec.name)
    module_paths = [path for path, _ in model.named_modules()]
    presets = [path for _, path in spec.layer_presets]
    assert set(presets) <= set(module_paths), set(presets) - set(module_paths)
    positions = [module_paths.index(path) for path in presets]
    assert positions == sorted(positions)
    # In-place activations would overwrite outputs that hooks have captured.
    assert not any(getattr(module, "inplace", False) for module in model.modules())


def test_unknown_name_is_refused():
    with pytest.raises(ModelLoadError, match="resnet18"):
        zoo.build_zoo_model("resnet19")


# --- weights from the cache or a file ----------------------------------------------------


def test_cache_path_is_where_torch_hub_caches_it(hub_dir):
    assert zoo.cached_weights_path("resnet18") == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    expected = os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-f37072fd.pth")
    assert zoo.cached_weights_path("resnet18") == Path(expected)


def test_cached_weights_are_loaded_without_downloading(hub_dir, resnet18_file):
    path, state_dict = resnet18_file
    cached = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    shutil.copy(path, cached)

    model, description = zoo.build_zoo_model("resnet18")

    assert_same_parameters(model, state_dict)
    assert "ResNet18_Weights" in description and cached.name in description


def test_weights_path_is_loaded(resnet18_file):
    path, state_dict = resnet18_file
    model, description = zoo.build_zoo_model("resnet18", weights_path=path)
    assert_same_parameters(model, state_dict)
    assert description == str(path.resolve())


def test_weights_wrapped_in_a_checkpoint_with_a_module_prefix_load(tmp_path, resnet18_file):
    _, state_dict = resnet18_file
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{key}": value for key, value in state_dict.items()}}, checkpoint)
    model, _ = zoo.build_zoo_model("resnet18", weights_path=checkpoint)
    assert_same_parameters(model, state_dict)


def test_weights_of_another_architecture_name_the_keys(tmp_path, squeezenet_state_dict):
    path = tmp_path / "squeezenet.pth"
    torch.save(squeezenet_state_dict, path)
    with pytest.raises(ModelLoadError) as caught:
        zoo.build_zoo_model("resnet18", weights_path=path)
    message = str(caught.value)
    assert "squeezenet.pth" in message and "resnet18" in message
    assert "missing conv1.weight" in message
    assert "unexpected features.0.weight" in message


def test_weights_with_the_wrong_shapes_name_them(tmp_path, resnet18_file):
    _, state_dict = resnet18_file
    path = tmp_path / "ten-classes.pth"
    torch.save({**state_dict, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(ModelLoadError, match=r"wrong shape: fc\.weight \(10, 512\) instead of \(1000, 512\)"):
        zoo.build_zoo_model("resnet18", weights_path=path)


def test_googlenet_weights_with_auxiliary_classifiers_load_like_torchvision(tmp_path):
    # torchvision's pretrained GoogLeNet file holds the auxiliary classifiers too.
    state_dict = get_model("googlenet", weights=None, aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "googlenet.pth"
    torch.save(state_dict, path)
    model, _ = zoo.build_zoo_model("googlenet", weights_path=path)
    assert model.transform_input and model.aux1 is None
    assert torch.equal(model.fc.weight, state_dict["fc.weight"])


# --- downloading -------------------------------------------------------------------------


def test_download_reports_progress_and_lands_in_the_cache(tmp_path, hub_dir, monkeypatch, squeezenet_state_dict):
    served = save_with_hash_name(squeezenet_state_dict, tmp_path / "server", "squeezenet1_1")
    monkeypatch.setattr(zoo.default_weights("squeezenet1_1").value, "url", served.as_uri())
    monkeypatch.setattr(zoo, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    monkeypatch.setattr(zoo, "PROGRESS_INTERVAL_S", 0.0)
    reports = []

    model, _ = zoo.build_zoo_model("squeezenet1_1", progress=lambda *report: reports.append(report))

    fractions = [fraction for fraction, _ in reports]
    assert len(fractions) > 3
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    size_mb = served.stat().st_size / 2**20
    assert reports[-1][1] == f"{served.name}: {size_mb:.1f} of {size_mb:.1f} MB"
    cached = hub_dir / "checkpoints" / served.name
    assert cached.read_bytes() == served.read_bytes()
    assert os.listdir(cached.parent) == [served.name]
    assert_same_parameters(model, squeezenet_state_dict)


def test_download_with_the_wrong_hash_leaves_nothing_behind(tmp_path, squeezenet_state_dict):
    served = save_with_hash_name(squeezenet_state_dict, tmp_path / "server", "squeezenet1_1")
    misnamed = served.rename(served.with_name("squeezenet1_1-deadbeef.pth"))
    destination = tmp_path / "cache" / misnamed.name
    with pytest.raises(ModelLoadError, match="deadbeef"):
        zoo.download_weights(misnamed.as_uri(), destination)
    assert os.listdir(destination.parent) == []


def test_cancelled_download_leaves_nothing_behind(tmp_path, squeezenet_state_dict):
    served = save_with_hash_name(squeezenet_state_dict, tmp_path / "server", "squeezenet1_1")
    destination = tmp_path / "cache" / served.name
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(JobCancelled):
        zoo.download_weights(served.as_uri(), destination, cancel=cancel)
    assert os.listdir(destination.parent) == []


def test_download_cancelled_partway_leaves_nothing_behind(tmp_path, monkeypatch, squeezenet_state_dict):
    served = save_with_hash_name(squeezenet_state_dict, tmp_path / "server", "squeezenet1_1")
    destination = tmp_path / "cache" / served.name
    monkeypatch.setattr(zoo, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    monkeypatch.setattr(zoo, "PROGRESS_INTERVAL_S", 0.0)
    cancel = CancelToken()

    def cancel_after_some_data(fraction, _message):
        if fraction > 0.2:
            cancel.cancel()

    with pytest.raises(JobCancelled):
        zoo.download_weights(served.as_uri(), destination, progress=cancel_after_some_data, cancel=cancel)
    assert os.listdir(destination.parent) == []


@pytest.mark.parametrize(
    "failure",
    [
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        TimeoutError("timed out"),
        ConnectionResetError(),
    ],
    ids=["no-network", "timeout", "reset"],
)
def test_offline_says_where_the_file_goes_and_how_else_to_get_it(hub_dir, monkeypatch, failure):
    calls = []

    def fail(url, *args, timeout=None, **kwargs):
        calls.append(timeout)
        raise failure

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    with pytest.raises(WeightsMissingError) as caught:
        zoo.build_zoo_model("resnet18")

    error = caught.value
    expected_path = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    message = str(error)
    for part in ("resnet18-f37072fd.pth", str(expected_path), zoo.default_weights("resnet18").url,
                 "Open weights file", "--weights"):
        assert part in message
    assert (error.filename, error.expected_path) == ("resnet18-f37072fd.pth", str(expected_path))
    assert error.url == zoo.default_weights("resnet18").url
    assert calls == [zoo.DOWNLOAD_TIMEOUT_S]
    assert not expected_path.exists() and os.listdir(expected_path.parent) == []


def test_unreadable_cached_file_says_to_delete_it(hub_dir):
    cached = hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(ModelLoadError, match=f"Delete {cached}"):
        zoo.build_zoo_model("resnet18")


def test_download_cut_short_is_a_network_failure(tmp_path, monkeypatch):
    served = tmp_path / "server" / "weights.pth"
    served.parent.mkdir()
    served.write_bytes(b"x" * 1000)
    real_urlopen = urllib.request.urlopen

    def claims_more_than_it_sends(url, *args, **kwargs):
        response = real_urlopen(url, *args, **kwargs)
        response.headers.replace_header("Content-Length", "2000")
        return response

    monkeypatch.setattr(urllib.request, "urlopen", claims_more_than_it_sends)
    destination = tmp_path / "cache" / "weights.pth"
    with pytest.raises(ConnectionError, match="1000 of 2000"):
        zoo.download_weights(served.as_uri(), destination)
    assert os.listdir(destination.parent) == []
