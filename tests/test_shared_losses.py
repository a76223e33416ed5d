"""Shared machinery of the optimisation methods, checked against formulas and finite differences."""

import numpy as np
import pytest
import torch

from engine.view.animation import FrameRecorder
from engine.style.gram import gram_matrix
from engine.style.perceptual import content_loss, gram_targets, style_loss
from engine.optvis.regularisers import total_variation


def test_total_variation_matches_the_formula_written_out():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 4, 5, dtype=torch.float64)
    for beta in (2.0, 1.0):
        expected = 0.0
        for c in range(2):
            for i in range(3):
                for j in range(4):
                    d = (x[0, c, i, j + 1] - x[0, c, i, j]) ** 2 + (x[0, c, i + 1, j] - x[0, c, i, j]) ** 2
                    expected += float(d if beta == 2.0 else (d + 1e-8) ** (beta / 2))
        assert total_variation(x, beta).item() == pytest.approx(expected, rel=1e-9)


def test_total_variation_is_zero_on_a_flat_image_and_its_gradient_is_right():
    assert total_variation(torch.full((1, 3, 6, 6), 0.3)).item() == 0.0
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: total_variation(t, 1.5), (x,))


def test_style_loss_is_the_mean_squared_gram_difference_and_zero_on_its_own_target():
    torch.manual_seed(2)
    features = {"a": torch.rand(1, 4, 5, 5), "b": torch.rand(1, 6, 3, 3)}
    targets = gram_targets(features)
    assert style_loss(features, targets).item() == pytest.approx(0.0, abs=1e-12)
    other = {"a": torch.rand(1, 4, 5, 5), "b": features["b"]}
    expected = ((gram_matrix(other["a"]) - targets["a"]) ** 2).mean().item()
    assert style_loss(other, targets, {"a": 3.0}).item() == pytest.approx(3 * expected, rel=1e-6)
    assert content_loss(other, {"b": features["b"]}).item() == pytest.approx(0.0, abs=1e-12)


def test_frame_recorder_spans_the_whole_run_within_its_bounds():
    recorder = FrameRecorder(max_frames=10, max_side=32)
    for step in range(1000):
        recorder.add(np.full((64, 128, 3), step * 255 // 999, np.uint8))
    frames = recorder.finish(np.zeros((64, 128, 3), np.uint8))
    assert 5 <= len(frames) <= 11
    assert all(f.shape == (16, 32, 3) for f in frames)
    assert frames[0][0, 0, 0] == 0 and frames[-2][0, 0, 0] > 200  # first and late steps both kept
