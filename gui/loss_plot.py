"""The live loss plot of an optimisation: every metric whose name says it is a loss.

Frames arrive at the canvas's pace (stale ones are dropped), so a curve has a point for
each frame shown, not for each step; the x axis is the step, so the shape stays true. The
curves are redrawn at most twice a second.
A term that has been 0 all along (a weight switched off) gets no curve. Losses span
decades, so the y axis turns logarithmic once the positive values span two of them and
none is negative; a 0 (a content loss at its start) is then left out of its curve.

The plot sits in a narrow, scrolling form, so it keeps out of the way: a lone curve is
named by the axis, several by a coloured key above the plot (a legend inside would cover
the curves); the axes show plain numbers (pyqtgraph's own "loss (x0.001)" rescaling
reads as a different quantity); and the wheel scrolls the form, as it does everywhere
else in it, instead of zooming the plot (which always shows the whole run).
"""

from __future__ import annotations

import html
import math

import pyqtgraph as pg

from gui.pacing import Newest

# Redrawing the plot (its curves and both axes' ticks and labels) takes the UI thread about
# 6 ms of a core the engine's arithmetic also wants; at every frame it cost a one-second
# DeepDream run a tenth of its speed.
REDRAW_INTERVAL_S = 0.5

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def loss_metrics(metrics: dict) -> dict[str, float]:
    """The finite numeric metrics named like a loss ("loss", "style_loss", "loss_tv", ...)."""
    return {name: float(value) for name, value in metrics.items()
            if "loss" in name and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value))}


class LossPlot(pg.PlotWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent, background="w")
        self.setMinimumHeight(140)
        self.setMaximumHeight(220)
        self.setLabel("bottom", "step")
        self.setLabel("left", "loss")
        for side in ("left", "bottom"):
            self.getPlotItem().getAxis(side).enableAutoSIPrefix(False)
        self.showGrid(x=True, y=True, alpha=0.3)
        self.getPlotItem().setMenuEnabled(False)
        self.setMouseEnabled(x=False, y=False)
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._log_y = False
        self._redraw = Newest(lambda _points: self.flush(), lambda: REDRAW_INTERVAL_S)

    def wheelEvent(self, event) -> None:  # noqa: N802 - Qt's name
        event.ignore()  # on to the scrolling form around the plot

    def reset(self) -> None:
        self._redraw.forget()
        for curve in self._curves.values():
            self.removeItem(curve)
        self.series.clear()
        self._curves.clear()
        self._name_curves()

    def _name_curves(self) -> None:
        """The left axis names a lone curve; several get a coloured key in the title row."""
        names = list(self._curves)
        self.setLabel("left", names[0] if len(names) == 1 else "loss")
        key = "&nbsp;&nbsp;".join(f"<span style='color:{_COLOURS[i % len(_COLOURS)]}'>━ {html.escape(name)}</span>"
                                  for i, name in enumerate(names)) if len(names) > 1 else None
        self.setTitle(key, size="9pt")

    def add(self, step: int, metrics: dict) -> bool:
        """Append a frame's losses; False when it had none (the plot is then not needed).
        The curves are redrawn at most every ``REDRAW_INTERVAL_S``, the newest points always
        within that time (``flush`` draws them at once)."""
        losses = loss_metrics(metrics)
        for name, value in losses.items():
            steps, values = self.series.setdefault(name, ([], []))
            steps.append(float(step))
            values.append(value)
            if name not in self._curves and any(values):
                colour = _COLOURS[len(self._curves) % len(_COLOURS)]
                self._curves[name] = self.plot([], [], pen=pg.mkPen(colour, width=2))
                self._name_curves()
        if losses:
            self._redraw.offer(True)  # drawn now, or once the interval since the last redraw is up
        return bool(self._curves)

    def flush(self) -> None:
        """Draw every point added so far."""
        self._redraw.take()  # drawn now: nothing left waiting
        shown = [value for name in self._curves for value in self.series[name][1]]
        positive = [value for value in shown if value > 0]
        log_y = bool(positive) and min(shown) >= 0 and max(positive) > 100 * min(positive)
        if log_y != self._log_y:  # pyqtgraph redraws both axes on every call, changed or not
            self._log_y = log_y
            self.setLogMode(x=False, y=log_y)
        for name, curve in self._curves.items():
            steps, values = self.series[name]
            if log_y:
                kept = [(s, v) for s, v in zip(steps, values) if v > 0]
                steps, values = [s for s, _ in kept], [v for _, v in kept]
            curve.setData(list(steps), list(values))
