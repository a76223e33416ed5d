"""The live loss plot: which terms get a curve, and when its y axis is logarithmic."""

from __future__ import annotations

from gui.loss_plot import LossPlot


def test_terms_that_stay_zero_get_no_curve_and_a_wide_range_goes_logarithmic(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.add(1, {"loss": 900.0, "style_loss": 900.0, "content_loss": 0.0, "tv_loss": 0.0, "steps": 1})
    plot.add(2, {"loss": 300.0, "style_loss": 299.0, "content_loss": 1.0, "tv_loss": 0.0})
    plot.add(3, {"loss": 5.0, "style_loss": 4.6, "content_loss": 0.4, "tv_loss": 0.0})
    plot.flush()
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
    plot.flush()
    assert not plot.getPlotItem().ctrl.logYCheck.isChecked()
    plot.add(3, {"loss": -400.0})
    plot.flush()
    assert not plot.getPlotItem().ctrl.logYCheck.isChecked()


def test_a_lone_curve_is_named_by_its_axis_and_several_by_a_key_above_the_plot(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    item = plot.getPlotItem()
    plot.add(1, {"loss": 2.0})
    assert item.legend is None  # nothing drawn over the curves
    assert "loss" in item.getAxis("left").labelText and not item.titleLabel.isVisible()
    plot.add(2, {"loss": 1.0, "style_loss": 0.5})
    key = item.titleLabel.text
    assert item.titleLabel.isVisible() and "loss" in key and "style_loss" in key
    # The key sits in the title row, above the view box where the curves are drawn.
    title, box = item.titleLabel.sceneBoundingRect(), item.getViewBox().sceneBoundingRect()
    assert title.bottom() <= box.top() + 1
    plot.reset()
    assert not item.titleLabel.isVisible()


def test_the_axes_show_plain_numbers_not_a_rescaled_unit(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 200)
    plot.show()
    for step, value in enumerate([0.004, 0.003, 0.0025, 0.002], start=1):
        plot.add(step, {"loss": value})
    plot.flush()
    qtbot.wait(50)
    left = plot.getPlotItem().getAxis("left")
    assert left.autoSIPrefixScale == 1.0
    assert "x0.001" not in left.labelString() and "(m" not in left.labelString()
    assert left.tickStrings([0.002, 0.003], 1.0, 0.001) == ["0.002", "0.003"]


def test_the_wheel_over_the_plot_is_left_to_the_form_around_it(qtbot):
    """The plot ignores the wheel, and Qt hands an ignored (real) wheel event on to the
    plot's parents: the scrolling form. A test's event is not "spontaneous", which Qt
    never propagates, so what is checked here is the plot's part: ignored, no zoom."""
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 200)
    plot.show()
    for step, value in enumerate([3.0, 2.0, 1.5], start=1):
        plot.add(step, {"loss": value})
    plot.flush()
    qtbot.wait(50)
    before = plot.getPlotItem().getViewBox().viewRange()
    target = plot.viewport()
    centre = QPointF(target.width() / 2, target.height() / 2)
    for delta in (-120, 120):
        wheel = QWheelEvent(centre, QPointF(target.mapToGlobal(centre.toPoint())), QPoint(0, 0), QPoint(0, delta),
                            Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(target, wheel)
        assert not wheel.isAccepted()
    qtbot.wait(20)
    assert plot.getPlotItem().getViewBox().viewRange() == before  # the plot did not zoom
    # Nor does a drag pan it: the plot always shows the whole run.
    assert plot.getPlotItem().getViewBox().state["mouseEnabled"] == [False, False]


def test_points_are_drawn_at_most_twice_a_second_and_the_newest_soon_after(qtbot):
    """Each redraw costs the UI thread milliseconds the engine wants: a burst of frames
    gets one redraw now and one for the rest, and flush draws at once."""
    from gui import loss_plot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.add(1, {"loss": 3.0})  # the first is drawn at once
    assert list(plot._curves["loss"].getOriginalDataset()[1]) == [3.0]
    for step in range(2, 6):
        plot.add(step, {"loss": 3.0 - step * 0.1})
    assert list(plot._curves["loss"].getOriginalDataset()[1]) == [3.0]  # not yet redrawn
    qtbot.waitUntil(lambda: len(plot._curves["loss"].getOriginalDataset()[1]) == 5,
                    timeout=int(loss_plot.REDRAW_INTERVAL_S * 1000) + 1000)
    plot.add(6, {"loss": 2.0})
    plot.flush()
    assert len(plot._curves["loss"].getOriginalDataset()[1]) == 6
