"""``adversarial``: a fooling image. Nudge the picture until the network calls it the target.

Targeted iterative FGSM, i.e. projected gradient descent under an L-infinity bound
(Kurakin et al. 2017, Madry et al. 2018): in 0..1 pixel units, each step moves every pixel
by ``lr`` against the sign of the gradient of the loss (``ce``: -log p(target); ``margin``:
the best other logit minus the target's, Carlini & Wagner 2017), then projects back onto
the ball |x - x0| <= eps around the original and onto [0, 1]. It stops as soon as the
target's logit leads every other by more than ``--confidence``, or after ``--steps``.

The default target is ``least-likely``: the class the network finds least likely for this
image, as Kurakin et al.'s "iterative least-likely class" attack picks it. It is never the
image's own class, so the default runs on any picture, and it is as far from the truth as
the network knows (a cat mistaken for a gibbon, an espresso for a punching bag), which
shows what the attack does far better than a neighbouring class (tabby to tiger cat)
would. On the bundled model and the sample photos it is reached in 3-8 steps at 2/255.

The result is saved and shown as an 8-bit picture, and rounding to 8 bits may both move
pixels and undo the attack, so both are designed for:

- the bound: the original model input is already on the 8-bit grid (``to_unit_tensor``
  divides 8-bit pixels by 255), so a perturbation of at most L + 0.49 levels rounds to at
  most L levels. The projection radius is therefore eps, or L + 0.49 levels where eps is
  not a whole number of levels L (eps = 0.0078 is 1.99 levels; rounding a 1.99-level
  change would give 2 levels, more than eps, so that image may move 1.49 levels). The
  default eps is exactly 2/255, where nothing is lost. Both the float result and its
  8-bit rounding are within eps of the original, and what is reported says so exactly:
  the projection's float32 bounds are rounded towards the original, ``linf`` is measured
  in float64, and the 8-bit change is counted in whole levels (``linf_levels``, exactly 2
  at the default eps; ``linf_8bit`` is that count / 255), so ``linf_8bit <= eps`` holds
  as written rather than to float32's rounding.
- the attack: a step only counts as reaching the target when the 8-bit rounding of the
  image is classified as the target too (one extra forward, only on steps where the float
  image already is). ``success`` is about the float image, ``success_after_quantisation``
  about its 8-bit rounding; they can differ only when the step budget ran out.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from engine.view.animation import FrameRecorder
from engine.core.errors import MethodInputError
from engine.view.gallery import Tile, render_gallery
from engine.attribution.gradients import run_score
from engine.anatomy.hooks import first_tensor
from engine.core.jobs import Progress, Result
from engine.view.display import Picture
from engine.models.preprocessing import unit_tensor_to_rgb
from engine.optvis.loop import Step, optimisation_loop
from engine.methods.params import MethodSpec, Param

LOSSES = ("ce", "margin")
LEAST_LIKELY = "least-likely"  # the target keyword: the class the network finds least likely
DEFAULT_EPS = 2 / 255
LEVELS = 255  # an 8-bit picture's steps between 0 and 1
# How close to the next rounding boundary a perturbation may come, in 8-bit levels: far
# more than float32's error at 255 (about 3e-5), far less than a level.
ROUNDING_MARGIN = 0.01


def projection_radius(eps: float) -> float:
    """The largest L-infinity radius whose 8-bit rounding never leaves the eps ball.

    For an original on the 8-bit grid, x = x0 + d with |d| <= (L + 0.5 - margin) / 255
    rounds to x0 plus at most L levels, and L levels must not exceed eps.
    """
    whole_levels = math.floor(eps * LEVELS + 1e-6)
    return min(eps, (whole_levels + 0.5 - ROUNDING_MARGIN) / LEVELS)


def quantise(unit: torch.Tensor) -> torch.Tensor:
    """The image as an 8-bit file holds it: exactly ``unit_tensor_to_rgb``'s rounding."""
    return torch.floor(unit.clamp(0, 1) * LEVELS + 0.5) / LEVELS


def _all_logits(module, x: torch.Tensor) -> torch.Tensor:
    return first_tensor(module(x))


def _logits(model, unit: torch.Tensor) -> torch.Tensor:
    """The class scores of 0..1 pixels, through the engine's fastest layout for the network."""
    return run_score(model, unit, _all_logits)


def target_lead(logits: torch.Tensor, target: int) -> float:
    """The target's logit minus the best other one: positive when the target is the top-1."""
    scores = logits[0].detach()
    others = scores.clone()
    others[target] = -float("inf")
    return float(scores[target] - others.max())


def _loss(logits: torch.Tensor, target: int, kind: str, confidence: float) -> torch.Tensor:
    if kind == "ce":
        return -torch.log_softmax(logits, dim=1)[0, target]
    others = logits[0].clone()
    others[target] = -float("inf")
    # Carlini & Wagner's f6: no push once the target leads by the confidence margin.
    return torch.clamp(others.max() - logits[0, target], min=-confidence)


def projection_bounds(original: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 box every pixel stays in: [x0 - radius, x0 + radius] within [0, 1],
    each bound rounded towards the original, so that no float32 value inside it is more
    than ``radius`` from the original (rounding to nearest could put a bound a float32
    step outside, and the reported L-inf a hair above eps)."""
    exact = original.double()
    bounds = []
    for limit, inward in (((exact - radius).clamp(0, 1), math.inf), ((exact + radius).clamp(0, 1), -math.inf)):
        rounded = limit.to(original.dtype)
        outside = (rounded.double() < limit) if inward > 0 else (rounded.double() > limit)
        bounds.append(torch.where(outside, torch.nextafter(rounded, torch.full_like(rounded, inward)), rounded))
    return bounds[0], bounds[1]


def eight_bit_levels(rounded: torch.Tensor, original: torch.Tensor) -> int:
    """The largest change of any pixel between two pictures on the 8-bit grid, in whole levels."""
    return int(((rounded.double() - original.double()) * LEVELS).round().abs().max())


def resolve_goal(ctx, target: str, logits: torch.Tensor) -> dict:
    """{"index", "label"} of the target: a class asked for, or the least likely one for this image."""
    if str(target).strip().lower() == LEAST_LIKELY:
        index = int(logits[0].argmin())
        return {"index": index, "label": ctx.model.labels[index]}
    return ctx.resolve_target(target)


def run(ctx, p):
    image = ctx.require_image()
    eps, steps, confidence, loss = p.eps, p.steps, p.confidence, p.loss
    lr = p.lr or eps / 4
    model = ctx.model
    original = model.preprocessing.to_unit_tensor(image.image).to(ctx.device)
    with torch.no_grad():
        start_logits = _logits(model, original)
    goal = resolve_goal(ctx, p.target, start_logits)
    index = goal["index"]
    p.record(target=index, lr=lr)
    source = int(start_logits[0].argmax())
    start_probs = torch.softmax(start_logits[0].double(), dim=0)
    if source == index:
        raise MethodInputError(f"the image is already classified as '{goal['label']}' "
                               f"(top-1, p = {float(start_probs[index]):.3f}): choose another --target")
    names = (model.labels[source], goal["label"])
    radius = projection_radius(eps)
    low, high = projection_bounds(original, radius)

    yield Progress(0.0, f"'{names[0]}' towards '{names[1]}'")
    attack = SignStep(model, original, index, loss, confidence, lr, steps, (low, high))
    before = (start_probs[source], start_probs[index])

    def show(_number, step):
        mosaic = _mosaic(original, step.picture, eps, names, before, (attack.probs[source], attack.probs[index]))
        return Picture(rgb=mosaic)

    recorder = FrameRecorder()
    trace = yield from optimisation_loop(
        attack.step, steps, first=0, show=show, cancel=ctx.cancel, recorder=recorder,
        describe=lambda number, _step: f"step {number} of at most {steps}: p({names[1]}) = {float(attack.probs[index]):.3f}")
    adversarial, updates, lead, losses = attack.adversarial, trace.step, attack.lead, trace.losses
    final_probs = attack.probs  # the last step measured the final image
    with torch.no_grad():
        rounded = quantise(adversarial)
        rounded_logits = _logits(model, rounded)
    success = int(final_probs.argmax()) == index
    success_8bit = int(rounded_logits[0].argmax()) == index
    delta = (adversarial.double() - original.double())[0]  # exact: both are float32
    levels = eight_bit_levels(rounded, original)
    metrics = {
        "success": success,
        "success_after_quantisation": success_8bit,
        "steps": updates,
        "linf": float(delta.abs().max()),
        "l2": float(delta.norm()),
        "linf_8bit": levels / LEVELS,
        "linf_levels": levels,  # the 8-bit picture's largest change, in whole levels of 255
        "eps": eps,
        "radius": radius,
        "original_class": {"index": source, "label": names[0]},
        # p(original class) and p(target), before (on the original) and after (on the result)
        "original_prob": float(start_probs[source]),
        "original_prob_after": float(final_probs[source]),
        "target_prob_before": float(start_probs[index]),
        "target_prob": float(final_probs[index]),
        "target_prob_8bit": float(torch.softmax(rounded_logits[0].double(), dim=0)[index]),
        "lead": lead,  # the target's logit minus the best other one, on the result
        "top1": model.labels[int(final_probs.argmax())],
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "lr": lr,
        "input_size": [int(original.shape[-1]), int(original.shape[-2])],
    }
    if success and success_8bit:
        verdict = f"fooled in {updates} steps: now '{metrics['top1']}'"
    elif success:
        verdict = f"fooled in {updates} steps, but its 8-bit rounding is not: raise --steps or --confidence"
    else:
        verdict = f"NOT fooled after {updates} steps (top-1 '{metrics['top1']}'): raise --eps or --steps"
    note = (f"{verdict}; L-inf {metrics['linf'] * LEVELS:.3g}/255 (eps {eps * LEVELS:.4g}/255), "
            f"perturbation shown magnified x{1 / (2 * eps):.0f}")
    mosaic = _mosaic(original, adversarial, eps, names, (start_probs[source], start_probs[index]),
                     (final_probs[source], final_probs[index]))
    return Result(display=Picture(rgb=mosaic, note=note), array=adversarial[0].permute(1, 2, 0).cpu().numpy(),
                  metrics=metrics, target=goal, frames=recorder.finish(mosaic))


class SignStep:
    """Projected gradient descent's update, one step of the loop each.

    Step k measures the picture after k updates (step 0: the original), and moves it
    unless the target is reached, after its 8-bit rounding too, or the budget is spent.
    """

    def __init__(self, model, original: torch.Tensor, target: int, loss: str, confidence: float, lr: float,
                 steps: int, bounds: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.model, self.target, self.loss, self.confidence = model, target, loss, confidence
        self.lr, self.steps, self.bounds = lr, steps, bounds
        self.adversarial = original.clone()
        self.probs: torch.Tensor | None = None  # p of every class for the picture last measured
        self.lead = 0.0

    def step(self, number: int) -> Step:
        measured = self.adversarial
        pixels = measured.detach().requires_grad_(True)
        logits = _logits(self.model, pixels)
        objective = _loss(logits, self.target, self.loss, self.confidence)
        self.lead = target_lead(logits, self.target)
        reached = self.lead > self.confidence and _lead_after_rounding(self.model, measured, self.target) > 0
        self.probs = torch.softmax(logits.detach()[0].double(), dim=0)
        if not reached and number < self.steps:
            gradient, = torch.autograd.grad(objective, pixels)
            low, high = self.bounds
            with torch.no_grad():
                self.adversarial = torch.minimum(torch.maximum(measured - self.lr * gradient.sign(), low), high)
        return Step(loss=float(objective.detach()), picture=measured, reached=reached,
                    metrics={"target_prob": float(self.probs[self.target]), "lead": self.lead})


def _lead_after_rounding(model, unit: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return target_lead(_logits(model, quantise(unit)), target)


def _percent(p) -> str:
    p = 100 * float(p)
    return f"{p:.0f}%" if p >= 9.95 else f"{p:.1f}%"


def _short(label: str) -> str:
    return label.split(",")[0].strip()


def _mosaic(original, adversarial, eps, names, before, after) -> np.ndarray:
    """original | perturbation magnified | result, with p(source) / p(target) under each."""
    magnified = ((adversarial - original) / eps * 0.5 + 0.5).clamp(0, 1)  # -eps black, 0 gray, +eps white
    tiles = [
        Tile(Image.fromarray(unit_tensor_to_rgb(original)), caption=f"original: {_percent(before[0])} / {_percent(before[1])}"),
        Tile(Image.fromarray(unit_tensor_to_rgb(magnified)), caption=f"perturbation x{1 / (2 * eps):.0f}"),
        Tile(Image.fromarray(unit_tensor_to_rgb(adversarial)), caption=f"result: {_percent(after[0])} / {_percent(after[1])}"),
    ]
    header = f"p({_short(names[0])}) / p({_short(names[1])})"
    rgb, _regions = render_gallery([(header, tiles)], tile=max(original.shape[-2:]))
    return rgb


SPEC = MethodSpec(
    id="adversarial",
    title="Adversarial image",
    summary="Change the image imperceptibly (each pixel by at most eps) until the network calls it the target class.",
    params=(
        Param("target", "target", LEAST_LIKELY, "the class the image should be mistaken for: an index, a label, or "
              f"{LEAST_LIKELY} (the class the network finds least likely for this image)"),
        Param("eps", "float", DEFAULT_EPS, "largest change of any pixel, on the 0..1 scale (2/255 by default)",
              above=0.0, maximum=1.0),
        Param("steps", "int", 50, "most gradient steps; stops as soon as the target is the top-1", minimum=1, maximum=10000),
        Param("lr", "float", 0.0, "change of each pixel per step, on the 0..1 scale (0: eps / 4)", minimum=0.0,
              maximum=1.0, special="eps / 4"),
        # A logit lead of 1000 is p = 1 - e^-1000: beyond any float.
        Param("confidence", "float", 0.0, "keep going until the target's logit leads the runner-up by this much",
              minimum=0.0, maximum=1000.0),
        Param("loss", "choice", "ce", "ce: -log p(target); margin: best other logit minus the target's (Carlini & Wagner)",
              choices=LOSSES),
    ),
    run=run,
    streams_frames=True,
)
