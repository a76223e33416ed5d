"""Dataset > Browse: the dataset as a grid of thumbnails with labels; a click opens the image.

A ``QListView`` in icon mode over ``DatasetModel``, a list model of the dataset's files
(the listing only: ``engine.data.datasets.open_dataset`` reads no pixels). A thumbnail is
decoded only when the view asks for it, which it does for the rows on screen (uniform
item sizes: Qt never asks for the others), on a small thread pool; a 100,000-file folder
opens at once and decodes a screenful. Decoded thumbnails are kept in a bounded cache, so
scrolling back is instant without holding the whole folder in memory.

Also here: the note the dataset panels (neighbours, patches, embedding) show when their
dataset is too small to mean anything (``engine.data.dataset_size``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PIL import Image, ImageOps
from PySide6.QtCore import (QAbstractListModel, QModelIndex, QObject, QRunnable, QSize, Qt, QThreadPool, Signal)
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QDialog, QLabel, QListView, QVBoxLayout

from engine.data.dataset_size import ENOUGH_IMAGES, small_dataset_note

THUMBNAIL = 96
CACHE = 2000  # thumbnails kept (about 37 KB each): a few screens' worth either way of the view
DECODE_THREADS = 2


def thumbnail_image(path: str, size: int = THUMBNAIL) -> QImage:
    """``path`` decoded at ``size`` px on its longer side (JPEGs at reduced scale),
    EXIF orientation applied; a null QImage when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # a JPEG decodes at 1/2, 1/4 or 1/8 scale: far less work
            image = ImageOps.exif_transpose(image).convert("RGB")
            if max(image.size) > size:
                image.thumbnail((size, size))
            else:  # a small picture (an 8x8 digit drawn at 64 px) enlarged with its pixels kept sharp
                image = ImageOps.contain(image, (size, size), Image.Resampling.NEAREST)
            data = image.tobytes()
            return QImage(data, image.width, image.height, 3 * image.width, QImage.Format.Format_RGB888).copy()
    except (OSError, ValueError, Image.DecompressionBombError):
        return QImage()


class _Decoded(QObject):
    done = Signal(str, QImage)  # path, thumbnail (null when unreadable); queued to the UI thread


class _Decode(QRunnable):
    def __init__(self, path: str, signals: _Decoded) -> None:
        super().__init__()
        self.path, self.signals = path, signals

    def run(self) -> None:
        self.signals.done.emit(self.path, thumbnail_image(self.path))


class DatasetModel(QAbstractListModel):
    """The dataset's files as rows: the file name (and its label) as text, the thumbnail
    as decoration once decoded. ``requested`` counts the decodes started, for the tests
    and to show that only what is on screen is read."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.items: list = []  # engine DatasetItems
        self.requested = 0
        self._rows: dict[str, int] = {}
        self._thumbnails: OrderedDict[str, QPixmap] = OrderedDict()
        self._pending: set[str] = set()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(DECODE_THREADS)
        self._signals = _Decoded()
        self._signals.done.connect(self._on_decoded)
        self._placeholder = QPixmap(THUMBNAIL, THUMBNAIL)
        self._placeholder.fill(QColor("#3a3a3a"))

    def set_items(self, items) -> None:
        self.beginResetModel()
        self.items = list(items)
        self._rows = {item.path: row for row, item in enumerate(self.items)}
        self._thumbnails.clear()
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt's name
        return 0 if parent.isValid() else len(self.items)

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or index.row() >= len(self.items):
            return None
        item = self.items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{item.label}\n{item.name}" if item.label else item.name
        if role == Qt.ItemDataRole.ToolTipRole:
            return item.path
        if role == Qt.ItemDataRole.UserRole:
            return item.path
        if role == Qt.ItemDataRole.DecorationRole:
            return self._thumbnail(item.path)
        return None

    def _thumbnail(self, path: str) -> QPixmap:
        pixmap = self._thumbnails.get(path)
        if pixmap is not None:
            self._thumbnails.move_to_end(path)
            return pixmap
        if path not in self._pending:
            self._pending.add(path)
            self.requested += 1
            self._pool.start(_Decode(path, self._signals))
        return self._placeholder

    def _on_decoded(self, path: str, image: QImage) -> None:
        self._pending.discard(path)
        row = self._rows.get(path)
        if row is None:  # a dataset shown before this one
            return
        self._thumbnails[path] = QPixmap.fromImage(image) if not image.isNull() else self._placeholder
        while len(self._thumbnails) > CACHE:
            self._thumbnails.popitem(last=False)
        index = self.index(row)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def loaded(self) -> set[str]:
        """The paths whose thumbnails are decoded and kept."""
        return set(self._thumbnails)

    def pending(self) -> int:
        return len(self._pending)

    def wait(self) -> None:
        self._pool.waitForDone()


class DatasetBrowser(QDialog):
    """The thumbnail grid of one dataset; ``image_clicked`` carries the path clicked."""

    image_clicked = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Dataset")
        self.heading = QLabel("")
        self.heading.setWordWrap(True)
        self.model = DatasetModel(self)
        self.view = QListView()
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)  # Qt sizes one item, not 100,000, and asks only for visible rows
        self.view.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.view.setGridSize(QSize(THUMBNAIL + 24, THUMBNAIL + 40))
        self.view.setWordWrap(True)
        self.view.setModel(self.model)
        self.view.clicked.connect(lambda index: self.image_clicked.emit(index.data(Qt.ItemDataRole.UserRole)))
        layout = QVBoxLayout(self)
        layout.addWidget(self.heading)
        layout.addWidget(self.view, 1)
        self.resize(760, 560)

    def show_dataset(self, dataset) -> None:
        """Show an ``engine.data.datasets.Dataset`` (its listing: no pixels are read here)."""
        labels = f" in {len(dataset.classes)} labels" if dataset.classes else ""
        self.heading.setText(f"<b>{dataset.name}</b>: {len(dataset):,} images{labels}. Click one to open it.")
        self.model.set_items(dataset.items)
        self.view.scrollToTop()
        self.show()
        self.raise_()


def current_dataset(window) -> str:
    """The dataset the dataset panels are set to: the panel in front's, else the embedding's."""
    for panel in (window.current_panel(), window.panels.get("embed")):
        if panel is not None and "dataset" in panel.editors:
            return panel.values()["dataset"] or "samples"
    return "samples"


def browse_dataset(window, spec: str | None = None) -> None:
    """Dataset > Browse: list ``spec`` (default: the current dataset) on the engine thread,
    then show its thumbnails; a click opens the image on the canvas."""
    spec = spec or current_dataset(window)
    browser = getattr(window, "dataset_browser", None)
    if browser is None:
        browser = window.dataset_browser = DatasetBrowser(window)
        browser.image_clicked.connect(window.open_image)
    if window.session is None:
        window.show_error("Not ready", "The model is still loading.")
        return

    def listing(_session, _job):
        from engine.data.datasets import open_dataset

        return open_dataset(spec)

    return window._submit("browse", listing, f"Listing {Path(spec).name or spec}", browser.show_dataset,
                          title="Cannot open the dataset")


# -- the small-dataset note of the dataset panels -------------------------------------------------
def attach_dataset_notes(window) -> dict[str, QLabel]:
    """A note under the title of each panel that compares dataset images, shown while its
    dataset is too small to mean anything; it follows the panel's dataset field."""
    notes = {}
    for method_id, panel in window.panels.items():
        if method_id not in ENOUGH_IMAGES or "dataset" not in panel.editors:
            continue
        note = QLabel("")
        note.setWordWrap(True)
        note.setStyleSheet("color: #8a5a00; background: #fff4d6; padding: 4px; border-radius: 3px;")
        panel.layout().insertWidget(2, note)  # under the title and summary, above the form
        notes[method_id] = note
        picker = panel.editors["dataset"]
        picker.box.currentTextChanged.connect(lambda _text, m=method_id: _refresh_note(window, m, notes[m]))
        _refresh_note(window, method_id, note)
    return notes


def _refresh_note(window, method_id: str, note: QLabel) -> None:
    text = small_dataset_note(method_id, window.panels[method_id].values()["dataset"] or "")
    note.setText(text)
    note.setVisible(bool(text))
