"""timm's classifiers (``timm:NAME``): names, weights files, the hub's cache, offline messages,
preprocessing and labels from the pretrained config.

No weights can be downloaded here: every weights file is saved by the test from a randomly
initialised model, and the hub's cache is a folder the test lays out as the hub does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.core.errors import ModelLoadError, WeightsMissingError
from engine.core.jobs import CancelToken, JobCancelled
from engine.models import timm_models
from engine.models.registry import load_model
from engine.models.timm_models import build_timm_architecture

RESNET = "resnet18.a1_in1k"


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    model = build_timm_architecture(RESNET)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a hub that cannot be reached (a closed local port)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "1")
    return cache


def place_in_hub_cache(cache: Path, repo: str, filename: str, state_dict: dict) -> Path:
    """Lay a weights file out as ``hf_hub_download`` leaves it: a snapshot named by commit, and
    refs/main naming that commit."""
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    path = snapshot / filename
    save_file({key: value.contiguous() for key, value in state_dict.items()}, str(path))
    return path


def test_a_weights_file_opens_as_the_same_network(resnet_weights):
    model, path = resnet_weights
    loaded = load_model(f"timm:{RESNET}", weights_path=path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model.eval()(x), atol=1e-5)
    assert loaded.name == f"timm:{RESNET}" and loaded.weights == str(path.resolve())


def test_preprocessing_and_labels_come_from_the_pretrained_config():
    vit = timm_models.TimmModel  # the config is read without weights: build the architecture only
    config = timm_models._pretrained_config("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    module = build_timm_architecture("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    preprocessing = timm_models.preprocessing_of(module, config)
    assert (preprocessing.size, preprocessing.mean, preprocessing.std) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert preprocessing.interpolation == "bicubic" and preprocessing.crop_pct == config["crop_pct"]
    # ViT asked for dynamic_img_size, so a photo keeps its aspect ratio (a 14x20 token grid).
    assert preprocessing.fixed_size is None and preprocessing.input_size(640, 448) == (320, 224)
    labels = timm_models.labels_of(module, config)
    assert len(labels) == 1000 and labels[281] == "tabby" and vit is not None


def test_a_model_trained_on_imagenet_21k_gets_its_class_names():
    config = timm_models._pretrained_config("vit_tiny_patch16_224.augreg_in21k")
    module = build_timm_architecture("vit_tiny_patch16_224.augreg_in21k")
    labels = timm_models.labels_of(module, config)
    assert len(labels) == config["num_classes"] == 21843
    assert not labels[0].startswith("class ") and len(set(labels)) > 20000


def test_a_model_that_takes_one_size_only_gets_it_exactly():
    # torch's vision transformer without dynamic_img_size: timm's TNT, say; simplest is a ViT built strict.
    import timm

    strict = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=False)
    preprocessing = timm_models.preprocessing_of(strict, timm_models._pretrained_config("vit_tiny_patch16_224"))
    assert preprocessing.fixed_size == (224, 224)
    assert preprocessing.input_size(640, 448) == (224, 224)


def test_weights_fine_tuned_on_other_classes_keep_their_classes(tmp_path):
    model = build_timm_architecture(RESNET, num_classes=7)
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(f"timm:{RESNET}", weights_path=path)
    assert loaded.labels == [f"class {i}" for i in range(7)]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model.eval()(x), atol=1e-5)


def test_a_bare_architecture_name_takes_timms_default_weights(resnet_weights):
    _, path = resnet_weights
    loaded = load_model("timm:resnet18", weights_path=path)
    assert loaded.name == f"timm:{timm_models._pretrained_config('resnet18')['architecture']}." \
                          f"{timm_models._pretrained_config('resnet18')['tag']}"


@pytest.mark.parametrize("name, words", [
    ("timm:resnt18", "did you mean resnet18"),
    ("timm:resnet18.no_such_tag", "its weights: a1_in1k"),
    ("timm:", "give a timm model name"),
])
def test_unknown_names_are_refused_with_what_exists(name, words):
    with pytest.raises(ModelLoadError, match=words):
        load_model(name)


def test_weights_that_do_not_fit_name_the_model(tmp_path):
    other = build_timm_architecture("resnet34")
    path = tmp_path / "resnet34.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ModelLoadError, match="do not fit timm's resnet18"):
        load_model(f"timm:{RESNET}", weights_path=path)


# --- the hub's cache and downloads -----------------------------------------------------------


def test_weights_in_the_hub_cache_load_offline(hub_cache):
    model = build_timm_architecture(RESNET)
    place_in_hub_cache(hub_cache, "timm/resnet18.a1_in1k", "model.safetensors", model.state_dict())
    loaded = load_model(f"timm:{RESNET}")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model.eval()(x), atol=1e-5)
    assert "timm/resnet18.a1_in1k" in loaded.weights
    entry = next(entry for entry in timm_models.timm_catalogue() if entry.name == RESNET)
    assert entry.is_cached()


def test_offline_without_the_weights_says_what_is_missing_and_how_to_get_it(hub_cache):
    with pytest.raises(WeightsMissingError) as caught:
        load_model(f"timm:{RESNET}")
    message = str(caught.value)
    for part in ("resnet18.a1_in1k", "model.safetensors", "File > Open weights file", "--weights",
                 str(hub_cache / "models--timm--resnet18.a1_in1k")):
        assert part in message
    assert caught.value.filename == "model.safetensors"
    assert not list(hub_cache.rglob("*.safetensors"))  # nothing half-written left behind


def test_download_progress_is_reported_and_a_cancel_stops_it():
    reports = []
    bar = timm_models._progress_bar(lambda *report: reports.append(report), None, "model.safetensors")(
        total=4 * 2**20)
    for _ in range(4):
        bar.update(2**20)
    assert reports[-1] == (1.0, "model.safetensors: 4.0 of 4.0 MB")
    assert [fraction for fraction, _ in reports] == sorted(fraction for fraction, _ in reports)

    cancel = CancelToken()
    cancelling = timm_models._progress_bar(None, cancel, "model.safetensors")(total=2**20)
    cancel.cancel()
    with pytest.raises(JobCancelled):
        cancelling.update(1024)


def test_the_catalogue_lists_classifiers_only():
    catalogue = timm_models.timm_catalogue()
    names = {entry.name for entry in catalogue}
    assert len(catalogue) > 1000
    assert {"resnet50.a1_in1k", "convnextv2_tiny.fcmae_ft_in22k_in1k", "swin_tiny_patch4_window7_224.ms_in1k",
            "vit_base_patch16_224.augreg2_in21k_ft_in1k"} <= names
    assert "vit_small_patch14_dinov2.lvd142m" not in names  # a feature extractor: no classifier
    entry = next(entry for entry in catalogue if entry.name == "resnet50.a1_in1k")
    assert entry.description == "ImageNet-1k, 1,000 classes, 224x224 px"


def test_safetensors_weights_files_open_too(tmp_path, resnet_weights):
    model, _ = resnet_weights
    path = tmp_path / "resnet18.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model(f"timm:{RESNET}", weights_path=path)
    assert torch.equal(loaded.module.fc.weight, model.fc.weight)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(ModelLoadError, match="damaged.safetensors"):
        load_model(f"timm:{RESNET}", weights_path=damaged)
    assert os.path.exists(path)


def test_a_vit_takes_a_photos_aspect_ratio_in_whole_patches():
    config = timm_models._pretrained_config("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    vit = build_timm_architecture("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    preprocessing = timm_models.preprocessing_of(vit, config)
    # chelsea.png is 451x300: 337 px would be 21.06 patches, which the ViT refuses; 336 is 21.
    assert preprocessing.multiple_of == 16 and preprocessing.input_size(451, 300) == (336, 224)
    with torch.no_grad():
        assert vit(torch.zeros(1, 3, 224, 336)).shape == (1, 1000)
    resnet = timm_models.preprocessing_of(build_timm_architecture(RESNET), timm_models._pretrained_config(RESNET))
    assert resnet.multiple_of == 1 and resnet.input_size(451, 300) == (337, 224)  # a CNN takes any size
