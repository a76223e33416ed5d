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

    def restart(self):
        self.restarts = getattr(self, "restarts", 0) + 1


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


def test_a_loss_that_stays_far_above_the_best_sends_the_run_back_there_and_restarts_the_optimiser():
    # 3 -> 1, then a jump to 4 that stays for five steps (loss 16, past 1.5 x the best 1):
    # back to 1, the optimiser restarted; then 1 -> 1.1 (1.21: a small rise) -> 0.5.
    valley = Valley(3.0, [-2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 99.0, 0.1, -0.6, 0.0])
    trace = drive(optimisation_loop(valley.step, 10, show=show, keep_best=valley))
    assert trace.losses == pytest.approx([9.0, 1.0] + [16.0] * 5 + [1.0, 1.21, 0.25])
    assert valley.restored[0] == 1.0 and valley.restarts == 1
    assert trace.last_loss == pytest.approx(0.25) and valley.value == pytest.approx(0.5)
    # A rise that comes back down within the patience is L-BFGS exploring: left alone.
    valley = Valley(3.0, [-2.0, 3.0, 0.0, -3.5, 0.0])
    trace = drive(optimisation_loop(valley.step, 5, show=show, keep_best=valley))
    assert trace.losses == pytest.approx([9.0, 1.0, 16.0, 16.0, 0.25]) and not hasattr(valley, "restarts")
