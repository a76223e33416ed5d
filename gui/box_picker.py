"""The open photo with its boxes around the object, where a drag draws another: how the
Compare view gets boxes for the pointing game.

The picker only shows and reports: a finished drag emits the box in the photo's pixels,
and the view hands it to the session, where the boxes live; the view then shows the
session's boxes here again.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from engine.view.gallery import BOX

MIN_DRAG = 4  # screen pixels: a shorter drag is a click that slipped, not a box
WIDEST = 2.5  # the picker's widest, as a multiple of its height (a panorama is shown smaller)


class BoxPicker(QWidget):
    box_drawn = Signal(tuple)  # (x0, y0, x1, y1) in the photo's pixels, whole pixels

    def __init__(self, height: int, parent=None) -> None:
        super().__init__(parent)
        self._height = height
        self._rgb: np.ndarray | None = None
        self._image: QImage | None = None
        self.boxes: list[tuple[float, float, float, float]] = []
        self._drag: tuple[QPointF, QPointF] | None = None  # where the drag began and where it is now
        self.setFixedSize(height, height)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setToolTip("drag on the photo to draw a box around the object")

    def set_photo(self, rgb: np.ndarray | None, boxes) -> None:
        """Show ``rgb`` (H x W x 3 uint8; None: no photo) with ``boxes`` (x0, y0, x1, y1 in its pixels)."""
        if rgb is not self._rgb:
            self._rgb = rgb
            self._drag = None
            if rgb is None:
                self._image = None
                self.setFixedSize(self._height, self._height)
            else:
                pixels = np.ascontiguousarray(rgb)
                self._image = QImage(pixels.data, pixels.shape[1], pixels.shape[0], pixels.strides[0],
                                     QImage.Format.Format_RGB888).copy()
                width = min(round(self._height * pixels.shape[1] / pixels.shape[0]), round(WIDEST * self._height))
                self.setFixedSize(max(width, 1), self._height)
        self.boxes = [tuple(box) for box in boxes]
        self.update()

    def photo_rect(self) -> QRectF:
        """Where the photo is drawn: as large as fits, kept in proportion, centred."""
        if self._image is None:
            return QRectF()
        scale = min(self.width() / self._image.width(), self.height() / self._image.height())
        width, height = self._image.width() * scale, self._image.height() * scale
        return QRectF((self.width() - width) / 2, (self.height() - height) / 2, width, height)

    def photo_point(self, position: QPointF) -> tuple[float, float]:
        """The photo's pixel (x, y) under a point of the widget, kept within the photo."""
        rect = self.photo_rect()
        scale = self._image.width() / rect.width()
        x = min(max((position.x() - rect.left()) * scale, 0.0), float(self._image.width()))
        y = min(max((position.y() - rect.top()) * scale, 0.0), float(self._image.height()))
        return x, y

    def widget_point(self, x: float, y: float) -> QPointF:
        """The point of the widget over the photo's pixel (x, y)."""
        rect = self.photo_rect()
        scale = rect.width() / self._image.width()
        return QPointF(rect.left() + x * scale, rect.top() + y * scale)

    # -- drawing a box ----------------------------------------------------------------------------
    def mousePressEvent(self, event) -> None:
        if self._image is not None and event.button() == Qt.MouseButton.LeftButton:
            self._drag = (event.position(), event.position())
            self.update()

    def mouseMoveEvent(self, event) -> None:
        if self._drag is not None:
            self._drag = (self._drag[0], event.position())
            self.update()

    def mouseReleaseEvent(self, event) -> None:
        if self._drag is None or event.button() != Qt.MouseButton.LeftButton:
            return
        start, end = self._drag[0], event.position()
        self._drag = None
        self.update()
        if max(abs(end.x() - start.x()), abs(end.y() - start.y())) < MIN_DRAG:
            return
        (xa, ya), (xb, yb) = self.photo_point(start), self.photo_point(end)
        # Whole pixels, outwards: the box keeps every pixel the drag touched
        x0, y0 = int(np.floor(min(xa, xb))), int(np.floor(min(ya, yb)))
        x1, y1 = int(np.ceil(max(xa, xb))), int(np.ceil(max(ya, yb)))
        if x1 > x0 and y1 > y0:  # a drag along the photo's edge, outside it, gives no box
            self.box_drawn.emit((x0, y0, x1, y1))

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(40, 40, 40))
        if self._image is None:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, "no photo open")
            return
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        painter.drawImage(self.photo_rect(), self._image)
        painter.setPen(QPen(QColor(*BOX), 2))
        for x0, y0, x1, y1 in self.boxes:
            painter.drawRect(QRectF(self.widget_point(x0, y0), self.widget_point(x1, y1)))
        if self._drag is not None:
            painter.setPen(QPen(QColor(*BOX), 1, Qt.PenStyle.DashLine))
            painter.drawRect(QRectF(*self._drag).normalized())
