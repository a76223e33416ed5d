"""The one optimisation loop: the steps of class-viz, inversion, adversarial, dream, texture and style.

Every one of these optimises a picture, and Lucent's ``optvis/render.py`` shows how they
share one loop with the parts supplied. What differs between them is the update, a small
*stepper* passed in: Adam on a parameterised picture with transforms and projections
(``engine.optvis.optimise``), one L-BFGS closure or Adam step on pixels
(``engine.style.perceptual.PixelDescent``), a projected sign step (adversarial), a
normalised ascent step over tiles and octaves (dream). The loop owns the rest, once:

- the step count, and the stop a stepper reports when its goal is reached;
- a cancel check before every step, so a cancelled job raises and returns nothing;
- one ``Frame`` per step, a ``Picture`` built by ``show`` (rebuilt every ``every`` steps),
  each drawn by the one renderer (``engine.view.render``) and offered to a
  ``FrameRecorder`` for the animated export, so the animation holds what the canvas showed;
- determinate ``Progress`` within a span of the job's bar, for jobs that run several
  loops (inversion's strip, texture's);
- the history: each step's loss, the first and last step's terms;
- one message for a loss that is not finite;
- with ``keep_best``, the lowest-loss state seen is what the run leaves.

fast-style-train trains a network rather than a picture, but its steps stream, cancel,
record and report the same way, so it runs its training step through this loop too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Protocol

from engine.core.errors import MethodInputError
from engine.core.jobs import CancelToken, Frame, Progress
from engine.view.display import Picture
from engine.view.render import render

if TYPE_CHECKING:
    from engine.view.animation import FrameRecorder


@dataclass
class Step:
    """What one step reports to the loop."""

    loss: float  # the total loss the step measured
    terms: dict[str, float] = field(default_factory=dict)  # the loss's parts by name, for the history and the frame
    picture: Any = None  # what ``show`` makes the frame's picture from
    metrics: dict = field(default_factory=dict)  # more numbers for the frame (an octave, a probability)
    reached: bool = False  # the stepper's goal is met: the loop ends after this step


@dataclass
class Trace:
    """What a run of the loop leaves: the loss history and where it ended."""

    losses: list[float]  # the total loss at each step
    first: dict[str, float]  # the first step's terms
    last: dict[str, float]  # the last step's terms; with keep_best, those of the state kept
    last_loss: float | None  # the last step's loss; with keep_best, that of the state kept
    step: int | None  # the number of the last step run (None: no step ran)
    reached: bool  # a step reported its goal reached


class KeepsBest(Protocol):
    """A stepper that can save and put back its state, for ``keep_best``.

    Without a line search L-BFGS can end on a worse picture than one it passed; the loop
    snapshots the state before each step (the state that step's loss measures), measures
    the state the last step left, and restores the lowest-loss one.
    """

    def snapshot(self) -> Any: ...

    def measure(self) -> Step: ...

    def restore(self, state: Any) -> None: ...

    def restart(self) -> None: ...  # forget what the optimiser learnt on the way (L-BFGS's curvature pairs)


# A loss this many times the lowest seen, for this many steps in a row, means the optimiser
# has left the basin: L-BFGS without a line search, its steps projected back into 0..1, can
# jump away and then stall there with curvature pairs that no longer describe the loss
# (measured: style's default run fell from 1274 to 55 by step 71, jumped to 1513 at step 81
# and stayed at 1625 to the end). The loop then puts back the lowest-loss state and
# restarts the optimiser from it. A rise for a step or three is L-BFGS exploring, and
# usually followed by a faster fall: a tiny texture's run rose to 4x at its third step and
# to 35x at its eighth, and ended at 1/160 of its start; restarted at once it ended at 0.97.
RESTART_RISE = 1.5
RESTART_AFTER = 5


Run = Generator["Frame | Progress", None, Trace]  # what the loop is: events, then the trace


def require_finite(loss: float, step: int) -> None:
    """The one message for a diverged optimisation: its step size is almost always the cause."""
    if not math.isfinite(loss):
        raise MethodInputError(f"the loss became {loss} at step {step}; try a lower --lr")


def optimisation_loop(step: Callable[[int], Step], steps: int, *, show: Callable[[int, Step], Picture],
                      cancel: CancelToken | None = None, first: int = 1, offset: int = 0, every: int = 1,
                      showing: Picture | None = None, recorder: "FrameRecorder | None" = None,
                      span: tuple[float, float] = (0.0, 1.0), describe: Callable[[int, Step], str] | None = None,
                      keep_best: KeepsBest | None = None) -> Run:
    """Run ``step(k)`` for k = ``first`` .. ``steps``, or until a step reports ``reached``.

    A generator of Frame and Progress events returning a ``Trace``:

    - ``show(k, report)`` makes the frame's Picture; it runs every ``every`` steps and at
      the last (a training's preview costs a forward), the frames between carrying the
      newest metrics with the last picture, ``showing`` until the first is made. Each
      picture made (and ``showing``) is offered to ``recorder``.
    - Frames are numbered ``offset + k`` and carry ``{"loss", **terms, **metrics}``.
    - Progress after step k is k / ``steps`` of ``span``, with ``describe(k, report)``
      (default "step k/steps") as its message. ``first`` is 0 where step 0 only measures
      the start, and one past the steps already done where a training resumes.
    - ``keep_best``: leave the lowest-loss state seen (see ``KeepsBest``), and go back to
      it, restarting the optimiser, when the loss stays past ``RESTART_RISE`` times it for
      ``RESTART_AFTER`` steps.
    """
    cancel = cancel or CancelToken()
    describe = describe or (lambda k, _report: f"step {k}/{steps}")
    start, end = span
    if recorder is not None and showing is not None:
        recorder.add(render(showing))
    losses: list[float] = []
    first_terms: dict[str, float] = {}
    report: Step | None = None
    best_loss, best = math.inf, None
    risen = 0  # steps in a row with a loss past RESTART_RISE times the best
    number = None
    for number in range(first, steps + 1):
        cancel.check()
        state = keep_best.snapshot() if keep_best is not None else None
        report = step(number)
        require_finite(report.loss, number)
        if not losses:
            first_terms = dict(report.terms)
        losses.append(report.loss)
        if keep_best is not None and report.loss < best_loss:
            best_loss, best = report.loss, (state, dict(report.terms))
        if keep_best is not None and best is not None:
            risen = risen + 1 if report.loss > RESTART_RISE * best_loss else 0
            if risen == RESTART_AFTER:
                keep_best.restore(best[0])
                keep_best.restart()
                risen = 0
        if showing is None or number % every == 0 or number == steps:
            showing = show(number, report)
            if recorder is not None:
                recorder.add(render(showing))
        yield Frame(showing, step=offset + number, metrics={"loss": report.loss, **report.terms, **report.metrics})
        yield Progress(start + (end - start) * number / steps, describe(number, report))
        if report.reached:
            break
    last = dict(report.terms) if report is not None else {}
    last_loss = report.loss if report is not None else None
    if keep_best is not None and best is not None:
        final = keep_best.measure()
        last, last_loss = dict(final.terms), final.loss
        if best_loss < final.loss:
            keep_best.restore(best[0])
            last, last_loss = best[1], best_loss
    return Trace(losses=losses, first=first_terms, last=last, last_loss=last_loss, step=number if report else None,
                 reached=bool(report and report.reached))
