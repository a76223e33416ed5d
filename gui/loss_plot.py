"""The live loss plot of an optimisation: every metric whose name says it is a loss.

Frames arrive at the canvas's pace (stale ones are dropped), so a curve has a point for
each frame shown, not for each step; the x axis is the step, so the shape stays true.
Losses span decades, so the y axis is logarithmic whenever every value is positive.
"""

from __future__ import annotations

import math

import pyqtgraph as pg

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
        self.showGrid(x=True, y=True, alpha=0.3)
        self.addLegend(offset=(-10, 10))
        self.getPlotItem().setMenuEnabled(False)
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self._curves: dict[str, pg.PlotDataItem] = {}

    def reset(self) -> None:
        for curve in self._curves.values():
            self.removeItem(curve)
        legend = self.getPlotItem().legend
        if legend is not None:
            legend.clear()
        self.series.clear()
        self._curves.clear()

    def add(self, step: int, metrics: dict) -> bool:
        """Append a frame's losses; False when it had none (the plot is then not needed)."""
        losses = loss_metrics(metrics)
        for name, value in losses.items():
            steps, values = self.series.setdefault(name, ([], []))
            steps.append(float(step))
            values.append(value)
            if name not in self._curves:
                colour = _COLOURS[len(self._curves) % len(_COLOURS)]
                self._curves[name] = self.plot([], [], pen=pg.mkPen(colour, width=2), name=name)
        log_y = all(v > 0 for _, values in self.series.values() for v in values)
        self.setLogMode(x=False, y=log_y)
        for name in losses:
            self._curves[name].setData(*self.series[name])
        return bool(losses)
