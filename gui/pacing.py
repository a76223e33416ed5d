"""Newest-value pacing: the one way a stream of updates reaches the screen at a bounded rate.

The engine thread's frames and progress reports (``gui.worker``) and the loss plot's
redraws (``gui.loss_plot``) each cost the UI thread milliseconds of a core the engine's
arithmetic also wants, so each is handed over at most every so often, the newest value
replacing any still waiting.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from PySide6.QtCore import QObject, QTimer, Signal


class Newest(QObject):
    """The newest of a stream of values (from the engine thread, or the UI thread's own),
    handed to ``deliver`` on the UI thread once the one before it has been taken and no
    sooner than ``interval()`` seconds after it: values in between are replaced, never
    queued."""

    _waiting = Signal()

    def __init__(self, deliver: Callable[[Any], None], interval: Callable[[], float]) -> None:
        super().__init__()
        self._deliver = deliver
        self._interval = interval
        self._lock = threading.Lock()
        self._value: Any = None
        self._pending = False
        self._delivered_at = -math.inf
        self._waiting.connect(self._on_waiting)

    def offer(self, value) -> None:  # any thread
        with self._lock:
            self._value = value
            notify = not self._pending
            self._pending = True
        if notify:
            self._waiting.emit()

    def take(self):
        """The value waiting, if any (None), no longer waiting."""
        with self._lock:
            value, self._value, self._pending = self._value, None, False
        return value

    def _on_waiting(self) -> None:
        wait = self._delivered_at + self._interval() - time.monotonic()
        if wait > 0:  # still pending, so offer() does not ask again: one timer per gap
            QTimer.singleShot(math.ceil(wait * 1000), self, self._on_waiting)
            return
        value = self.take()
        if value is not None:
            self._delivered_at = time.monotonic()
            self._deliver(value)

    def forget(self) -> None:
        """Drop the waiting value and start afresh: the next one offered goes at once."""
        self.take()
        self._delivered_at = -math.inf
