"""The live loss plot: which terms get a curve, and when its y axis is logarithmic."""

from __future__ import annotations

from gui.loss_plot import LossPlot


def test_terms_that_stay_zero_get_no_curve_and_a_wide_range_goes_logarithmic(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.add(1, {"loss": 900.0, "style_loss": 900.0, "content_loss": 0.0, "tv_loss": 0.0, "steps": 1})
    plot.add(2, {"loss": 300.0, "style_loss": 299.0, "content_loss": 1.0, "tv_loss": 0.0})
    plot.add(3, {"loss": 5.0, "style_loss": 4.6, "content_loss": 0.4, "tv_loss": 0.0})
    assert set(plot._curves) == {"loss", "style_loss", "content_loss"}  # tv_loss was 0 throughout
    assert plot.getPlotItem().ctrl.logYCheck.isChecked()  # 0.4 .. 900: three decades
    steps, values = plot._curves["content_loss"].getOriginalDataset()
    assert list(steps) == [2.0, 3.0]  # its 0 at the start cannot sit on a log axis
    assert plot.series["content_loss"] == ([1.0, 2.0, 3.0], [0.0, 1.0, 0.4])  # but is kept


def test_a_narrow_or_signed_range_stays_linear_and_no_losses_means_no_plot(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    assert not plot.add(1, {"psnr": 20.0})
    plot.add(1, {"loss": 2.0})
    plot.add(2, {"loss": 1.5})
    assert not plot.getPlotItem().ctrl.logYCheck.isChecked()
    plot.add(3, {"loss": -400.0})
    assert not plot.getPlotItem().ctrl.logYCheck.isChecked()
