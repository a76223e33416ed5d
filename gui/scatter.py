"""The embedding view: a scatter of dataset images, coloured by group, with thumbnails.

One ``ScatterPlotItem`` holds every point; brushes are made once per group and shared,
which keeps tens of thousands of points smooth. Hovering shows the image under the
pointer in the corner; clicking a point asks the window to open that image. The legend
has its own column right of the plot, so it never covers a point, and ``fit`` frames
every point.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyqtgraph as pg
from PIL import Image
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from engine.view.display import Scatter
from engine.view.plots import PALETTE, group_order

THUMBNAIL = 128


class ScatterView(QWidget):
    point_clicked = Signal(str)  # the image's path

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(background="#282828")
        self.plot.setAspectLocked(False)
        # Beside the view box, in the plot's own grid (row 2 holds the view box; column 3
        # is free): a legend anchored inside the box would sit on the points under it.
        self.legend = pg.LegendItem(labelTextColor="#dddddd")
        self.legend.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)  # its rows close together
        layout = self.plot.getPlotItem().layout
        layout.addItem(self.legend, 2, 3)
        layout.setAlignment(self.legend, Qt.AlignmentFlag.AlignTop)
        self.scatter = pg.ScatterPlotItem(size=7, pen=None, hoverable=True, hoverSize=12,
                                          hoverPen=pg.mkPen("w", width=1.5), tip=None)
        self.plot.addItem(self.scatter)
        self.scatter.sigClicked.connect(self._on_clicked)
        self.scatter.sigHovered.connect(self._on_hovered)
        self.preview = QLabel(self.plot)
        self.preview.setStyleSheet("background: #202020; color: #ddd; border: 1px solid #555; padding: 3px;")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.hide()
        self.paths: list[str] = []
        self._thumbnails: OrderedDict[str, QPixmap] = OrderedDict()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def show_points(self, scatter: Scatter) -> None:
        self.paths = list(scatter.paths)
        groups = list(scatter.groups)
        names = group_order(groups)
        index = {name: i for i, name in enumerate(names)}
        brushes = [pg.mkBrush(PALETTE[i % len(PALETTE)]) for i in range(len(names))]
        self.legend.clear()
        self.scatter.setData(pos=np.asarray(scatter.xy, dtype=float), brush=[brushes[index[g]] for g in groups],
                             data=np.arange(len(groups)))
        if len(names) <= len(PALETTE):
            for name, brush in zip(names, brushes):
                self.legend.addItem(pg.ScatterPlotItem(size=8, pen=None, brush=brush), name)
        self.legend.setVisible(bool(self.legend.items))
        self.plot.setTitle(scatter.title, color="#dddddd")
        self.fit()

    def fit(self) -> None:
        """Frame every point, with a margin so that points on the edge show whole."""
        points = self.scatter.getData()
        if len(points[0]) == 0:
            return
        (left, right), (bottom, top) = [(float(np.min(axis)), float(np.max(axis))) for axis in points]
        self.plot.getPlotItem().getViewBox().setRange(xRange=(left, right), yRange=(bottom, top), padding=0.05)

    def _on_clicked(self, _item, spots, _event) -> None:
        if len(spots):
            self.point_clicked.emit(self.paths[int(spots[0].data())])

    def _on_hovered(self, _item, spots, _event) -> None:
        if not len(spots):
            self.preview.hide()
            return
        path = self.paths[int(spots[0].data())]
        self.preview.setPixmap(self._thumbnail(path))
        self.preview.adjustSize()
        self.preview.move(self.plot.width() - self.preview.width() - 12, 12)
        self.preview.show()

    def _thumbnail(self, path: str) -> QPixmap:
        if path in self._thumbnails:
            self._thumbnails.move_to_end(path)
            return self._thumbnails[path]
        try:
            with Image.open(path) as image:
                image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEGs decode at reduced size: fast
                image = image.convert("RGB")
                image.thumbnail((THUMBNAIL, THUMBNAIL))
                if max(image.size) < THUMBNAIL // 2:  # digits: enlarge, crisply
                    scale = THUMBNAIL // max(image.size)
                    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
                data = np.ascontiguousarray(np.asarray(image))
            qimage = QImage(data.data, data.shape[1], data.shape[0], data.strides[0], QImage.Format.Format_RGB888).copy()
            pixmap = QPixmap.fromImage(qimage)
        except OSError:
            pixmap = QPixmap()
        self._thumbnails[path] = pixmap
        if len(self._thumbnails) > 512:
            self._thumbnails.popitem(last=False)
        return pixmap
