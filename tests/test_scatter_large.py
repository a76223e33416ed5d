"""The scatter of a very large embedding: a density image and a subsample on show, while
hover and click still reach every point; a small one still draws every point."""

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from engine.view.display import Scatter
from gui import scatter as scatter_module
from gui.scatter import ScatterView

COUNT = 300_000


@pytest.fixture(scope="module")
def many():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(COUNT, 2)).astype(np.float32) * [3.0, 1.0]
    return Scatter(xy, [f"/images/{i}.png" for i in range(COUNT)], [str(i % 5) for i in range(COUNT)], "many")


@pytest.fixture
def view(qtbot):
    widget = ScatterView()
    qtbot.addWidget(widget)
    widget.resize(900, 640)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def widget_point(view, x, y):
    """Where the view point (x, y) is on the plot's viewport, in its pixels."""
    box = view.plot.getPlotItem().getViewBox()
    return view.plot.mapFromScene(box.mapViewToScene(QPointF(float(x), float(y))))


def move_mouse(widget, where):
    """A real mouse-move event (QTest's moves without a button do not reach an offscreen view)."""
    local = QPointF(where)
    event = QMouseEvent(QMouseEvent.Type.MouseMove, local, QPointF(widget.mapToGlobal(where)), Qt.MouseButton.NoButton,
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def test_a_million_style_scatter_draws_a_density_and_picks_any_point(qtbot, view, many):
    view.show_points(many)
    assert view.large and len(view.shown) == scatter_module.SHOWN
    assert len(view.scatter.getData()[0]) == scatter_module.SHOWN
    assert view.density.isVisible() and view.density_counts.sum() == COUNT  # the fitted view holds every point
    # The point farthest out that is not drawn: hover and click must still find it.
    hidden = np.setdiff1d(np.arange(COUNT), view.shown)
    far = int(hidden[np.argmax(np.abs(many.xy[hidden, 0]))])
    x, y = many.xy[far]
    assert view.point_at(x, y) == far
    where = widget_point(view, x, y)
    move_mouse(view.plot.viewport(), where)
    qtbot.waitUntil(lambda: len(view.marker.getData()[0]) == 1)
    np.testing.assert_allclose(np.array(view.marker.getData()).ravel(), many.xy[far], rtol=1e-6)
    assert view.preview.isVisible()
    with qtbot.waitSignal(view.point_clicked) as clicked:
        qtbot.mouseClick(view.plot.viewport(), Qt.MouseButton.LeftButton, pos=where)
    assert clicked.args == [many.paths[far]]
    # Far from every point: nothing is picked.
    assert view.point_at(float(many.xy[:, 0].max()) * 3, 0.0) is None


def test_zooming_in_draws_every_point_where_few_are_left(qtbot, view, many):
    view.show_points(many)
    box = view.plot.getPlotItem().getViewBox()
    box.setRange(xRange=(5.0, 9.0), yRange=(-3.0, 3.0), padding=0)
    x, y = many.xy[:, 0], many.xy[:, 1]
    (left, right), (bottom, top) = box.viewRange()
    visible = np.flatnonzero((x >= left) & (x <= right) & (y >= bottom) & (y <= top))
    assert 0 < len(visible) < scatter_module.SHOWN
    qtbot.waitUntil(lambda: len(view.shown) == len(visible))  # redrawn once the range settles
    np.testing.assert_array_equal(view.shown, visible)
    assert view.density_counts.sum() == len(visible)


def test_a_small_scatter_draws_every_point_as_before(qtbot, view):
    rng = np.random.default_rng(1)
    xy = rng.normal(size=(500, 2))
    view.show_points(Scatter(xy, [f"/images/{i}.png" for i in range(500)], ["a", "b"] * 250, "few"))
    assert not view.large and not view.density.isVisible()
    drawn = np.stack(view.scatter.getData(), axis=1)
    np.testing.assert_array_equal(drawn, xy)
    with qtbot.waitSignal(view.point_clicked) as clicked:
        view._on_clicked(None, [view.scatter.points()[7]], None)
    assert clicked.args == ["/images/7.png"]
