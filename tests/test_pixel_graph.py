"""The photo on show keeps its forward pass with its graph: saliency is then one backward pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from engine.anatomy import activations
from engine.anatomy.activations import FeatureCache, compute_features
from engine.methods import MethodContext, saliency
from tests.conftest import make_tiny_model
from tests.test_methods import random_image, run


@pytest.fixture
def tiny():
    return make_tiny_model(size=16)


@pytest.fixture
def photo():
    return random_image((16, 20))


def on_show(model, image) -> MethodContext:
    """A context whose photo's features are computed, as the window's are when it opens."""
    ctx = MethodContext(model=model, image=image, features=FeatureCache())
    ctx.image_features()
    return ctx


def test_saliency_of_the_photo_on_show_is_one_backward_pass_through_the_kept_graph(tiny, photo, monkeypatch):
    expected = {target: run("saliency", MethodContext(model=tiny, image=photo), target=target)[0]
                for target in ("1", "3")}
    ctx = on_show(tiny, photo)
    assert ctx.image_features().graph is not None

    def no_pass(*args, **kwargs):
        raise AssertionError("a forward pass was run")

    monkeypatch.setattr(saliency, "score_gradient", no_pass)
    for target in ("1", "3", "1"):  # the graph is kept for every class, and asked again
        result, _ = run("saliency", ctx, target=target)
        np.testing.assert_allclose(result.array, expected[target].array, rtol=1e-5, atol=1e-7)
        assert result.metrics["score"] == pytest.approx(expected[target].metrics["score"], rel=1e-6)


def test_the_graph_runs_back_to_the_0_1_pixels_through_the_model_s_normalisation(photo):
    model = make_tiny_model(size=16)
    model = dataclasses.replace(model, preprocessing=dataclasses.replace(model.preprocessing, mean=(0.5, 0.4, 0.3),
                                                                         std=(0.2, 0.25, 0.5)))
    fresh, _ = run("saliency", MethodContext(model=model, image=photo), target="2")
    kept, _ = run("saliency", on_show(model, photo), target="2")
    np.testing.assert_allclose(kept.array, fresh.array, rtol=1e-5, atol=1e-7)  # d/d pixel, not d/d normalised input


def test_new_weights_are_not_answered_from_the_old_graph(tiny, photo):
    ctx = on_show(tiny, photo)
    before, _ = run("saliency", ctx, target="2")
    with torch.no_grad():
        tiny.module.classifier.weight.mul_(-3)
    after, _ = run("saliency", ctx, target="2")
    fresh, _ = run("saliency", MethodContext(model=tiny, image=photo), target="2")
    np.testing.assert_allclose(after.array, fresh.array, rtol=1e-5, atol=1e-7)
    assert not np.allclose(after.array, before.array)


def test_a_graph_whose_backward_pass_fails_is_dropped_and_the_map_comes_from_a_fresh_pass(tiny, photo, monkeypatch):
    ctx = on_show(tiny, photo)
    graph = ctx.image_features().graph
    fresh, _ = run("saliency", MethodContext(model=tiny, image=photo), target="2")
    real_grad = torch.autograd.grad

    def fails_once(outputs, inputs, **kwargs):
        monkeypatch.setattr(torch.autograd, "grad", real_grad)
        raise RuntimeError("one of the variables needed for gradient computation has been modified by an inplace "
                           "operation")

    monkeypatch.setattr(torch.autograd, "grad", fails_once)
    result, _ = run("saliency", ctx, target="2")
    np.testing.assert_allclose(result.array, fresh.array, rtol=1e-5, atol=1e-7)
    assert graph.score_gradient(tiny, 2) is None  # dropped, not tried again


def test_no_graph_is_kept_past_the_memory_cap_for_a_model_without_gradients_or_outside_the_window(tiny, photo,
                                                                                                monkeypatch):
    assert compute_features(tiny, photo).graph is None  # the CLI's `activations` and tests: no graph asked for
    assert compute_features(make_tiny_model(size=16), photo, keep_graph=True).graph is not None
    onnx_like = dataclasses.replace(make_tiny_model(size=16), forward_only="its Sign node gives no gradient")
    assert compute_features(onnx_like, photo, keep_graph=True).graph is None
    monkeypatch.setattr(activations, "KEPT_GRAPH_BYTES", 1000)
    features = compute_features(make_tiny_model(size=16), photo, keep_graph=True)
    assert features.graph is None and not features.logits.requires_grad


class NumpyMidway(nn.Module):
    """Runs part of its forward in NumPy, which a tensor that records a graph refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        pooled = torch.from_numpy(self.conv(x).numpy().mean(axis=(2, 3)))
        return self.head(pooled)


def test_a_model_that_cannot_record_a_graph_still_shows_its_layers_and_predictions(photo):
    model = make_tiny_model(size=16)
    model = dataclasses.replace(model, module=NumpyMidway().eval(), layer_presets={})
    features = FeatureCache().get(model, photo)
    assert features.graph is None
    assert set(features.activations) >= {"conv", "head"} and features.logits.shape == (1, 5)


def test_the_features_hold_no_graph_in_their_layers_logits_or_input(tiny, photo):
    features = compute_features(tiny, photo, keep_graph=True)
    assert features.graph is not None
    tensors = [features.input, features.logits, *features.activations.values()]
    assert not any(tensor.requires_grad for tensor in tensors)
