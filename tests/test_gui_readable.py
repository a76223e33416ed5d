"""Results a person can read: numbers as they are typed, wrapped tooltips, a layout that
gives the picture the room, plots that keep out of the way."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from engine.core.errors import in_field_words
from engine.methods import METHODS
from engine.methods.params import Param
from gui.panels import panel_for
from gui.panels.method_panel import ExactDoubleSpinBox, float_step, plain_number

LABELS = [f"class {i}" for i in range(10)]


def _float_field(name: str, default: float, **limits) -> ExactDoubleSpinBox:
    from gui.panels.method_panel import EDITORS

    param = Param(name, "float", default, "help", **limits)
    field = EDITORS["float"].make(param, LABELS)
    EDITORS["float"].put(field, param, default)
    return field


@pytest.mark.parametrize("value, text", [(0.001, "0.001"), (95.0, "95"), (1000.0, "1000"), (0.0001, "0.0001"),
                                         (1e-5, "0.00001"), (0.1, "0.1"), (0.0, "0"), (2.5, "2.5")])
def test_a_float_field_shows_the_number_as_a_person_types_it(qtbot, value, text):
    field = _float_field("lr", value, minimum=0.0, maximum=10_000.0)
    qtbot.addWidget(field)
    assert field.text() == text
    assert field.value() == value


def test_a_typed_number_round_trips_and_so_does_an_exponent(qtbot):
    field = _float_field("lr", 0.001, minimum=0.0, maximum=10.0)
    qtbot.addWidget(field)
    field.show()
    for typed, expected, shown in [("0.00015", 0.00015, "0.00015"), ("1e-4", 0.0001, "0.0001"), ("2,5", 2.5, "2.5")]:
        field.lineEdit().selectAll()
        qtbot.keyClicks(field, typed)
        qtbot.keyClick(field, Qt.Key.Key_Return)
        assert field.value() == expected
        assert field.text() == shown
    field.lineEdit().selectAll()
    qtbot.keyClicks(field, "abc")  # letters are refused as they are typed: the number stays
    assert field.lineEdit().text() == "2.5" and field.value() == 2.5


def test_an_exact_value_is_given_back_while_the_field_shows_it_plainly(qtbot):
    field = _float_field("eps", 2 / 255, minimum=0.0, maximum=1.0)
    qtbot.addWidget(field)
    assert field.value() == 2 / 255
    assert float(field.text()) == pytest.approx(2 / 255, rel=1e-8)


@pytest.mark.parametrize("default, step", [(95.0, 1.0), (1000.0, 100.0), (0.001, 0.0001), (0.05, 0.001), (1.0, 0.1)])
def test_the_arrows_step_by_a_tenth_of_the_defaults_magnitude(qtbot, default, step):
    field = _float_field("x", default, minimum=0.0, maximum=100_000.0)
    qtbot.addWidget(field)
    assert field.singleStep() == pytest.approx(step)
    field.stepBy(1)
    assert field.value() == pytest.approx(default + step)
    assert field.text() == plain_number(round(default + step, 10))
    assert len(field.text()) <= len(plain_number(default)) + 2  # no float noise such as 95.00000000001


def test_a_zero_default_steps_by_its_scale():
    assert float_step(Param("decay", "float", 0.0, "h", minimum=0.0, maximum=1.0)) == 0.01
    assert float_step(Param("tv", "float", 0.0, "h", minimum=0.0, maximum=1e4)) == 0.1


@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
def test_no_float_field_shows_padding_zeros(qtbot, spec):
    panel = panel_for(spec, LABELS)
    qtbot.addWidget(panel)
    for param in spec.params:
        if param.kind == "float":
            text = panel.editors[param.name].text()
            if param.special and param.coerce(None) == param.minimum:
                assert text == in_field_words(param.special), (param.name, text)  # "eps / 4", not 0
                continue
            assert not (text.endswith("0") and "." in text), (param.name, text)
            assert float(text) == pytest.approx(float(param.coerce(None)), rel=1e-8, abs=1e-10), (param.name, text)


# -- the canvas: Fit shows all of every kind of result ---------------------------------------
def _displays():
    import numpy as np

    from engine.view.display import Bars, Gallery, MapOverPhoto, Picture, Region, ScalarMap, TileGrid

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 451, 3), dtype=np.uint8)
    values = rng.random((300, 451)).astype(np.float32)
    return {
        "picture": Picture(rgb=rgb),
        "scalar map": ScalarMap(values=values, colormap="inferno"),
        "map over photo": MapOverPhoto(photo=rgb, values=values[::10, ::10].copy()),
        "tile grid": TileGrid(tiles=ScalarMap(values=rng.random((8 * 17 - 1, 16 * 17 - 1)).astype(np.float32)),
                              shape=(8, 16), tile_size=(16, 16)),
        "gallery": Gallery(rgb=rng.integers(0, 255, (900, 1800, 3), dtype=np.uint8),
                           regions=[Region(left=4, top=4, right=100, bottom=100, path="a.png")]),
        "bars": Bars(values=rng.normal(size=1000).astype(np.float32) * 5),
    }


@pytest.fixture
def canvas(qtbot):
    from gui.canvas import Canvas

    widget = Canvas()
    widget.resize(640, 480)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def _inside(view_range, xs, ys) -> bool:
    (left, right), (top, bottom) = view_range
    return left <= min(xs) and max(xs) <= right and top <= min(ys) and max(ys) <= bottom


@pytest.mark.parametrize("kind", list(_displays()))
def test_fit_shows_the_whole_result_after_zooming_in(qtbot, canvas, kind):
    import numpy as np

    from engine.view.display import Bars

    display = _displays()[kind]
    canvas.show_display(display)
    qtbot.wait(20)
    box = canvas.current_view_box()
    box.scaleBy((0.1, 0.1))  # well inside the result
    box.translateBy(x=5, y=3)
    qtbot.wait(20)
    canvas.fit()
    qtbot.wait(20)
    if isinstance(display, Bars):
        heights = np.asarray(display.values)
        assert _inside(box.viewRange(), [-0.45, len(heights) - 0.55], [min(heights.min(), 0), max(heights.max(), 0)])
    else:
        height, width = canvas.picture_item.image.shape[:2]
        assert _inside(box.viewRange(), [0, width], [0, height])
        # and the picture fills the canvas along one side: a fit, not just a zoom out
        (left, right), (top, bottom) = box.viewRange()
        assert max(width / (right - left), height / (bottom - top)) > 0.9


def test_fit_shows_every_point_of_a_scatter_and_the_legend_covers_none(qtbot, canvas):
    import numpy as np

    from engine.view.display import Scatter

    rng = np.random.default_rng(1)
    xy = rng.normal(size=(40, 2)) * [30, 2]
    groups = [f"class with a long name {i % 9}" for i in range(40)]
    canvas.show_display(Scatter(xy=xy, paths=[f"/data/{i}.png" for i in range(40)], groups=groups, title="t-SNE"))
    qtbot.wait(20)
    box = canvas.current_view_box()
    assert _inside(box.viewRange(), xy[:, 0], xy[:, 1])
    box.scaleBy((0.05, 0.05))
    qtbot.wait(20)
    assert not _inside(box.viewRange(), xy[:, 0], xy[:, 1])
    canvas.fit()
    qtbot.wait(20)
    assert _inside(box.viewRange(), xy[:, 0], xy[:, 1])
    # The legend has its own column: no point of the plot lies under it.
    legend = canvas.scatter.legend
    assert legend.isVisible() and len(legend.items) == 9
    assert legend.sceneBoundingRect().left() >= box.sceneBoundingRect().right() - 1
    assert legend.sceneBoundingRect().right() <= canvas.scatter.plot.viewport().width() + 1  # not cut off


def test_a_picture_shown_smaller_than_its_pixels_is_filtered_and_a_larger_one_stays_crisp(qtbot, canvas):
    import numpy as np
    from PySide6.QtGui import QPainter

    from engine.view.display import Gallery

    canvas.show_display(Gallery(rgb=np.zeros((900, 2400, 3), np.uint8)))  # wider than the 640 px canvas
    qtbot.wait(20)
    smooth = QPainter.RenderHint.SmoothPixmapTransform
    assert canvas.graphics.renderHints() & smooth
    canvas.view.scaleBy((0.05, 0.05))
    qtbot.wait(20)
    assert not canvas.graphics.renderHints() & smooth


# -- the window's layout --------------------------------------------------------------------------
def _settings(path):
    from PySide6.QtCore import QSettings

    return QSettings(str(path), QSettings.Format.IniFormat)


def test_a_first_start_fills_most_of_the_screen(qtbot, tmp_path):
    from gui.main_window import MainWindow

    window = MainWindow(settings=_settings(tmp_path / "fresh.ini"))
    qtbot.addWidget(window)
    area = window.screen().availableGeometry()
    assert abs(window.width() - 0.9 * area.width()) <= 2 and abs(window.height() - 0.9 * area.height()) <= 2
    assert area.contains(window.geometry())  # centred, not hanging off the screen
    assert not window.layers_dock.isFloating() and not window.methods_dock.isFloating()


def test_geometry_and_docks_come_back_as_they_were_left(qtbot, tmp_path):
    from PySide6.QtCore import Qt

    from gui.main_window import MainWindow

    first = MainWindow(settings=_settings(tmp_path / "layout.ini"))
    qtbot.addWidget(first)
    first.show()
    first.setGeometry(40, 30, 700, 520)
    first.layers_dock.hide()  # the user closed the layer tree
    first.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, first.methods_dock)  # and moved the methods left
    qtbot.wait(50)
    size, dock_width = first.size(), first.methods_dock.width()
    first.close()

    second = MainWindow(settings=_settings(tmp_path / "layout.ini"))
    qtbot.addWidget(second)
    second.show()
    qtbot.wait(50)
    assert second.size() == size
    assert second.layers_dock.isHidden()
    assert second.dockWidgetArea(second.methods_dock) == Qt.DockWidgetArea.LeftDockWidgetArea
    assert abs(second.methods_dock.width() - dock_width) <= 2
    # The View menu brings a closed dock back.
    second.layers_dock.toggleViewAction().trigger()
    assert second.layers_dock.isVisible()
    second.close()


def test_a_saved_layout_that_no_longer_reads_falls_back_to_the_default(qtbot, tmp_path):
    from PySide6.QtCore import QByteArray

    from gui.main_window import MainWindow
    from gui.window_layout import GEOMETRY_KEY, STATE_KEY

    settings = _settings(tmp_path / "broken.ini")
    settings.setValue(GEOMETRY_KEY, QByteArray(b"not a geometry"))
    settings.setValue(STATE_KEY, QByteArray(b"not a state"))
    settings.sync()
    window = MainWindow(settings=_settings(tmp_path / "broken.ini"))
    qtbot.addWidget(window)
    area = window.screen().availableGeometry()
    assert abs(window.width() - 0.9 * area.width()) <= 2
    assert not window.layers_dock.isHidden() and not window.methods_dock.isHidden()


def test_the_canvas_is_the_widest_pane_on_a_1600_px_screen(qtbot, window):
    from gui.window_layout import default_docks

    window.resize(1600, 1000)
    default_docks(window, [window.layers_dock, window.methods_dock])
    qtbot.wait(100)
    canvas, layers, methods = window.canvas.width(), window.layers_dock.width(), window.methods_dock.width()
    assert canvas > layers and canvas > methods
    assert canvas >= 0.5 * window.width()
    # Every form still fits its dock: the methods dock is as wide as its widest form needs.
    assert methods >= max(page.minimumWidth() for page in window.methods.pages.values())


def test_the_layer_tree_fits_its_dock_and_each_row_says_everything_in_its_tooltip(qtbot, window):
    from gui.layer_tree import COLUMNS
    from gui.window_layout import LAYERS_WIDTH, default_docks

    tree = window.layer_tree
    window.resize(1600, 1000)
    default_docks(window, [window.layers_dock, window.methods_dock])
    qtbot.wait(100)
    assert abs(window.layers_dock.width() - LAYERS_WIDTH) <= 2
    view = tree.view
    view.expandAll()
    qtbot.wait(50)
    for column in range(len(COLUMNS)):
        view.resizeColumnToContents(column)
    assert view.header().length() <= view.viewport().width()  # no horizontal scroll
    assert not view.horizontalScrollBar().isVisible()
    pool = tree._items["pool"]
    field = pool.parent() or tree.model.invisibleRootItem()
    cell = field.child(pool.row(), COLUMNS.index("RF (px)"))
    assert cell.text() == "1043×1171"  # the photo is wider than tall
    assert cell.toolTip().startswith("<qt>") and "jump 224x352" in cell.toolTip() and "start" in cell.toolTip()
    for path, item in tree._items.items():
        parent = item.parent() or tree.model.invisibleRootItem()
        for column in range(len(COLUMNS)):
            tooltip = parent.child(item.row(), column).toolTip()
            assert tooltip.startswith("<qt>") and path in tooltip, (path, column)
    # The columns that do not fit are a right click on the header away.
    assert view.isColumnHidden(COLUMNS.index("Type"))
    tree.column_actions["Type"].trigger()
    assert not view.isColumnHidden(COLUMNS.index("Type"))


def test_every_tooltip_in_the_window_is_wrapped(qtbot, window):
    from PySide6.QtCore import QEvent, QPoint
    from PySide6.QtGui import QHelpEvent
    from PySide6.QtWidgets import QApplication, QToolTip, QWidget

    widgets = [w for w in window.findChildren(QWidget) if w.toolTip()]
    assert len(widgets) > 50  # every form's fields and labels among them
    for widget in widgets:
        assert widget.toolTip().startswith("<qt>"), widget.toolTip()
    # Shown, the longest help is a few lines of a readable width, not one line across the screen.
    longest = max(widgets, key=lambda w: len(w.toolTip()))
    assert len(longest.toolTip()) > 100
    QApplication.sendEvent(longest, QHelpEvent(QEvent.Type.ToolTip, QPoint(2, 2), longest.mapToGlobal(QPoint(2, 2))))
    label = next(w for w in QApplication.topLevelWidgets() if w.objectName() == "qtooltip_label" and w.isVisible())
    assert label.width() <= 600 and label.height() > 1.5 * label.fontMetrics().height()  # more than one line
    # A short help stays on one line rather than being squeezed into a narrow column.
    short = next(w for w in widgets if 40 <= len(w.toolTip()) - len("<qt><nobr></nobr></qt>") <= 60)
    QToolTip.hideText()
    QApplication.sendEvent(short, QHelpEvent(QEvent.Type.ToolTip, QPoint(2, 2), short.mapToGlobal(QPoint(2, 2))))
    label = next(w for w in QApplication.topLevelWidgets() if w.objectName() == "qtooltip_label" and w.isVisible())
    assert label.height() < 2 * label.fontMetrics().height()
    QToolTip.hideText()


def test_wrapping_keeps_the_words_and_leaves_rich_text_alone():
    from gui.tooltips import wrapped

    assert wrapped("a < b & c\nnext") == "<qt><nobr>a &lt; b &amp; c</nobr><br><nobr>next</nobr></qt>"
    long = " ".join(["word"] * 40)
    lines = wrapped(long)[len("<qt>"):-len("</qt>")].split("<br>")
    assert len(lines) == 3 and all(len(line) <= 70 + len("<nobr></nobr>") for line in lines)
    assert " ".join(line[len("<nobr>"):-len("</nobr>")] for line in lines) == long
    assert wrapped("<qt>already <b>rich</b></qt>") == "<qt>already <b>rich</b></qt>"
    assert wrapped("") == ""


def test_reset_window_layout_brings_back_the_first_starts_layout(qtbot, tmp_path):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QAction

    from gui.main_window import MainWindow

    window = MainWindow(settings=_settings(tmp_path / "reset.ini"))
    qtbot.addWidget(window)
    window.show()
    expected = window.size()
    window.setGeometry(10, 10, 600, 450)
    window.layers_dock.hide()
    window.methods_dock.setFloating(True)
    action = next(a for a in window.findChildren(QAction) if a.text() == "&Reset window layout")
    action.trigger()
    qtbot.wait(50)
    assert window.size() == expected
    assert window.layers_dock.isVisible() and not window.methods_dock.isFloating()
    assert window.dockWidgetArea(window.methods_dock) == Qt.DockWidgetArea.RightDockWidgetArea
