"""How long a run will take: words for a duration, and an ETA that follows the recent pace.

``Eta`` is fed the progress events a job already yields (fraction done, at a time) and says
how long is left from an exponentially weighted pace: the time and the progress between
events are each averaged with weight ``ALPHA`` on the newest, so when the machine slows
down (other work on the cores) the estimate catches up within a few events instead of
keeping the pace of the run's first seconds. Nothing here imports torch or Qt: the
window's status bar and the tests use it as it is.
"""

from __future__ import annotations

import math
import time

ALPHA = 0.4  # weight of the newest interval: after 5 events at a new pace, 92% of the way there
LONG_RUN_S = 20.0  # a run expected to take longer than this is announced beforehand


def duration_text(seconds: float) -> str:
    """'about 40 s', 'about 2 min', 'about 1 h 10 min': rounded as a person would say it."""
    if not math.isfinite(seconds) or seconds < 0:
        return ""
    if seconds < 10:
        return f"about {max(1, round(seconds))} s"
    if seconds < 90:
        return f"about {int(round(seconds / 5.0) * 5)} s"
    minutes = seconds / 60.0
    if minutes < 60:
        return f"about {round(minutes)} min"
    hours, rest = divmod(round(minutes), 60)
    return f"about {hours} h {rest} min" if rest else f"about {hours} h"


class Eta:
    """Seconds left of one run, from its progress events.

    ``update(fraction, now)`` for each event (fraction in 0..1; a negative one, "amount
    unknown", is ignored); ``seconds_left(now)`` is None until two events have shown a
    pace. ``prior``: the estimate made before the run, used until then.
    """

    def __init__(self, start: float | None = None, prior: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.prior = prior
        self._last_time = self.start
        self._last_fraction = 0.0
        self._dt: float | None = None  # weighted seconds between events
        self._df: float | None = None  # weighted progress between events
        self.fraction = 0.0

    def update(self, fraction: float, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if fraction < 0 or not math.isfinite(fraction):
            return
        fraction = min(fraction, 1.0)
        df, dt = fraction - self._last_fraction, now - self._last_time
        if df <= 0:
            # No progress (a message only, or a sub-job restarting its count): the pace is
            # unchanged, but the time spent waiting counts towards the next step.
            return
        if self._dt is None:
            self._dt, self._df = dt, df
        else:
            self._dt = ALPHA * dt + (1 - ALPHA) * self._dt
            self._df = ALPHA * df + (1 - ALPHA) * self._df
        self._last_time, self._last_fraction, self.fraction = now, fraction, fraction

    def seconds_left(self, now: float | None = None) -> float | None:
        now = time.perf_counter() if now is None else now
        if self._dt is None or self._df is None or self._df <= 0:
            if self.prior is None:
                return None
            return max(0.0, self.prior - (now - self.start))
        seconds_per_unit = self._dt / self._df
        waited = now - self._last_time
        # Waiting longer than the pace predicts for the next event is news too: the next step
        # is slow, so the remaining ones are assumed as slow.
        if waited > self._dt:
            seconds_per_unit = max(seconds_per_unit, waited / self._df)
        return max(0.0, (1.0 - self.fraction) * seconds_per_unit - waited)

    def elapsed(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.start

    def text(self, now: float | None = None) -> str:
        """'about 40 s left', or '' while nothing is known."""
        left = self.seconds_left(now)
        return "" if left is None else f"{duration_text(left)} left"
