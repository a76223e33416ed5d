"""The parts of the optimisation loop checked against their definitions: regularisers,
parameterisations, transforms, objectives, and the loop itself (loss falls, frames stream,
cancel leaves no result, a seed reproduces)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from engine.attribution.gradients import class_score_gradient
from engine.core.errors import JobCancelled, MethodInputError
from engine.core.jobs import CancelToken, Frame, drive
from engine.optvis.objectives import INPUT, LOGITS, class_logit, channel, clipped_match, diversity, feature_match, \
    gram_similarity, neuron, penalty, pre_activation
from engine.optvis.optimise import Projection, activation_clip, optimise, probe_model
from engine.optvis.parameterisation import COLOUR_MATRIX, IMAGENET_COLOUR_EIGENVALUES, IMAGENET_COLOUR_EIGENVECTORS, \
    FourierImage, PixelImage, colour_correlation_sqrt, correlate_colour, decorrelate_colour, spectrum_scale
from engine.optvis.regularisers import centre_bias, clip_small_contribution, clip_small_norm, gaussian_blur, l2_decay, \
    l2_penalty
from engine.optvis.transforms import random_crops
from engine.optvis.transforms import compose, jitter, pad, random_scale_rotate, scale_rotate_image


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# -- regularisers ---------------------------------------------------------------------------
def test_l2_penalty_decay_and_centre_bias_match_their_formulas_written_out():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=gen(1))
    assert l2_penalty(x).item() == pytest.approx(sum(float(v) ** 2 for v in x.flatten()), rel=1e-12)
    assert torch.allclose(l2_decay(x, 0.25), 0.75 * x)
    expected = 0.0
    for n in range(2):
        for i in range(5):
            for j in range(4):
                d2 = (((i + 0.5) / 5 - 0.5) ** 2 + ((j + 0.5) / 4 - 0.5) ** 2) / 0.5  # 0 at the centre, ~1 at corners
                expected += d2 * float(sum(x[n, c, i, j] ** 2 for c in range(3)))
    assert centre_bias(x).item() == pytest.approx(expected, rel=1e-12)
    # A picture that is non-zero only in its middle pays far less than one non-zero at its edge.
    middle, edge = torch.zeros(1, 3, 9, 9), torch.zeros(1, 3, 9, 9)
    middle[..., 4, 4] = 1
    edge[..., 0, 0] = 1
    assert centre_bias(middle).item() == 0.0 and centre_bias(edge).item() > 2.0


def test_gaussian_blur_matches_scipy_including_the_mirrored_edges():
    x = torch.rand(1, 3, 13, 17, dtype=torch.float64, generator=gen(2))
    for sigma in (0.5, 1.0, 2.0):
        expected = np.stack([ndimage.gaussian_filter(plane.numpy(), sigma, mode="mirror", truncate=3.0) for plane in x[0]])
        np.testing.assert_allclose(gaussian_blur(x, sigma)[0].numpy(), expected, atol=1e-12)
    flat = torch.full((1, 3, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)  # no dark frame from the border
    tiny = torch.rand(1, 1, 3, 3, dtype=torch.float64, generator=gen(3))  # radius 6 > the image
    blurred = gaussian_blur(tiny, 2.0)
    assert blurred.shape == tiny.shape and float(blurred.sum()) == pytest.approx(float(tiny.sum()), rel=0.3)


def test_clipping_small_norm_greys_out_exactly_the_faint_pixels():
    x = torch.randn(2, 3, 10, 10, generator=gen(4))
    clipped = clip_small_norm(x, 30.0)
    norm = x.pow(2).sum(dim=1).sqrt()
    for n in range(2):
        threshold = np.percentile(norm[n].numpy(), 30)
        faint = norm[n] < threshold
        assert int(faint.sum()) == 30
        assert (clipped[n][:, faint] == 0).all() and torch.equal(clipped[n][:, ~faint], x[n][:, ~faint])
    assert torch.equal(clip_small_norm(x, 0.0), x)


def test_clipping_small_contribution_uses_sum_over_colour_of_abs_x_times_gradient():
    x = torch.randn(1, 3, 8, 8, generator=gen(5))
    gradient = torch.randn(1, 3, 8, 8, generator=gen(6))
    clipped = clip_small_contribution(x, gradient, 50.0)
    contribution = (x * gradient).abs().sum(dim=1)[0]
    small = contribution < float(np.percentile(contribution.numpy(), 50))
    assert int(small.sum()) == 32  # of 64
    assert (clipped[0][:, small] == 0).all() and torch.equal(clipped[0][:, ~small], x[0][:, ~small])
    # Norm and contribution differ: a bright pixel the objective ignores is clipped by one only.
    x = torch.ones(1, 3, 2, 2)
    x[0, :, 0, 0] = 5.0
    gradient = torch.ones(1, 3, 2, 2)
    gradient[0, :, 0, 0] = 0.0
    assert clip_small_contribution(x, gradient, 50.0)[0, 0, 0, 0] == 0 and clip_small_norm(x, 50.0)[0, 0, 0, 0] == 5


# -- parameterisations ----------------------------------------------------------------------
def test_the_colour_matrix_is_a_square_root_of_imagenets_colour_covariance():
    vectors, values = np.array(IMAGENET_COLOUR_EIGENVECTORS), np.array(IMAGENET_COLOUR_EIGENVALUES)
    covariance = vectors @ np.diag(values) @ vectors.T
    sqrt = colour_correlation_sqrt().numpy()
    np.testing.assert_allclose(sqrt @ sqrt.T, covariance, atol=1e-12)
    # Lucid's color_correlation_svd_sqrt, as printed in lucid/optvis/param/color.py.
    lucid = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    assert np.abs(sqrt - lucid).max() < 0.01
    # Normalised by the largest column norm: the main (brightness) axis has unit length.
    matrix = COLOUR_MATRIX.double().numpy()
    np.testing.assert_allclose(matrix, sqrt / np.linalg.norm(sqrt, axis=0).max(), atol=1e-6)
    # Independent unit-variance latent colours come out with ImageNet's correlations.
    latent = torch.randn(1, 3, 300, 300, generator=gen(7), dtype=torch.float64)
    rgb = decorrelate_colour(latent)[0].reshape(3, -1).numpy()
    expected = matrix @ matrix.T
    np.testing.assert_allclose(np.cov(rgb), expected, atol=0.01)
    assert np.corrcoef(rgb)[0, 1] > 0.85  # red and green move together in natural images
    np.testing.assert_allclose(correlate_colour(decorrelate_colour(latent)).numpy(), latent.numpy(), atol=1e-9)


def test_fourier_picture_is_real_in_0_1_and_its_spectrum_is_scaled_by_1_over_f():
    param = FourierImage.random((2, 3, 24, 30), gen(8), sd=5.0)  # a large spectrum: the sigmoid must still hold it
    picture = param.image().detach()
    assert picture.dtype == torch.float32 and not picture.is_complex()
    assert picture.shape == (2, 3, 24, 30) and 0 <= float(picture.min()) and float(picture.max()) <= 1
    assert float(picture.std()) > 0.05
    # rfft2 of the latent picture gives back the scaled spectrum (interior columns: the
    # first and Nyquist columns have imaginary parts irfft2 must discard).
    coefficients = torch.view_as_real(torch.fft.rfft2(param.latent().detach() * FourierImage.MAGIC, norm="ortho"))
    scaled = spectrum_scale(24, 30)[None, None, :, :, None] * param.spectrum.detach()
    torch.testing.assert_close(coefficients[..., 1:15, :], scaled[..., 1:15, :], atol=1e-4, rtol=1e-4)
    scale = spectrum_scale(24, 30)
    assert scale[0, 1] == pytest.approx(30.0) and scale[0, 2] == pytest.approx(15.0)  # 1/f, f = 1/30, 2/30 cycles/px
    assert scale[0, 0] == pytest.approx(30.0)  # the DC term is floored at 1/max(h, w)


def test_both_parameterisations_can_be_set_to_a_picture_and_give_it_back():
    picture = torch.rand(2, 3, 20, 26, generator=gen(9)) * 0.9 + 0.05
    fourier = FourierImage.random((2, 3, 20, 26), gen(10))
    fourier.set_image(picture)
    torch.testing.assert_close(fourier.image(), picture, atol=1e-4, rtol=0)
    pixels = PixelImage.random((2, 3, 20, 26), gen(11))
    pixels.set_image(picture * 2 - 0.5)
    kept = pixels.image().detach()
    assert 0 <= float(kept.min()) and float(kept.max()) <= 1  # kept in range
    first, again = FourierImage.random((1, 3, 8, 8), gen(3)), FourierImage.random((1, 3, 8, 8), gen(3))
    assert torch.equal(first.image(), again.image())


# -- transforms -----------------------------------------------------------------------------
def test_scale_rotate_turns_and_zooms_about_the_centre():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(scale_rotate_image(x, 1.0, 90.0), torch.rot90(x, 1, (2, 3)))
    zoomed = scale_rotate_image(x, 2.0, 0.0)
    assert zoomed[0, 0].mean() == pytest.approx(x[0, 0, 1:3, 1:3].mean())  # the central half fills the frame
    y = torch.rand(2, 3, 8, 12, generator=gen(12))
    assert torch.equal(random_scale_rotate(y, gen(), 0.0, 0.0), y)
    assert torch.allclose(scale_rotate_image(y, 1.0, 0.0), y, atol=1e-6)
    moved = compose(jitter(3), lambda t, g: random_scale_rotate(t, g, 0.2, 20))(y, gen(13))
    assert moved.shape == y.shape and not torch.allclose(moved, y)


def test_pad_surrounds_the_picture_with_grey_so_a_shift_does_not_wrap_it():
    y = torch.rand(1, 3, 6, 5, generator=gen(14))
    padded = pad(3)(y, gen())
    assert padded.shape == (1, 3, 12, 11) and torch.equal(padded[..., 3:9, 3:8], y)
    border = padded.clone()
    border[..., 3:9, 3:8] = 0.5
    assert torch.equal(border, torch.full_like(padded, 0.5))
    # A shift smaller than the border moves the picture whole: every pixel is still there.
    shifted = compose(pad(3), jitter(3))(y, gen(15))
    assert sorted(shifted.flatten().tolist()) == sorted(padded.flatten().tolist())
    assert torch.equal(pad(0)(y, gen()), y)


def test_random_crops_are_resized_windows_of_the_picture_at_least_the_smallest_fraction():
    # A picture whose pixels are their own column index: a crop resized back keeps its
    # columns in order, and its span says how wide the window was.
    width = 40
    columns = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(1, 3, width, width).contiguous()
    crops = random_crops(columns, 20, gen(16), smallest=0.6)
    assert crops.shape == (20, 3, width, width)
    spans = crops[:, 0, 0, -1] - crops[:, 0, 0, 0]
    assert bool((spans >= 0.6 * width - 2).all()) and bool((spans <= width).all())
    assert bool((crops >= -1e-4).all()) and bool((crops <= width - 1 + 1e-4).all())
    assert len({round(float(s)) for s in spans}) > 5  # the sizes vary
    assert torch.equal(random_crops(columns, 20, gen(16), smallest=0.6), crops)  # seeded
    np.testing.assert_allclose(random_crops(columns, 3, gen(17), smallest=1.0), columns.expand(3, -1, -1, -1))


# -- objectives -----------------------------------------------------------------------------
def test_objectives_compose_linearly_and_report_each_term(tiny_model):
    picture = torch.rand(2, 3, 16, 16, generator=gen(14))
    probe = probe_model(tiny_model, picture, (LOGITS, pre_activation("features.1"), "features.3"))
    logits = tiny_model.module(picture)
    pre = tiny_model.module.features[0](picture)  # what enters the ReLU features.1
    assert torch.allclose(probe[LOGITS], logits) and torch.allclose(probe[pre_activation("features.1")], pre)
    objective = 2 * class_logit(3) - channel("features.1", 5) + 0.5 * neuron("features.1", 2, 4, 7)
    total, parts = objective.parts(probe)
    expected = -2 * logits[:, 3].mean() + pre[:, 5].mean() - 0.5 * pre[:, 2, 4, 7].mean()
    assert float(total) == pytest.approx(float(expected), rel=1e-5)
    assert parts["class"] == pytest.approx(float(-2 * logits[:, 3].mean()), rel=1e-5)
    assert set(parts) == {"class", "channel", "neuron"}
    tv = penalty("tv", lambda x: x.sum())
    assert tv.needs == (INPUT,) and float(tv(probe)) == pytest.approx(float(picture.sum()), rel=1e-6)


def test_probe_stops_the_forward_after_the_last_layer_it_needs(tiny_model):
    calls = []
    handle = tiny_model.module.classifier.register_forward_hook(lambda *_: calls.append(1))
    try:
        probe_model(tiny_model, torch.rand(1, 3, 16, 16), ("features.1",))
        assert calls == []
        probe_model(tiny_model, torch.rand(1, 3, 16, 16), ("features.1", LOGITS))
        assert calls == [1]
    finally:
        handle.remove()
    with pytest.raises(MethodInputError, match="has no layer"):
        probe_model(tiny_model, torch.rand(1, 3, 16, 16), ("features.9",))


def test_feature_match_is_the_normalised_squared_distance_and_its_clipped_form_agrees():
    target = torch.relu(torch.randn(1, 4, 5, 5, generator=gen(15)))
    features = torch.relu(torch.randn(1, 4, 5, 5, generator=gen(16)))
    loss = feature_match("l", target)({"l": features})
    assert float(loss) == pytest.approx(float(((features - target) ** 2).sum() / (target ** 2).sum()), rel=1e-6)
    assert float(feature_match("l", target)({"l": target})) == 0.0
    # The hinge form: never below the true loss of clip(z), equal to it while z is in range,
    # and zero exactly when the clipped values match.
    z = torch.randn(2000, generator=gen(17), dtype=torch.float64) * 4
    t = torch.clamp(torch.randn(2000, generator=gen(18), dtype=torch.float64) * 4, 0, 6)
    surrogate, true = clipped_match(z, t, 0.0, 6.0), (z.clamp(0, 6) - t) ** 2
    assert (surrogate >= true - 1e-12).all()
    in_range = (z >= 0) & (z <= 6)
    assert torch.allclose(surrogate[in_range], true[in_range])
    assert float(clipped_match(torch.where(t <= 0, -1.0, torch.where(t >= 6, 9.0, t)), t, 0.0, 6.0).sum()) == 0.0
    dead = torch.tensor([-2.0], requires_grad=True)  # off in x, on in x0: the hinge still pulls it up
    clipped_match(dead, torch.tensor([3.0]), 0.0, 6.0).sum().backward()
    assert float(dead.grad) < 0


def test_gram_similarity_is_one_for_equal_items_and_lower_for_different_ones():
    a = torch.rand(1, 4, 6, 6, generator=gen(19))
    assert float(gram_similarity(torch.cat([a, a, a]))) == pytest.approx(1.0, rel=1e-6)
    b = torch.zeros(1, 4, 6, 6)
    b[:, 0] = 1.0  # only channel 0 active: a very different Gram matrix
    assert float(gram_similarity(torch.cat([a, b]))) < 0.7
    assert diversity("x").needs == ("x",)


# -- the loop -------------------------------------------------------------------------------
def _inversion_job(model, steps=40, cancel=None, seed=0):
    target_picture = torch.rand(1, 3, 16, 16, generator=gen(20))
    with torch.no_grad():
        target = probe_model(model, target_picture, ("features.3",))["features.3"]
    param = PixelImage.random((1, 3, 16, 16), gen(seed))
    return optimise(model, param, feature_match("features.3", target), steps=steps, lr=0.05, generator=gen(seed),
                    cancel=cancel)


def test_the_loop_lowers_the_loss_tenfold_and_streams_one_frame_per_step(tiny_model):
    frames = []
    result = drive(_inversion_job(tiny_model), on_frame=frames.append)
    assert len(result.losses) == 40 and [f.step for f in frames] == list(range(1, 41))
    assert all(isinstance(f, Frame) and f.display.rgb.shape == (16, 16, 3) and "loss" in f.metrics for f in frames)
    assert result.losses[-1] < result.losses[0] / 10
    assert result.first["features"] == pytest.approx(result.losses[0])


def test_cancel_stops_the_loop_between_steps_and_returns_nothing(tiny_model):
    token = CancelToken()
    frames = []

    def on_frame(frame):
        frames.append(frame)
        if frame.step == 3:
            token.cancel()

    with pytest.raises(JobCancelled):
        drive(_inversion_job(tiny_model, steps=50, cancel=token), on_frame=on_frame)
    assert len(frames) == 3


def test_projections_run_every_n_steps_with_the_pictures_gradient(tiny_model):
    seen = []

    def record(centred, gradient):
        seen.append(gradient.clone())
        return centred * 0  # grey everything out

    start = PixelImage.random((1, 3, 16, 16), gen(21), sd=0.2).image().detach()
    # lr 0: Adam leaves the picture alone, so only the projection changes it.
    job = optimise(tiny_model, PixelImage(start), class_logit(1), steps=6, lr=0.0, generator=gen(),
                   projections=[Projection("grey", record, every=3)])
    result = drive(job)
    assert len(seen) == 2  # after steps 3 and 6
    mean = torch.tensor(tiny_model.preprocessing.mean).view(1, 3, 1, 1)
    assert torch.allclose(result.image, mean.expand_as(result.image))
    gradient, _ = class_score_gradient(tiny_model, start, 1)
    torch.testing.assert_close(seen[0], -gradient)  # d(-logit)/d picture at step 3's picture
    gradient, _ = class_score_gradient(tiny_model, mean.expand(1, 3, 16, 16), 1)
    torch.testing.assert_close(seen[1], -gradient)  # ... and at the grey picture of step 6


def test_activation_clip_knows_relu_and_relu6(bundled, tiny_model):
    assert activation_clip(tiny_model, "features.1") == (0.0, float("inf"))
    assert activation_clip(bundled, "head.relu6") == (0.0, 6.0)
    assert activation_clip(bundled, "head.conv") is None
