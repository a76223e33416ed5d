"""The shape of a job: a generator of events that returns a result.

A method is a generator function. While it works it yields ``Progress`` and ``Frame``
events; when it is done it *returns* its ``Result`` (delivered as ``StopIteration.value``).
Between steps it calls ``cancel.check()``, which raises ``JobCancelled``: a cancelled job
therefore never returns a result, so nobody can mistake half a run for a finished one.

The GUI worker and the CLI both drive jobs through ``drive``; only what they do with
the events differs. Nothing here imports torch or Qt, so the GUI can use these types on
its own thread without paying for the heavy imports.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Optional

import numpy as np

from engine.core.errors import JobCancelled

if TYPE_CHECKING:
    from engine.view.display import Display


@dataclass
class Progress:
    fraction: float  # 0..1; negative when the amount of work is unknown
    message: str = ""


@dataclass
class Frame:
    """An intermediate picture of a running optimisation, ready to show."""

    display: "Display"
    step: int
    metrics: dict = field(default_factory=dict)


@dataclass
class Result:
    display: Display
    array: Optional[np.ndarray]  # the raw float result, for --save-array
    metrics: dict = field(default_factory=dict)
    layer: Optional[str] = None
    target: Optional[dict] = None  # {"index": int, "label": str}
    params: dict = field(default_factory=dict)
    # An optimisation's evolution (HxWx3 uint8 each, oldest first), for an animated export.
    frames: list[np.ndarray] = field(default_factory=list)


class CancelToken:
    """Thread-safe cancel flag, set by the GUI thread and polled by the job."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise JobCancelled()


Job = Generator[Any, None, Result]


def drive(
    job: Job,
    on_progress: Callable[[Progress], None] | None = None,
    on_frame: Callable[[Frame], None] | None = None,
) -> Result:
    """Run a job to completion, handing each event to its callback."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, Progress):
            if on_progress:
                on_progress(event)
        elif isinstance(event, Frame):
            if on_frame:
                on_frame(event)


def within(job: Job, start: float, end: float) -> Job:
    """Run a sub-job inside a larger one, mapping its progress to [start, end].

    Use as ``value = yield from within(sub_job, 0.0, 0.5)``; frames pass through.
    """
    try:
        while True:
            event = next(job)
            if isinstance(event, Progress) and event.fraction >= 0:
                event = Progress(start + (end - start) * event.fraction, event.message)
            yield event
    except StopIteration as stop:
        return stop.value


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
