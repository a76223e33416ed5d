"""adversarial: the target is reached inside the L-infinity ball, and the 8-bit picture keeps both."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core.errors import MethodInputError
from engine.data.images import LoadedImage, load_image
from engine.core.jobs import CancelToken, Frame, drive
from engine.methods import METHODS, MethodContext
from engine.methods.adversarial import DEFAULT_EPS, projection_radius, quantise
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.data.samples import sample_path
from tests.conftest import make_tiny_model

from tests.cancelling import frames_before_cancel

SPEC = METHODS["adversarial"]


def run(ctx, **params):
    frames = []
    result = drive(SPEC.start(ctx, params), on_frame=frames.append)
    return result, frames


def classify(model, unit: torch.Tensor) -> tuple[int, float]:
    with torch.no_grad():
        probs = torch.softmax(model.module(model.preprocessing.normalise(unit)), dim=1)[0]
    return int(probs.argmax()), float(probs.max())


@pytest.mark.parametrize("photo, target, loss, confidence",
                         [("chelsea", "goldfish", "ce", 0.0), ("coffee", "toaster", "margin", 1.0)])
def test_the_target_is_reached_inside_the_bound(bundled, photo, target, loss, confidence):
    image = load_image(sample_path(photo))
    result, frames = run(MethodContext(model=bundled, image=image), target=target, steps=20, loss=loss,
                         confidence=confidence)
    goal = bundled.labels.index(target)
    original = bundled.preprocessing.to_unit_tensor(image.image)
    adversarial = torch.from_numpy(result.array).permute(2, 0, 1).unsqueeze(0)
    assert result.array.shape == (original.shape[2], original.shape[3], 3) and result.array.dtype == np.float32
    # The bound, exactly, on what is returned; and the picture is in 0..1.
    assert float((adversarial - original).abs().max()) <= DEFAULT_EPS + 1e-6
    assert 0.0 <= result.array.min() and result.array.max() <= 1.0
    # Re-classified independently of the method: the target, which the original was not,
    # and ahead of the runner-up by the margin asked for.
    assert classify(bundled, original)[0] != goal
    with torch.no_grad():
        logits = bundled.module(bundled.preprocessing.normalise(adversarial))[0]
    assert int(logits.argmax()) == goal
    assert float(logits[goal] - torch.cat([logits[:goal], logits[goal + 1:]]).max()) > confidence
    metrics = result.metrics
    assert metrics["success"] is True and 1 <= metrics["steps"] <= 20
    assert metrics["linf"] == float((adversarial.double() - original.double()).abs().max()) <= metrics["eps"]
    assert metrics["l2"] == pytest.approx(float((adversarial.double() - original.double()).norm()), rel=1e-9)
    assert metrics["target_prob_before"] < 0.01 < metrics["target_prob"]
    assert metrics["original_prob_after"] < metrics["original_prob"]
    assert metrics["lead"] > confidence
    assert metrics["loss_last"] < metrics["loss_first"]
    # One frame per step, the original first; each carries the loss.
    assert len(frames) == metrics["steps"] + 1 and all(isinstance(f, Frame) for f in frames)
    assert [f.step for f in frames] == list(range(metrics["steps"] + 1))
    assert frames[0].metrics["loss"] == metrics["loss_first"] and frames[-1].metrics["loss"] == metrics["loss_last"]

    # The 8-bit PNG, written and read back as a user would: still within eps, still the target.
    buffer = io.BytesIO()
    Image.fromarray(unit_tensor_to_rgb(adversarial)).save(buffer, format="PNG")
    buffer.seek(0)
    reread = LoadedImage(Image.open(buffer).convert("RGB"), path="adversarial.png")
    pixels = bundled.preprocessing.to_unit_tensor(reread.image)
    assert pixels.shape == original.shape  # the model-input size: read back without resizing
    assert float((pixels - original).abs().max()) <= DEFAULT_EPS + 1e-6
    assert metrics["success_after_quantisation"] is True
    assert classify(bundled, pixels)[0] == goal


def test_a_budget_too_small_is_reported_as_failure(bundled, chelsea):
    result, frames = run(MethodContext(model=bundled, image=chelsea), target="goldfish", eps=0.0005, steps=2)
    goal = bundled.labels.index("goldfish")
    adversarial = torch.from_numpy(result.array).permute(2, 0, 1).unsqueeze(0)
    original = bundled.preprocessing.to_unit_tensor(chelsea.image)
    assert classify(bundled, adversarial)[0] != goal
    assert result.metrics["success"] is False and result.metrics["success_after_quantisation"] is False
    assert result.metrics["steps"] == 2 and len(frames) == 3
    assert float((adversarial - original).abs().max()) <= 0.0005 + 1e-6
    assert "NOT fooled" in result.display.note and "goldfish" not in result.metrics["top1"]


def test_rounding_to_8_bits_never_leaves_the_ball():
    # 2/255 is two whole levels: nothing is given up. 0.0078 is 1.99 levels: rounding a
    # change of 1.99 levels would give 2 (more than eps), so the radius drops to 1.49.
    assert projection_radius(2 / 255) == 2 / 255
    assert projection_radius(0.0078) == pytest.approx(1.49 / 255)
    assert projection_radius(0.001) == pytest.approx(0.001)  # under half a level: rounding undoes it all
    generator = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (1, 3, 40, 40), generator=generator).float() / 255
    for eps in (2 / 255, 0.0078, 3.6 / 255, 0.001):
        radius = projection_radius(eps)
        signs = torch.randint(0, 3, original.shape, generator=generator).float() - 1  # the corners of the ball, and 0
        pushed = (original + radius * signs).clamp(0, 1)
        rounded = quantise(pushed)
        assert torch.equal(quantise(rounded), rounded)  # on the 8-bit grid
        assert float((rounded - original).abs().max()) <= eps + 1e-7
        # quantise() is exactly what writing the picture does.
        expected = torch.from_numpy(unit_tensor_to_rgb(pushed)).permute(2, 0, 1).float().unsqueeze(0) / 255
        assert torch.equal(rounded, expected)


def tiny_setup():
    model = make_tiny_model(size=16)
    rng = np.random.default_rng(0)
    image = LoadedImage(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)), path="noise.png")
    return model, image


def test_bad_requests_are_clear():
    model, image = tiny_setup()
    ctx = MethodContext(model=model, image=image)
    top = classify(model, model.preprocessing.to_unit_tensor(image.image))[0]
    other = (top + 1) % 5
    with pytest.raises(MethodInputError, match=f"already classified as 'class {top}'.*choose another --target"):
        run(ctx, target=top)
    with pytest.raises(MethodInputError, match="--eps must be above 0"):
        run(ctx, target=other, eps=0)
    with pytest.raises(MethodInputError, match="--eps must be at most 1"):
        run(ctx, target=other, eps=2)
    with pytest.raises(MethodInputError, match="--steps must be at least 1"):
        run(ctx, target=other, steps=0)
    with pytest.raises(MethodInputError, match="--loss must be one of ce, margin"):
        drive(SPEC.start(ctx, target=other, loss="hinge"))
    with pytest.raises(MethodInputError, match="no class is called 'zebra'"):
        run(ctx, target="zebra")
    with pytest.raises(MethodInputError, match="needs an image"):
        run(MethodContext(model=model, image=None), target=other)


def test_cancelling_keeps_no_result():
    model, image = tiny_setup()
    top = classify(model, model.preprocessing.to_unit_tensor(image.image))[0]
    cancel = CancelToken()
    job = SPEC.start(MethodContext(model=model, image=image, cancel=cancel), target=(top + 1) % 5, eps=0.001, steps=50)
    assert frames_before_cancel(job, cancel) == 1


def test_the_default_target_is_the_least_likely_class_and_the_bound_is_reported_exactly():
    model, image = tiny_setup()
    ctx = MethodContext(model=model, image=image)
    with torch.no_grad():
        logits = model.module(model.preprocessing.normalise(model.preprocessing.to_unit_tensor(image.image)))[0]
    # A confidence no step budget reaches keeps every pixel pushed to the bound.
    result, _ = run(ctx, confidence=1000.0, steps=30)
    assert result.target["index"] == int(logits.argmin()) == result.params["target"]
    metrics = result.metrics
    # Exactly 2 levels of 255 at the default eps of 2/255: equal as written, not to float32's rounding.
    assert metrics["linf_levels"] == 2 and metrics["linf_8bit"] == DEFAULT_EPS == metrics["eps"]
    assert metrics["linf"] <= metrics["eps"]


@pytest.mark.parametrize("radius", [DEFAULT_EPS, 1 / 255, 0.0078, 3.49 / 255, 0.3])
def test_the_projection_bounds_never_reach_past_the_radius(radius):
    from engine.methods.adversarial import projection_bounds

    levels = torch.arange(256, dtype=torch.float32)
    original = (levels / 255).reshape(1, 1, 16, 16)  # every 8-bit value, as to_unit_tensor gives them
    low, high = projection_bounds(original, radius)
    exact = original.double()
    assert bool((low.double() >= (exact - radius).clamp(0, 1)).all())
    assert bool((high.double() <= (exact + radius).clamp(0, 1)).all())
    # Tight: one float32 step further out would be past the radius (or past 0..1).
    assert bool(((torch.nextafter(low, torch.zeros_like(low)).double() < (exact - radius).clamp(0, 1))
                 | (low == 0)).all())
    assert bool((torch.nextafter(high, torch.ones_like(high) * 2).double() > (exact + radius).clamp(0, 1)).all())
