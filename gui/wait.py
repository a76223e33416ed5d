"""Wait, for a script driving the window (the walk, the screenshots, the bench), until a
condition holds: an event loop that blocks between events, as ``app.exec()`` does.

A loop of ``processEvents()`` would keep the UI thread busy, on a core and on the GIL
that the engine thread needs: under one, class-viz took 34 s in the window against 7 s
from the command line.
"""

from __future__ import annotations

import time
from typing import Callable

from PySide6.QtCore import QEventLoop, QTimer

POLL_MS = 20


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Run the event loop until ``condition()`` is true or ``seconds`` have passed; the
    condition's last value."""
    if condition():
        return True
    loop = QEventLoop()
    deadline = time.monotonic() + seconds
    poll = QTimer(interval=POLL_MS)
    poll.timeout.connect(lambda: (condition() or time.monotonic() >= deadline) and loop.quit())
    poll.start()
    loop.exec()
    poll.stop()
    return condition()
