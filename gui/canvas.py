"""The image canvas: the picture, a map over it, its colour bar, and bars for vectors.

One pyqtgraph ``ImageItem`` holds the picture and a second one the scalar map, drawn
through the same colour lookup tables the engine uses for PNG output, so what is
exported (the session's composite, with this canvas's ``view_settings``) is what is seen. Zoom and pan come from the ViewBox (wheel, drag); ``fit``
frames the picture.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QSizePolicy, QSlider, QStackedWidget, QToolButton,
                               QVBoxLayout, QWidget)

from engine.view.display import Display
from engine.view.gallery import draw_boxes
from engine.view.render import COLORMAPS, apply_colormap, colormap_lut, overlay_map
from engine.view.view_settings import ViewSettings

from gui.scatter import ScatterView

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)


def _pg_colormap(name: str) -> pg.ColorMap:
    lut = colormap_lut(name)
    return pg.ColorMap(np.linspace(0, 1, len(lut)), lut)


class Canvas(QWidget):
    display_changed = Signal()  # a new picture is on screen (a result or a frame)
    clicked = Signal(float, float)  # image coordinates (x, y) of a left click
    path_clicked = Signal(str, object)  # a dataset image was clicked: its path, and a box to draw on it or None

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.display: Display | None = None
        self.frames_shown = 0

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("#282828")
        self.view = self.graphics.addViewBox(row=0, col=0, lockAspect=True, invertY=True, enableMenu=False)
        self.base_item = pg.ImageItem()
        self.overlay_item = pg.ImageItem()
        self.overlay_item.setZValue(1)
        self.view.addItem(self.base_item)
        self.view.addItem(self.overlay_item)
        self.message = pg.TextItem("", color="#dddddd", anchor=(0.5, 0.5))
        self.message.setZValue(2)
        self.view.addItem(self.message)
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=_pg_colormap("inferno"), interactive=False,
                                        width=16, colorMapMenu=False)
        self.graphics.addItem(self.colorbar, row=0, col=1)
        self.colorbar.setVisible(False)
        self.graphics.scene().sigMouseClicked.connect(self._on_scene_click)

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
        self.opacity.setValue(60)
        self.opacity.setToolTip("Opacity of the map over the image")
        self.opacity.setMaximumWidth(140)
        self.opacity.valueChanged.connect(self._apply_opacity)
        self.colormap_box = QComboBox()
        self.colormap_box.addItems(["auto", *COLORMAPS])
        self.colormap_box.setToolTip("Colormap of maps and activation grids")
        self.colormap_box.currentTextChanged.connect(lambda _name: self._redraw())
        fit = QToolButton(text="Fit")
        fit.setToolTip("Fit the picture to the window")
        fit.clicked.connect(self.fit)
        zoom_in = QToolButton(text="+")
        zoom_in.clicked.connect(lambda: self.view.scaleBy((0.8, 0.8)))
        zoom_out = QToolButton(text="−")
        zoom_out.clicked.connect(lambda: self.view.scaleBy((1.25, 1.25)))
        self.note = QLabel("")
        self.note.setStyleSheet("color: #555;")
        # A long note wraps instead of widening the canvas and squeezing the docks.
        self.note.setWordWrap(True)
        self.note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

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

    # -- what the window calls ------------------------------------------------------
    def show_message(self, text: str) -> None:
        """A line of text in the middle of the canvas (e.g. while the model loads)."""
        self.message.setText(text)
        rect = self.base_item.boundingRect() if self.base_item.image is not None else QRectF(0, 0, 400, 300)
        self.message.setPos(rect.center())
        if self.base_item.image is None:
            self.view.setRange(QRectF(0, 0, 400, 300), padding=0)

    def show_display(self, display: Display, *, frame: bool = False) -> None:
        first = self.display is None
        previous_shape = None if first else self._extent()
        self.display = display
        self.message.setText("")
        self._redraw()
        self.note.setText(display.note)
        if frame:
            self.frames_shown += 1
        if first or previous_shape != self._extent():
            self.fit()
        self.display_changed.emit()

    def fit(self) -> None:
        if self.display is not None and self.display.bars is not None:
            self.plot.autoRange()
            return
        if self.display is not None and self.display.points is not None:
            self.scatter.plot.autoRange()
            return
        if self.base_item.image is not None:
            self.view.autoRange(items=[self.base_item], padding=0.02)

    def current_colormap(self) -> str:
        chosen = self.colormap_box.currentText()
        return self.display.colormap if chosen == "auto" and self.display else (chosen if chosen != "auto" else "gray")

    def current_opacity(self) -> float:
        return self.opacity.value() / 100.0

    def view_settings(self) -> ViewSettings:
        """The colormap and opacity the user chose, for the exported picture and its sidecar."""
        chosen = self.colormap_box.currentText()
        return ViewSettings(colormap=None if chosen == "auto" else chosen, overlay_opacity=self.current_opacity())

    # -- drawing ----------------------------------------------------------------------
    def _extent(self) -> tuple[int, int] | None:
        display = self.display
        if display is None:
            return None
        source = display.rgb if display.rgb is not None else display.scalar
        return None if source is None else source.shape[:2]

    def _redraw(self) -> None:
        display = self.display
        if display is None:
            return
        if display.bars is not None:
            values = np.asarray(display.bars, dtype=np.float32)
            self.bars.setOpts(x=np.arange(values.size), height=values, width=0.9)
            self.plot.setTitle(display.legend)
            self.stack.setCurrentWidget(self.plot)
            self.plot.autoRange()
            return
        if display.points is not None:
            self.scatter.show_points(display.points)
            self.stack.setCurrentWidget(self.scatter)
            return
        self.stack.setCurrentWidget(self.graphics)
        colormap = self.current_colormap()
        if display.rgb is not None:
            self.base_item.setImage(draw_boxes(display.rgb, display.boxes), autoLevels=False, levels=(0, 255))
        elif display.scalar is not None:
            # A grid or a map on its own: colour it here so gaps (NaN) show as background.
            self.base_item.setImage(apply_colormap(display.scalar, display.levels, colormap), autoLevels=False, levels=(0, 255))
        height, width = self._extent()
        self.base_item.setRect(QRectF(0, 0, width, height))

        show_overlay = display.scalar is not None and display.rgb is not None and display.overlay
        self.overlay_item.setVisible(show_overlay)
        if show_overlay:
            levels = display.levels or (float(np.nanmin(display.scalar)), float(np.nanmax(display.scalar)))
            # The map may have the model's input resolution: resample it to the picture's
            # size exactly as the exported PNG does, so the two look the same.
            self.overlay_item.setImage(overlay_map(display), autoLevels=False, levels=levels)
            self.overlay_item.setLookupTable(colormap_lut(colormap))
            self.overlay_item.setRect(QRectF(0, 0, width, height))
            self._apply_opacity()
        self.colorbar.setVisible(display.scalar is not None)
        if display.scalar is not None:
            levels = display.levels or (float(np.nanmin(display.scalar)), float(np.nanmax(display.scalar)))
            self.colorbar.setColorMap(_pg_colormap(colormap))
            self.colorbar.setLevels(levels)
            self.colorbar.setToolTip(display.legend)

    def _apply_opacity(self) -> None:
        self.overlay_item.setOpacity(self.current_opacity())

    def _on_scene_click(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self.base_item.image is None:
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
        if self.display is None:
            return None
        return next((region for region in self.display.regions if region.contains(x, y)), None)
