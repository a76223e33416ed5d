"""Every method through the command line, as METHODS.md specifies it: one JSON line, the
picture with its sidecar under --out, the raw result under --save-array; small settings
so each runs in seconds on the bundled model."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest
from PIL import Image

from engine.app.cli import main
from engine.view.export import sidecar_path_for
from engine.methods import METHODS


# The few flags each method needs to be quick (and, for fast-style, the network that
# fast-style-train writes first: the order matters).
QUICK_ARGS = {
    "filters": ["--layer", "stem.conv"],
    "activations": ["--layer", "stages.1.1.expand_relu6"],
    "neighbors": ["--dataset", "samples", "--k", "3"],
    "embed": ["--dataset", "samples", "--algo", "pca"],
    "patches": ["--dataset", "samples", "--channels", "0-1", "--top", "2"],
    "occlusion": ["--window", "112", "--stride", "112"],
    "rise": ["--masks", "8"],
    "saliency": [],
    "smoothgrad": ["--samples", "2"],
    "integrated-gradients": ["--steps", "4"],
    "gradcam": [],
    "guided-backprop": [],
    "guided-gradcam": [],
    "segment": ["--iterations", "1"],
    "sanity-check": ["--methods", "saliency", "--steps", "2"],
    "class-viz": ["--steps", "3", "--size", "64"],
    "adversarial": ["--steps", "2"],  # the default target: the least likely class
    "inversion": ["--steps", "3", "--size", "64"],
    "dream": ["--steps", "2", "--octaves", "1", "--size", "64"],
    "texture": ["--steps", "2", "--size", "48", "--sample-size", "48"],
    "style": ["--steps", "2", "--size", "48"],  # the default style: the shipped picture
    "fast-style-train": ["--dataset", "samples", "--steps", "1", "--batch", "1", "--size", "32",
                         "--width", "8", "--blocks", "1", "--save", "bricks"],
    "fast-style": ["--style-model", "bricks", "--size", "48"],
    # A transformer's method: on a timm ViT whose weights the module's fixture saves.
    "attention-rollout": ["--model", "timm:vit_tiny_patch16_224", "--weights", "{vit_weights}"],
}


# METHODS.md: the metrics each method must report (more are welcome).
OPTIMISATION = ("class-viz", "adversarial", "inversion", "dream", "texture", "style", "fast-style-train")
REQUIRED_METRICS = {
    **{method: {"loss_first", "loss_last"} for method in OPTIMISATION},
    "dream": {"loss_first", "loss_last", "norm_first", "norm_last"},
    "adversarial": {"loss_first", "loss_last", "success", "steps", "linf", "l2", "original_prob", "target_prob"},
    "inversion": {"loss_first", "loss_last", "psnr", "feature_loss"},
    "neighbors": {"neighbors"},
    "embed": {"paths", "labels"},
    "occlusion": {"base_prob", "max_drop"},
}
JSON_KEYS = {"method", "model", "layer", "target", "seconds", "top5", "out", "metrics"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One private cache for the module: fast-style reads the style fast-style-train saved."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVSCOPE_CACHE", str(folder))
        yield folder


def test_every_method_is_exercised_here():
    assert set(QUICK_ARGS) == set(METHODS)


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    from engine.models.timm_models import build_timm_architecture

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "vit_tiny.pt"
    torch.save(build_timm_architecture("vit_tiny_patch16_224").state_dict(), path)
    return path


@pytest.mark.parametrize("method_id", list(QUICK_ARGS))
def test_each_method_runs_from_the_command_line(method_id, cache, tmp_path, capsys, chelsea_path, request):
    out, array = tmp_path / f"{method_id}.png", tmp_path / f"{method_id}.npy"
    args = [arg.format(vit_weights=request.getfixturevalue("vit_weights")) if "{vit_weights}" in arg else arg
            for arg in QUICK_ARGS[method_id]]
    code = main(["run", method_id, "--image", chelsea_path, "--out", str(out), "--save-array", str(array), *args])
    printed, err = capsys.readouterr()
    assert code == 0, err
    lines = printed.strip().splitlines()
    assert len(lines) == 1, "one JSON line, nothing else on stdout"
    record = json.loads(lines[0])
    assert record["method"] == method_id and record["out"] == str(out)
    assert JSON_KEYS <= set(record) and REQUIRED_METRICS.get(method_id, set()) <= set(record["metrics"])
    with Image.open(out) as picture:
        assert picture.mode == "RGB" and min(picture.size) >= 8
    sidecar = json.loads(sidecar_path_for(out).read_text())
    assert sidecar["method"] == method_id and sidecar["params"] == record["params"]
    if record["save_array"] is not None:
        assert np.isfinite(np.load(array).astype(np.float64)).any()
    if method_id == "neighbors":
        found = record["metrics"]["neighbors"]
        assert len(found) == 3 and {"path", "distance", "label"} <= set(found[0])
        assert [n["distance"] for n in found] == sorted(n["distance"] for n in found)  # nearest first
    if method_id == "embed":
        assert len(record["metrics"]["paths"]) == len(record["metrics"]["labels"]) == len(np.load(array))


def test_a_vector_layers_bars_and_an_embeddings_scatter_are_drawn_for_out(cache, tmp_path, capsys, chelsea_path):
    """The window draws these with pyqtgraph; without one, --out still gets the picture."""
    bars, scatter = tmp_path / "bars.png", tmp_path / "scatter.png"
    assert main(["run", "activations", "--image", chelsea_path, "--layer", "classifier", "--out", str(bars)]) == 0
    assert main(["run", "embed", "--dataset", "samples", "--algo", "pca", "--out", str(scatter)]) == 0
    capsys.readouterr()
    for path in (bars, scatter):
        with Image.open(path) as picture:
            colours = np.asarray(picture.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(colours, axis=0)) > 3  # more than a blank frame
