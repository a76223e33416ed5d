"""The one optimisation loop's contract, proved once with steppers whose every number is known,
and a check that the optimisation methods run their steps through it."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core.errors import JobCancelled, MethodInputError
from engine.core.jobs import CancelToken, Frame, Progress, drive
from engine.optvis.loop import Step, optimisation_loop
from engine.optvis.objectives import penalty
from engine.optvis.optimise import optimise
from engine.optvis.parameterisation import PixelImage
from engine.view.animation import FrameRecorder
from engine.view.display import Picture

ROOT = Path(__file__).resolve().parents[1]


def picture(value: int) -> np.ndarray:
    """A 2 x 2 picture that says which step made it."""
    return np.full((2, 2, 3), value, np.uint8)


class Countdown:
    """A stepper whose loss at step k is ``losses[k - 1]``, counting its calls."""

    def __init__(self, losses, reached_at=None):
        self.losses, self.reached_at, self.calls = list(losses), reached_at, []

    def step(self, number):
        self.calls.append(number)
        return Step(loss=self.losses[number - 1], terms={"half": self.losses[number - 1] / 2}, picture=number,
                    metrics={"extra": -number}, reached=number == self.reached_at)


def show(number, step):
    return Picture(rgb=picture(step.picture))


def events(job):
    collected = []
    trace = drive(job, on_progress=collected.append, on_frame=collected.append)
    return trace, collected


def test_frames_and_progress_alternate_in_order_and_progress_rises_within_its_span():
    stepper = Countdown([5.0, 4.0, 3.0, 2.0])
    trace, seen = events(optimisation_loop(stepper.step, 4, show=show, span=(0.25, 0.75), offset=10,
                                           describe=lambda number, step: f"k={number} loss={step.loss}"))
    assert [type(event) for event in seen] == [Frame, Progress] * 4
    frames, progress = seen[0::2], seen[1::2]
    assert [frame.step for frame in frames] == [11, 12, 13, 14]  # numbered from the offset
    assert [int(frame.display.rgb[0, 0, 0]) for frame in frames] == [1, 2, 3, 4]
    assert frames[0].metrics == {"loss": 5.0, "half": 2.5, "extra": -1}
    assert [p.fraction for p in progress] == pytest.approx([0.375, 0.5, 0.625, 0.75])
    assert [p.message for p in progress] == ["k=1 loss=5.0", "k=2 loss=4.0", "k=3 loss=3.0", "k=4 loss=2.0"]
    # The history: every loss, the first and last step's terms.
    assert trace.losses == [5.0, 4.0, 3.0, 2.0] and trace.first == {"half": 2.5} and trace.last == {"half": 1.0}
    assert trace.last_loss == 2.0 and trace.step == 4 and trace.reached is False


def test_cancel_between_steps_raises_and_returns_nothing():
    cancel = CancelToken()
    stepper = Countdown([1.0] * 10)
    job = optimisation_loop(stepper.step, 10, show=show, cancel=cancel)
    frames = []
    with pytest.raises(JobCancelled):
        for event in job:
            if isinstance(event, Frame):
                frames.append(event)
                if len(frames) == 2:
                    cancel.cancel()
    # Step 2's frame and progress went out; step 3 never started.
    assert stepper.calls == [1, 2] and len(frames) == 2


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_loss_that_is_not_finite_is_the_one_message_naming_the_step_size(bad):
    stepper = Countdown([3.0, 2.0, bad, 1.0])
    frames = []
    with pytest.raises(MethodInputError) as error:
        drive(optimisation_loop(stepper.step, 4, show=show), on_frame=frames.append)
    assert str(error.value) == f"the loss became {bad} at step 3; try a lower --lr"
    assert len(frames) == 2  # the diverged step is not shown


def test_a_picture_optimisation_that_diverges_says_so_in_the_same_words(tiny_model):
    poison = penalty("poison", lambda x: x.sum() * float("nan"))
    job = optimise(tiny_model, PixelImage.random((1, 3, 16, 16), torch.Generator().manual_seed(0)), poison, steps=5,
                   lr=0.1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MethodInputError, match=r"^the loss became nan at step 1; try a lower --lr$"):
        drive(job)


def test_the_loop_ends_after_the_step_that_reaches_its_goal():
    stepper = Countdown([4.0, 3.0, 2.0, 1.0, 0.5, 0.25], reached_at=3)
    trace, seen = events(optimisation_loop(stepper.step, 6, show=show))
    assert stepper.calls == [1, 2, 3] and trace.step == 3 and trace.reached is True
    assert [e.step for e in seen if isinstance(e, Frame)] == [1, 2, 3]
    assert seen[-1].fraction == pytest.approx(0.5)  # three of six steps' worth


def test_step_0_measures_the_start_and_a_resumed_run_continues_the_count():
    calls = []

    def step(number):
        calls.append(number)
        return Step(loss=float(number), picture=number)

    trace, seen = events(optimisation_loop(step, 3, first=0, show=show))
    assert calls == [0, 1, 2, 3] and [e.step for e in seen if isinstance(e, Frame)] == [0, 1, 2, 3]
    assert [e.fraction for e in seen if isinstance(e, Progress)] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    calls.clear()
    trace, seen = events(optimisation_loop(step, 8, first=6, show=show))
    assert calls == [6, 7, 8] and [e.fraction for e in seen if isinstance(e, Progress)] == pytest.approx([0.75, 0.875, 1])
    # A run already at its end runs no step and reports no history.
    trace, seen = events(optimisation_loop(step, 5, first=6, show=show))
    assert seen == [] and trace.step is None and trace.losses == [] and trace.last_loss is None


class Valley:
    """A stepper on one number whose loss is its square: the steps move it by ``moves``."""

    def __init__(self, start, moves):
        self.value, self.moves, self.restored = start, list(moves), []

    def step(self, number):
        loss = self.value ** 2  # the loss of the state the step starts from
        self.value += self.moves[number - 1]
        return Step(loss=loss, terms={"square": loss}, picture=number)

    def snapshot(self):
        return self.value

    def measure(self):
        return Step(loss=self.value ** 2, terms={"square": self.value ** 2})

    def restore(self, state):
        self.restored.append(state)
        self.value = state


def test_keep_best_leaves_the_lowest_loss_state_seen():
    # 3 -> 1 -> 0.5 -> 4: the states measured are 3, 1, 0.5 and the state left is 4.
    valley = Valley(3.0, [-2.0, -0.5, 3.5])
    trace = drive(optimisation_loop(valley.step, 3, show=show, keep_best=valley))
    assert valley.restored == [0.5] and valley.value == 0.5
    assert trace.last_loss == 0.25 and trace.last == {"square": 0.25}
    assert trace.losses == [9.0, 1.0, 0.25]  # the history is what the steps measured
    # When the state the last step left is the best, it stays.
    valley = Valley(3.0, [-1.0, -1.0, -1.0])
    trace = drive(optimisation_loop(valley.step, 3, show=show, keep_best=valley))
    assert valley.restored == [] and valley.value == 0.0 and trace.last_loss == 0.0


def test_the_recorder_gets_each_picture_shown_and_frames_between_carry_the_last():
    shown = []

    def counting_show(number, step):
        shown.append(number)
        return Picture(rgb=picture(step.picture))

    recorder = FrameRecorder()
    stepper = Countdown([float(10 - k) for k in range(7)])
    trace, seen = events(optimisation_loop(stepper.step, 7, show=counting_show, every=3, recorder=recorder,
                                           showing=Picture(rgb=picture(0))))
    assert shown == [3, 6, 7]  # every third step and the last
    assert [int(f[0, 0, 0]) for f in recorder.frames] == [0, 3, 6, 7]  # the start, then each picture shown
    frames = [e for e in seen if isinstance(e, Frame)]
    assert [int(f.display.rgb[0, 0, 0]) for f in frames] == [0, 0, 3, 3, 3, 6, 7]
    assert [f.metrics["loss"] for f in frames] == [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0]  # every step's numbers
    # With every step shown, the recorder holds each frame's picture.
    recorder = FrameRecorder()
    _, seen = events(optimisation_loop(Countdown([1.0] * 4).step, 4, show=show, recorder=recorder))
    assert [int(f[0, 0, 0]) for f in recorder.frames] == [1, 2, 3, 4]


# -- the methods go through it -------------------------------------------------------------
OPTIMISATION_MODULES = ["engine/methods/class_viz.py", "engine/methods/inversion.py", "engine/methods/adversarial.py",
                        "engine/methods/dream.py", "engine/methods/texture.py", "engine/methods/style.py",
                        "engine/methods/fast_style_train.py", "engine/optvis/optimise.py", "engine/style/perceptual.py"]
# Efros & Leung grow a texture pixel by pixel and minimise nothing: a stream, not an optimisation.
NOT_OPTIMISATIONS = {("engine/methods/texture.py", "_classic")}


def _checks_cancel(node) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "check"
               and isinstance(n.func.value, (ast.Attribute, ast.Name))
               and getattr(n.func.value, "attr", getattr(n.func.value, "id", "")) == "cancel" for n in ast.walk(node))


def _builds_frames(node) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Frame" for n in ast.walk(node))


def _yields(node) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(node))


@pytest.mark.parametrize("path", OPTIMISATION_MODULES)
def test_no_optimisation_writes_its_own_streaming_loop(path):
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    own_loops = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or (path, function.name) in NOT_OPTIMISATIONS:
            continue
        if _builds_frames(function):
            own_loops.append(f"{function.name} builds Frames")
        for loop in ast.walk(function):
            if isinstance(loop, (ast.For, ast.While)) and _yields(loop) and _checks_cancel(loop):
                own_loops.append(f"{function.name}, line {loop.lineno}: a loop that checks cancel and yields")
    assert own_loops == [], f"{path} steps outside engine.optvis.loop: {own_loops}"
    if path.startswith("engine/methods/"):
        source = (ROOT / path).read_text(encoding="utf-8")
        assert "optimisation_loop(" in source or "optimise(" in source
