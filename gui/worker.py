"""The engine thread: one QThread runs jobs one at a time and reports through signals.

Jobs are callables ``job(workbench, handle)`` submitted from the UI thread; the
``JobHandle`` carries the cancel token and a ``report(fraction, message)`` callback for
work that is not a generator (a weights download). A job that
returns a generator is driven event by event (a method: progress, frames, result); one
that returns a value is finished at once (open an image, load a model). The engine, and
with it torch, is imported on this thread when it starts, so the window is on screen
before the heavy imports begin.

Frames are never queued: the newest replaces the one before it, and ``frame_ready`` is
emitted only when the window has taken the previous one. A slow canvas therefore sees
fewer frames, never an ever-growing backlog. Cancel is a flag the job polls between
steps; a cancelled job emits ``cancelled`` and never a result.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from PySide6.QtCore import QThread, Signal

# engine.core.jobs and engine.core.errors need only numpy: cheap enough for the UI thread.
from engine.core.errors import ConvScopeError, JobCancelled
from engine.core.jobs import CancelToken, Frame, Progress

log = logging.getLogger("convscope")


@dataclass
class _Request:
    job_id: int
    owner: str
    fn: Callable
    cancel: CancelToken
    description: str = ""


class JobHandle:
    """What a job gets besides the workbench: its cancel token and a progress reporter."""

    def __init__(self, worker: "EngineWorker", job_id: int, cancel: CancelToken) -> None:
        self._worker = worker
        self.job_id = job_id
        self.cancel = cancel

    def report(self, fraction: float, message: str = "") -> None:
        self.cancel.check()
        self._worker.progress.emit(self.job_id, fraction, message)


@dataclass
class _Running:
    request: _Request
    latest_frame: Any = None
    frame_pending: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class EngineWorker(QThread):
    engine_ready = Signal(object)  # the Workbench, once torch and the engine are imported
    engine_failed = Signal(str)
    job_started = Signal(int, str, str)  # id, owner, description
    progress = Signal(int, float, str)
    frame_ready = Signal(int)
    job_finished = Signal(int, str, object)  # id, owner, result
    job_failed = Signal(int, str, str, str)  # id, owner, message, error kind (exception class name)
    job_cancelled = Signal(int, str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Request] = {}
        self._running: _Running | None = None
        self._cancel_type = None
        self.workbench = None

    # -- called from the UI thread --------------------------------------------------
    def submit(self, fn: Callable, owner: str, description: str = "", supersede: bool = True) -> int:
        """Queue a job; an earlier job of the same owner is cancelled first."""
        if supersede:
            self.cancel_owner(owner)
        request = _Request(next(self._ids), owner, fn, CancelToken(), description)
        with self._lock:
            self._pending[request.job_id] = request
        self._queue.put(request)
        return request.job_id

    def cancel_owner(self, owner: str) -> None:
        with self._lock:
            targets = [r for r in self._pending.values() if r.owner == owner]
        for request in targets:
            request.cancel.cancel()

    def cancel_all(self) -> None:
        with self._lock:
            targets = list(self._pending.values())
        for request in targets:
            request.cancel.cancel()

    def is_busy(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def take_frame(self, job_id: int):
        running = self._running
        if running is None or running.request.job_id != job_id:
            return None
        with running.lock:
            frame, running.latest_frame, running.frame_pending = running.latest_frame, None, False
        return frame

    def stop(self) -> None:
        self.cancel_all()
        self._queue.put(None)
        self.wait(5000)

    # -- the engine thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            from engine.app.session import Workbench

            self.workbench = Workbench()
        except Exception as exc:  # the engine could not even import: say so and stop
            log.error("engine failed to start:\n%s", traceback.format_exc())
            self.engine_failed.emit(f"The engine could not start: {type(exc).__name__}: {exc}")
            return
        self.engine_ready.emit(self.workbench)
        while True:
            request = self._queue.get()
            if request is None:
                return
            self._execute(request)

    def _execute(self, request: _Request) -> None:
        job_id, owner = request.job_id, request.owner
        running = _Running(request)
        self._running = running
        try:
            signal, args = self._outcome(request, running)
        finally:
            # Leave the pending set before the last signal goes out, so a slot that asks
            # is_busy() on receiving it already sees this job as over.
            with self._lock:
                self._pending.pop(job_id, None)
            self._running = None
        signal.emit(job_id, owner, *args)

    def _outcome(self, request: _Request, running: _Running) -> tuple[Any, tuple]:
        """Run one job; return the terminal signal and its arguments after (id, owner)."""
        from engine.core.device import OUT_OF_MEMORY_MESSAGE, is_out_of_memory

        job_id, owner = request.job_id, request.owner
        try:
            if request.cancel.cancelled:
                raise JobCancelled()
            self.job_started.emit(job_id, owner, request.description)
            outcome = request.fn(self.workbench, JobHandle(self, job_id, request.cancel))
            if isinstance(outcome, types.GeneratorType):
                while True:
                    request.cancel.check()
                    try:
                        event = next(outcome)
                    except StopIteration as stop:
                        outcome = stop.value
                        break
                    if isinstance(event, Frame):
                        with running.lock:
                            running.latest_frame = event
                            notify = not running.frame_pending
                            running.frame_pending = True
                        if notify:
                            self.frame_ready.emit(job_id)
                    elif isinstance(event, Progress):
                        self.progress.emit(job_id, event.fraction, event.message)
            request.cancel.check()
            return self.job_finished, (outcome,)
        except JobCancelled:
            return self.job_cancelled, ()
        except ConvScopeError as exc:
            return self.job_failed, (str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - the window must survive any engine failure
            if is_out_of_memory(exc):
                return self.job_failed, (OUT_OF_MEMORY_MESSAGE, "OutOfMemory")
            log.error("job %s (%s) failed:\n%s", job_id, owner, traceback.format_exc())
            return self.job_failed, (f"{request.description or owner} failed: {type(exc).__name__}: {exc}",
                                     type(exc).__name__)
