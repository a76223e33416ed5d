"""The main window's size and dock layout: a first start fills most of the screen with
the picture in the middle; later starts come back as the user left them.

Qt's own ``saveGeometry``/``saveState`` bytes are kept in the window's ``QSettings``,
so a layout survives a restart; bytes that no longer fit (another Qt, a lost screen)
are refused by Qt and the default layout is used instead.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMainWindow, QStyle

GEOMETRY_KEY = "window/geometry"
STATE_KEY = "window/state"
SCREEN_SHARE = 0.9  # of the screen's free area, on a first start
# The docks' default widths: the bundled model's layer tree (three columns, four levels
# deep, a vertical scroll bar beside it, the "middle" badge on a row four levels down)
# and a ViT's (its tokens "whole image", "Grad-CAM" and "late" on one row) fit in
# LAYERS_WIDTH without a horizontal scroll, and most forms in METHODS_WIDTH (the dock
# widens to a form that needs more), so on a 1600 px screen the canvas has about 830 px,
# the most of the three.
LAYERS_WIDTH = 370
METHODS_WIDTH = 360


def restore_layout(window: QMainWindow, settings, docks: list) -> None:
    """The saved geometry and docks, or the defaults where nothing (usable) was saved."""
    geometry, state = settings.value(GEOMETRY_KEY), settings.value(STATE_KEY)
    if geometry is None or not window.restoreGeometry(geometry):
        default_geometry(window)
    if state is None or not window.restoreState(state):
        default_docks(window, docks)


def save_layout(window: QMainWindow, settings) -> None:
    settings.setValue(GEOMETRY_KEY, window.saveGeometry())
    settings.setValue(STATE_KEY, window.saveState())
    settings.sync()


def reset_layout(window: QMainWindow, docks: list) -> None:
    """View > Reset window layout: the first start's size and docks (a dock dragged off the
    screen, or closed and forgotten, comes back)."""
    default_geometry(window)
    default_docks(window, docks)


def default_geometry(window: QMainWindow) -> None:
    """SCREEN_SHARE of the free area of the screen the window is on, centred in it."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    area = screen.availableGeometry()
    size = QSize(round(area.width() * SCREEN_SHARE), round(area.height() * SCREEN_SHARE))
    window.setGeometry(QStyle.alignedRect(Qt.LayoutDirection.LeftToRight, Qt.AlignmentFlag.AlignCenter, size, area))


def default_docks(window: QMainWindow, docks: list) -> None:
    """Layers on the left, methods on the right, both shown and docked, at their default widths."""
    layers, methods = docks
    areas = (Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea)
    for dock, area in zip((layers, methods), areas):
        dock.setFloating(False)
        window.addDockWidget(area, dock)
        dock.show()
    window.resizeDocks([layers, methods], [LAYERS_WIDTH, METHODS_WIDTH], Qt.Orientation.Horizontal)
