"""The embedding view: a scatter of dataset images, coloured by group, with thumbnails.

One ``ScatterPlotItem`` holds every point; brushes are made once per group and shared,
which keeps tens of thousands of points smooth. Hovering shows the image under the
pointer in the corner; clicking a point asks the window to open that image. The legend
has its own column right of the plot, so it never covers a point, and ``fit`` frames
every point.

Past ``LARGE`` points (a million images) one spot per point would make every redraw
take seconds. Then the view draws where the points are as a density image (a 2-D
histogram of the visible range, log colour scale) and on it at most ``SHOWN`` real
points: those in the visible range that come first in a fixed random order, so the
same points stay on show between redraws and zooming in shows every point where few
are left. Hover and click find the nearest of *all* points within ``PICK_PX`` pixels of
the pointer through a 2-D KD-tree over the layout, drawn or not.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyqtgraph as pg
from PIL import Image
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from engine.view.display import Scatter
from engine.view.plots import PALETTE, group_order

THUMBNAIL = 128
LARGE = 50_000  # past this many points: the density image, a subsample and the KD-tree
SHOWN = 30_000  # real points drawn at most past LARGE
DENSITY_BINS = 400  # the density image's bins along each axis of the visible range
PICK_PX = 8  # how close to a point, in screen pixels, the pointer must be to pick it
REDRAW_MS = 60  # range changes are gathered for this long before one redraw (a drag or wheel spin)
# The density's colours: transparent where no point is, then from dim to light grey-blue, so
# the label colours of the drawn points stay the brightest things on show.
_DENSITY_LOW, _DENSITY_HIGH = np.array([52, 56, 66, 255]), np.array([170, 185, 215, 255])


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
        self.density = pg.ImageItem(axisOrder="row-major")
        self.density.setZValue(-10)  # under the points
        ramp = np.linspace(0.0, 1.0, 256)[:, None]
        lut = (_DENSITY_LOW * (1 - ramp) + _DENSITY_HIGH * ramp).astype(np.uint8)
        lut[0] = 0  # no point in the bin: the background shows
        self.density.setLookupTable(lut)
        self.density.hide()
        self.plot.addItem(self.density)
        self.density_counts = np.zeros((0, 0), dtype=np.int64)  # the density image's counts, rows by y
        self.marker = pg.ScatterPlotItem(size=12, pen=pg.mkPen("w", width=1.5), brush=None)  # the picked point
        self.plot.addItem(self.marker)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self.plot.scene().sigMouseClicked.connect(self._on_scene_clicked)
        self._redraw = QTimer(self, singleShot=True, interval=REDRAW_MS)
        self._redraw.timeout.connect(self._draw_visible)
        self.plot.getPlotItem().getViewBox().sigRangeChanged.connect(self._on_range_changed)
        self.paths: list[str] = []
        self.xy = np.zeros((0, 2))
        self.large = False
        self.shown = np.zeros(0, dtype=np.int64)  # which points the spots are
        self._tree = None
        self._tree_scale = np.ones(2)
        self._group_of = np.zeros(0, dtype=np.int64)
        self._brushes: list = []
        self._by_rank = np.zeros(0, dtype=np.int64)  # the fixed random order that picks the drawn points
        self._thumbnails: OrderedDict[str, QPixmap] = OrderedDict()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def show_points(self, scatter: Scatter) -> None:
        from scipy.spatial import cKDTree

        self.paths = list(scatter.paths)
        groups = list(scatter.groups)
        names = group_order(groups)
        index = {name: i for i, name in enumerate(names)}
        self._brushes = [pg.mkBrush(PALETTE[i % len(PALETTE)]) for i in range(len(names))]
        self.xy = np.asarray(scatter.xy, dtype=float).reshape(-1, 2)
        self._group_of = np.fromiter((index[g] for g in groups), dtype=np.int64, count=len(groups))
        self.large = len(self.xy) > LARGE
        self.legend.clear()
        self.marker.clear()
        if self.large:
            self._by_rank = np.random.default_rng(0).permutation(len(self.xy))
            span = self.xy.max(axis=0) - self.xy.min(axis=0)
            self._tree_scale = np.where(span > 0, span, 1.0)
            self._tree = cKDTree(self.xy / self._tree_scale)
            self.scatter.setData(pos=np.zeros((0, 2)), hoverable=False)
            self.density.show()
        else:
            self._tree = None
            self.density.hide()
            self.density_counts = np.zeros((0, 0), dtype=np.int64)
            self.shown = np.arange(len(self.xy))
            self.scatter.setData(pos=self.xy, brush=[self._brushes[i] for i in self._group_of],
                                 data=self.shown, hoverable=True)
        if len(names) <= len(PALETTE):
            for name, brush in zip(names, self._brushes):
                self.legend.addItem(pg.ScatterPlotItem(size=8, pen=None, brush=brush), name)
        self.legend.setVisible(bool(self.legend.items))
        self.plot.setTitle(scatter.title, color="#dddddd")
        self.fit()
        if self.large:
            self._draw_visible()  # now, not after the timer: the first picture is complete at once

    def fit(self) -> None:
        """Frame every point, with a margin so that points on the edge show whole."""
        if len(self.xy) == 0:
            return
        (left, bottom), (right, top) = self.xy.min(axis=0), self.xy.max(axis=0)
        self.plot.getPlotItem().getViewBox().setRange(xRange=(float(left), float(right)),
                                                      yRange=(float(bottom), float(top)), padding=0.05)

    def point_at(self, x: float, y: float, radius_px: float = PICK_PX) -> int | None:
        """The point nearest to (x, y) in view coordinates, among all points, if it lies
        within ``radius_px`` screen pixels; None otherwise. Past ``LARGE`` points only."""
        if self._tree is None:
            return None
        pixel = np.asarray(self.plot.getPlotItem().getViewBox().viewPixelSize(), dtype=float)
        # The tree's axes are scaled by the layout's span, the screen's by the zoom: a ball
        # wide enough along both axes finds every candidate, and screen distance picks one.
        reach = radius_px * float(np.max(pixel / self._tree_scale))
        candidates = self._tree.query_ball_point(np.array([x, y]) / self._tree_scale, reach)
        if not candidates:
            return None
        candidates = np.asarray(candidates)
        distances = np.hypot(*((self.xy[candidates] - (x, y)) / pixel).T)
        best = int(np.argmin(distances))
        return int(candidates[best]) if distances[best] <= radius_px else None

    def _on_range_changed(self, *_args) -> None:
        if self.large:
            self._redraw.start()  # restarted by each change: one redraw once the range settles

    def _draw_visible(self) -> None:
        """Past ``LARGE``: the density of the visible range and the points to draw in it."""
        if not self.large:
            return
        (left, right), (bottom, top) = self.plot.getPlotItem().getViewBox().viewRange()
        x, y = self.xy[:, 0], self.xy[:, 1]
        inside = (x >= left) & (x <= right) & (y >= bottom) & (y <= top)
        ranked = np.flatnonzero(inside[self._by_rank])[:SHOWN]
        self.shown = np.sort(self._by_rank[ranked])
        self.scatter.setData(pos=self.xy[self.shown], brush=[self._brushes[i] for i in self._group_of[self.shown]],
                             data=self.shown, hoverable=False)
        width, height = max(right - left, 1e-12), max(top - bottom, 1e-12)
        column = np.minimum(((x[inside] - left) * (DENSITY_BINS / width)).astype(np.int64), DENSITY_BINS - 1)
        row = np.minimum(((y[inside] - bottom) * (DENSITY_BINS / height)).astype(np.int64), DENSITY_BINS - 1)
        self.density_counts = np.bincount(row * DENSITY_BINS + column,
                                          minlength=DENSITY_BINS * DENSITY_BINS).reshape(DENSITY_BINS, DENSITY_BINS)
        shade = np.log1p(self.density_counts).astype(np.float32)
        self.density.setImage(shade, autoLevels=False, levels=(0.0, max(float(shade.max()), 1e-6)))
        self.density.setRect(QRectF(left, bottom, width, height))

    def _on_clicked(self, _item, spots, _event) -> None:
        if len(spots) and not self.large:
            self.point_clicked.emit(self.paths[int(spots[0].data())])

    def _on_hovered(self, _item, spots, _event) -> None:
        if self.large:
            return
        if not len(spots):
            self.preview.hide()
            return
        self._show_preview(self.paths[int(spots[0].data())])

    def _view_point(self, scene_pos) -> tuple[float, float] | None:
        box = self.plot.getPlotItem().getViewBox()
        if not box.sceneBoundingRect().contains(scene_pos):
            return None
        point = box.mapSceneToView(scene_pos)
        return point.x(), point.y()

    def _on_mouse_moved(self, scene_pos) -> None:
        if not self.large:
            return
        where = self._view_point(scene_pos)
        picked = self.point_at(*where) if where is not None else None
        if picked is None:
            self.marker.clear()
            self.preview.hide()
            return
        self.marker.setData(pos=self.xy[picked:picked + 1])
        self._show_preview(self.paths[picked])

    def _on_scene_clicked(self, event) -> None:
        if not self.large or event.button() != Qt.MouseButton.LeftButton:
            return
        where = self._view_point(event.scenePos())
        picked = self.point_at(*where) if where is not None else None
        if picked is not None:
            self.point_clicked.emit(self.paths[picked])

    def _show_preview(self, path: str) -> None:
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
