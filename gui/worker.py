"""The engine thread: one QThread runs jobs one at a time; each job reports through its handle.

``submit(fn, description)`` queues ``fn(session, job)`` and returns at once a ``JobHandle``,
a QObject of the UI thread carrying that one job's signals, in superqt's shape:
``started``, ``progress(fraction, message)``, ``frame(Frame)``, ``finished(result)``,
``failed(exception)`` and ``cancelled``; ``handle.cancel()`` asks the job to stop. The job
itself gets the same handle: ``job.token`` to pass on to the engine, and ``job.report``
for work that is not a generator (a weights download). A job that returns a generator is
driven event by event (a method: progress, frames, then its value); one that returns a
value is finished at once (open an image, load a model). The engine, and with it torch,
is imported on this thread when it starts, so the window is on screen before the heavy
imports begin; and the model is only ever touched from here.

Frames are never queued: the newest replaces the one before it, and the handle hands a
frame to the UI thread only once the previous one has been taken and at most five times a
second, so a slow canvas sees fewer frames, never an ever-growing backlog; progress
reports likewise, at most ten a second; the last of each is always shown before the end. A
cancelled job, or one superseded by a newer job (``submit(..., replaces=old)``), emits
``cancelled`` and never its result or a late frame, even if the engine had already
finished it.
"""

from __future__ import annotations

import logging
import queue
import threading
import traceback
import types
from dataclasses import dataclass
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal

# engine.core.jobs and engine.core.errors need only numpy: cheap enough for the UI thread.
from engine.core.errors import ConvScopeError, JobCancelled, in_field_words
from engine.core.jobs import CancelToken, Frame, Progress
from gui.pacing import Newest

log = logging.getLogger("convscope")

# At most five frames and ten progress reports a second reach the UI thread. Drawing a
# frame (the colours, the colour bar, the loss plot, the paint) takes 5-10 ms of a core the
# engine's arithmetic also wants, and a torch team on every core stalls whenever one of
# its threads is pushed off: occlusion's 55 frames in 5 s cost its run a sixth of its speed.
FRAME_INTERVAL_S = 0.2
PROGRESS_INTERVAL_S = 0.1


@dataclass
class _Finished:
    result: Any


@dataclass
class _Failed:
    error: BaseException


class _Cancelled:
    pass


class JobHandle(QObject):
    """One submitted job: its signals (emitted on the UI thread) and its cancel."""

    started = Signal()
    progress = Signal(float, str)  # fraction 0..1 (negative: unknown), message
    frame = Signal(object)  # the newest Frame
    finished = Signal(object)  # the job's value
    failed = Signal(object)  # the exception itself
    cancelled = Signal()

    # From the engine thread to this object; queued into the UI thread, where the public
    # signals above are emitted.
    _began = Signal()
    _ended = Signal(object)

    def __init__(self, worker: "EngineWorker", fn: Callable, description: str, background: bool = False) -> None:
        super().__init__()
        self.description = description
        self.background = background  # not announced on the worker's every-job signals
        self.token = CancelToken()
        self.done = False
        self._fn = fn
        self._worker = worker
        self._frames = Newest(self._deliver_frame, lambda: FRAME_INTERVAL_S)
        self._progress = Newest(lambda report: self._deliver_progress(*report), lambda: PROGRESS_INTERVAL_S)
        self._began.connect(self._on_began)
        self._ended.connect(self._on_ended)

    # -- the UI thread ---------------------------------------------------------------------
    def cancel(self) -> None:
        self.token.cancel()

    @property
    def cancel_requested(self) -> bool:
        return self.token.cancelled

    def _on_began(self) -> None:
        if not self.token.cancelled:
            self.started.emit()
            if not self.background:
                self._worker.job_started.emit(self)

    def _deliver_frame(self, frame: Frame) -> None:
        if not self.done and not self.token.cancelled:
            self.frame.emit(frame)

    def _deliver_progress(self, fraction: float, message: str) -> None:
        if not self.done and not self.token.cancelled:
            self.progress.emit(fraction, message)

    def _on_ended(self, outcome) -> None:
        # The last frame and progress report still waiting are shown before the end: the
        # result replaces the frame's picture, but its metrics end the loss plot's curves
        # (paced, the last step's frame is usually still waiting when the run ends).
        last_frame, last_report = self._frames.take(), self._progress.take()
        if last_frame is not None and not isinstance(outcome, _Cancelled):
            self._deliver_frame(last_frame)
        if last_report is not None:
            self._deliver_progress(*last_report)
        self.done = True
        self._worker._forget(self)  # so a slot asking is_busy() already sees this job as over
        announce = not self.background
        if self.token.cancelled or isinstance(outcome, _Cancelled):
            self.cancelled.emit()
            if announce:
                self._worker.job_cancelled.emit(self)
        elif isinstance(outcome, _Failed):
            self.failed.emit(outcome.error)
            if announce:
                self._worker.job_failed.emit(self, outcome.error)
        else:
            self.finished.emit(outcome.result)
            if announce:
                self._worker.job_finished.emit(self, outcome.result)

    # -- the engine thread -----------------------------------------------------------------
    def report(self, fraction: float, message: str = "") -> None:
        """Progress of work that is not a generator; raises JobCancelled once cancelled."""
        self.token.check()
        self._progress.offer((fraction, message))

    def _run(self, session) -> None:
        self._ended.emit(self._outcome(session))

    def _outcome(self, session):
        try:
            self.token.check()
            self._began.emit()
            value = self._fn(session, self)
            if isinstance(value, types.GeneratorType):
                value = self._drive(value)
            self.token.check()
            return _Finished(value)
        except JobCancelled:
            return _Cancelled()
        except Exception as error:  # noqa: BLE001 - the window must survive any engine failure
            if not isinstance(error, ConvScopeError) and not _is_out_of_memory(error):
                log.error("job %r failed:\n%s", self.description, traceback.format_exc())
            return _Failed(error)

    def _drive(self, job):
        while True:
            self.token.check()
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, Frame):
                self._frames.offer(event)
            elif isinstance(event, Progress):
                self._progress.offer((event.fraction, event.message))


class EngineWorker(QThread):
    engine_ready = Signal(object)  # the Session, once torch and the engine are imported
    engine_failed = Signal(str)
    # Every job's start and end, after its handle's own signal: for observers that watch
    # all jobs (a benchmark, a test); the window listens to the handles. Background jobs
    # (timing the machine for the estimates) are left out: nobody asked for them.
    job_started = Signal(object)  # handle
    job_finished = Signal(object, object)  # handle, result
    job_failed = Signal(object, object)  # handle, exception
    job_cancelled = Signal(object)  # handle

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._queue: queue.Queue[JobHandle | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[JobHandle] = []  # submitted, and their end not yet delivered
        self.session = None

    # -- called from the UI thread --------------------------------------------------
    def submit(self, fn: Callable, description: str = "", replaces: JobHandle | None = None,
               background: bool = False) -> JobHandle:
        """Queue ``fn(session, job)``; ``replaces``, an earlier job doing the same thing, is
        cancelled first (asking again replaces the job that was asked before);
        ``background``: work the user did not ask for, kept off the every-job signals."""
        if replaces is not None:
            replaces.cancel()
        handle = JobHandle(self, fn, description, background)
        with self._lock:
            self._pending.append(handle)
        self._queue.put(handle)
        return handle

    def cancel_all(self) -> None:
        with self._lock:
            targets = list(self._pending)
        for handle in targets:
            handle.cancel()

    def is_busy(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def stop(self) -> None:
        """Cancel every job and wait until the engine thread has ended. A method checks its
        cancel between steps, so the wait is one step long; a thread left running would be
        destroyed with the window while it still runs (Qt aborts on that)."""
        self.cancel_all()
        self._queue.put(None)
        self.wait()

    def _forget(self, handle: JobHandle) -> None:
        with self._lock:
            if handle in self._pending:
                self._pending.remove(handle)

    # -- the engine thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            from engine.app.session import Session

            self.session = Session()
        except Exception as exc:  # the engine could not even import: say so and stop
            log.error("engine failed to start:\n%s", traceback.format_exc())
            self.engine_failed.emit(f"The engine could not start: {type(exc).__name__}: {exc}")
            return
        self.engine_ready.emit(self.session)
        while True:
            handle = self._queue.get()
            if handle is None:
                return
            handle._run(self.session)


def describe_failure(error: BaseException, description: str) -> str:
    """A failed job's message for a person: the error's own words when it is one we
    raise for the user, a hint when memory ran out, else what failed and how."""
    if isinstance(error, ConvScopeError):
        return in_field_words(str(error))
    if _is_out_of_memory(error):
        from engine.core.device import OUT_OF_MEMORY_MESSAGE

        return OUT_OF_MEMORY_MESSAGE
    return f"{description or 'The job'} failed: {type(error).__name__}: {error}"


def _is_out_of_memory(error: BaseException) -> bool:
    from engine.core.device import is_out_of_memory  # imports torch: only after the engine started

    return is_out_of_memory(error)
