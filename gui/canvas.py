"""The image canvas: the picture of a display, its colour bar, and live plots for bars and scatters.

Every kind of display but bars and scatters is drawn by the engine's one renderer
(``engine.view.render.render``) with this canvas's ``view_settings`` (the colormap box,
the overlay opacity) into one pyqtgraph ``ImageItem``: what is exported (the session's
``picture`` with the same settings) is exactly what is seen. Bars and scatters get live
pyqtgraph plots (hover, click to open an image); their export is the engine's picture.
The colour bar uses the engine's colour tables, and its ticks and the statement of what
its range clips come from ``engine.view.colorbar``, as the exported picture's do. Zoom
and pan come from the ViewBox (wheel, drag); ``fit`` frames whatever is shown: the
picture, the bars, every point of a scatter.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QFontMetrics, QPainter
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QSizePolicy, QSlider, QStackedWidget, QToolButton,
                               QVBoxLayout, QWidget)

from engine.core.errors import in_field_words
from engine.view.colorbar import display_colour_bar
from engine.view.colormaps import COLORMAPS, colormap_lut
from engine.view.display import Bars, Display, Gallery, MapOverPhoto, Scatter
from engine.view.render import colour_scale, render
from engine.view.view_settings import DEFAULT_OPACITY, ViewSettings

from gui.scatter import ScatterView

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)


@lru_cache(maxsize=None)
def _pg_colormap(name: str) -> pg.ColorMap:
    """The engine's table as a pyqtgraph colormap, for the colour bar: one source of colours."""
    lut = colormap_lut(name)
    return pg.ColorMap(np.linspace(0, 1, len(lut)), lut)


class Canvas(QWidget):
    display_changed = Signal()  # a new picture is on screen (a result or a frame)
    clicked = Signal(float, float)  # image coordinates (x, y) of a left click
    path_clicked = Signal(str, object)  # a dataset image was clicked: its path, and a box to draw on it or None

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.display: Display | None = None
        self.colour_bar = None  # the engine's ColourBar on show, or None
        self.frames_shown = 0

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("#282828")
        self.view = self.graphics.addViewBox(row=0, col=0, lockAspect=True, invertY=True, enableMenu=False)
        self.picture_item = pg.ImageItem()  # the rendered picture of the display
        self.view.addItem(self.picture_item)
        self.message = pg.TextItem("", color="#dddddd", anchor=(0.5, 0.5))
        self.message.setZValue(2)
        self.view.addItem(self.message)
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=_pg_colormap("inferno"), interactive=False,
                                        width=16, colorMapMenu=False)
        self.graphics.addItem(self.colorbar, row=0, col=1)
        self.colorbar.setVisible(False)
        # The engine gives few ticks; each is shown, the clipped end's label at the bar's very top too.
        self.colorbar.axis.setStyle(hideOverlappingLabels=False)
        self.graphics.scene().sigMouseClicked.connect(self._on_scene_click)
        self.view.sigTransformChanged.connect(self._smooth_when_shrunk)

        self.plot = pg.PlotWidget(background="#282828")
        self.plot.setLabel("bottom", "unit")
        self.plot.setLabel("left", "activation")
        self.bars = pg.BarGraphItem(x=[], height=[], width=0.9, brush="#e0a040")
        self.plot.addItem(self.bars)

        self.scatter = ScatterView()
        self.scatter.point_clicked.connect(lambda path: self.path_clicked.emit(path, None))

        self.stack = QStackedWidget()
        self.stack.addWidget(self.graphics)
        self.stack.addWidget(self.plot)
        self.stack.addWidget(self.scatter)

        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(DEFAULT_OPACITY * 100))
        self.opacity.setToolTip("Opacity of the map over the image")
        self.opacity.setMaximumWidth(140)
        # A drag sends many values: the map is drawn again once the newest has arrived (a
        # 12-megapixel photo takes a third of a second to blend), never once per value.
        self._opacity_redraw = QTimer(self, singleShot=True, interval=0)
        self._opacity_redraw.timeout.connect(self._redraw)
        self.opacity.valueChanged.connect(self._on_opacity_changed)
        self.colormap_box = QComboBox()
        self.colormap_box.addItems(["auto", *COLORMAPS])
        self.colormap_box.setToolTip("Colormap of maps and activation grids")
        self.colormap_box.currentTextChanged.connect(lambda _name: self._redraw())
        fit = QToolButton(text="Fit")
        fit.setToolTip("Show all of the result: the whole picture, every bar, every point (Ctrl+F)")
        fit.clicked.connect(self.fit)
        zoom_in = QToolButton(text="+")
        zoom_in.setToolTip("Zoom in (or the mouse wheel)")
        zoom_in.clicked.connect(lambda: self.current_view_box().scaleBy((0.8, 0.8)))
        zoom_out = QToolButton(text="−")
        zoom_out.setToolTip("Zoom out (or the mouse wheel)")
        zoom_out.clicked.connect(lambda: self.current_view_box().scaleBy((1.25, 1.25)))
        self.note = QLabel("")
        self.note.setStyleSheet("color: #555;")
        # A long note wraps instead of widening the canvas and squeezing the docks.
        self.note.setWordWrap(True)
        self.note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        # What the colour bar's range leaves out, in words (the bar's clipped end reads "> 0.14").
        self.scale_caption = QLabel("")
        self.scale_caption.setWordWrap(True)
        self.scale_caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        tools = QHBoxLayout()
        for widget in (fit, zoom_in, zoom_out):
            tools.addWidget(widget)
        tools.addSpacing(12)
        tools.addWidget(QLabel("Overlay"))
        tools.addWidget(self.opacity)
        tools.addWidget(QLabel("Colormap"))
        tools.addWidget(self.colormap_box)
        tools.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(tools)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.note)
        layout.addWidget(self.scale_caption)

    # -- what the window calls ------------------------------------------------------
    def show_message(self, text: str) -> None:
        """A line of text in the middle of the canvas (e.g. while the model loads)."""
        self.message.setText(text)
        rect = self.picture_item.boundingRect() if self.picture_item.image is not None else QRectF(0, 0, 400, 300)
        self.message.setPos(rect.center())
        if self.picture_item.image is None:
            self.view.setRange(QRectF(0, 0, 400, 300), padding=0)

    def show_display(self, display: Display, *, frame: bool = False) -> None:
        first = self.display is None
        previous_shape = None if first else self._extent()
        self.display = display
        self.message.setText("")
        self._redraw()
        self.note.setText(in_field_words(display.note))
        if frame:
            self.frames_shown += 1
        if first or previous_shape != self._extent():
            self.fit()
        self.display_changed.emit()

    def fit(self) -> None:
        if isinstance(self.display, Bars):
            self.plot.autoRange()
        elif isinstance(self.display, Scatter):
            self.scatter.fit()
        elif self.picture_item.image is not None:
            self.view.autoRange(items=[self.picture_item], padding=0.02)

    def current_view_box(self) -> pg.ViewBox:
        """The view box of what is on show: the picture's, the bars' or the scatter's."""
        if isinstance(self.display, Bars):
            return self.plot.getPlotItem().getViewBox()
        if isinstance(self.display, Scatter):
            return self.scatter.plot.getPlotItem().getViewBox()
        return self.view

    def current_colormap(self) -> str | None:
        """The colormap the shown display is drawn with; None for a kind drawn in its own colours."""
        scale = colour_scale(self.display, self.view_settings()) if self.display is not None else None
        return scale.colormap if scale is not None else None

    def current_opacity(self) -> float:
        return self.opacity.value() / 100.0

    def view_settings(self) -> ViewSettings:
        """The colormap and opacity the user chose, for the exported picture and its sidecar."""
        chosen = self.colormap_box.currentText()
        return ViewSettings(colormap=None if chosen == "auto" else chosen, overlay_opacity=self.current_opacity())

    # -- drawing ----------------------------------------------------------------------
    def _extent(self) -> tuple[int, int] | None:
        """The (height, width) of the picture on show; None for the plots."""
        if self.display is None or isinstance(self.display, (Bars, Scatter)) or self.picture_item.image is None:
            return None
        return self.picture_item.image.shape[:2]

    def _redraw(self) -> None:
        display = self.display
        if display is None:
            return
        if isinstance(display, Bars):
            values = np.asarray(display.values, dtype=np.float32)
            self.bars.setOpts(x=np.arange(values.size), height=values, width=0.9)
            self.plot.setTitle(display.legend)
            self.stack.setCurrentWidget(self.plot)
            self.plot.autoRange()
            self._show_colour_bar(None)
            return
        if isinstance(display, Scatter):
            self.scatter.show_points(display)
            self.stack.setCurrentWidget(self.scatter)
            self._show_colour_bar(None)
            return
        self.stack.setCurrentWidget(self.graphics)
        view = self.view_settings()
        picture = render(display, view)
        self.picture_item.setImage(picture, autoLevels=False, levels=(0, 255))
        height, width = picture.shape[:2]
        self.picture_item.setRect(QRectF(0, 0, width, height))
        self._show_colour_bar(display_colour_bar(display, view))

    def _show_colour_bar(self, bar) -> None:
        """The colour bar with the engine's few nice ticks (pyqtgraph's own put a label
        every few pixels), and the clipping statement under the canvas."""
        self.colour_bar = bar
        self.colorbar.setVisible(bar is not None)
        self.scale_caption.setText(bar.caption if bar is not None else "")
        self.scale_caption.setVisible(bool(bar is not None and bar.caption))
        if bar is None:
            return
        self.colorbar.setColorMap(_pg_colormap(bar.colormap))
        self.colorbar.setLevels(bar.levels)
        low, high = bar.levels
        inside = 1e-6 * (high - low)  # pyqtgraph drops a tick a rounding error past the axis's end
        self.colorbar.axis.setTicks([[(min(max(value, low + inside), high - inside), label)
                                      for value, label in bar.ticks], []])
        # pyqtgraph leaves out a label wider than the axis: make room for the widest ("> 0.156").
        metrics = QFontMetrics(self.colorbar.axis.style.get("tickFont") or self.font())
        widest = max(metrics.horizontalAdvance(label) for _value, label in bar.ticks)
        self.colorbar.axis.setWidth(max(45, widest + 16))
        self.colorbar.setToolTip(bar.legend)

    def _smooth_when_shrunk(self, *_args) -> None:
        """A picture drawn smaller than its pixels (a wide gallery in a narrow canvas) is
        filtered, or its captions lose whole strokes and cannot be read; drawn larger, its
        pixels stay crisp squares, as an activation map's units should."""
        shrunk = max(self.view.viewPixelSize()) > 1.0  # picture pixels per screen pixel
        self.graphics.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, shrunk)

    def _on_opacity_changed(self) -> None:
        if isinstance(self.display, MapOverPhoto):  # the only kind the opacity acts on
            self._opacity_redraw.start()

    def _on_scene_click(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self.picture_item.image is None:
            return
        point = self.view.mapSceneToView(event.scenePos())
        self._on_scene_click_at(point.x(), point.y())

    def _on_scene_click_at(self, x: float, y: float) -> None:
        region = self.region_at(x, y)
        if region is not None:
            self.path_clicked.emit(region.path, region.box)
        self.clicked.emit(x, y)

    def region_at(self, x: float, y: float):
        """The gallery tile under a point of the picture, if any."""
        if not isinstance(self.display, Gallery):
            return None
        return next((region for region in self.display.regions if region.contains(x, y)), None)
