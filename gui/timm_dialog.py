"""Model > timm model...: timm's pretrained classifiers, filtered as one types, one loaded by
Enter, a double click or Load.

Listing them imports timm and reads each model's pretrained config (seconds), and whether
a model's weights are on this computer is a look into the Hugging Face cache for each, so
both run on a thread of their own (``_Listing``, on Qt's thread pool) when the dialog
opens: it is on screen at once, says it is listing, and fills when the list arrives.
Later openings show the list at once and look at the cache again on that thread (a
model loaded since is "cached" now). Not on the engine thread: a listing runs no model,
and should not wait behind a long DeepDream.

The filter is the ``QSortFilterProxyModel``'s regular expression, one look-ahead per word,
so "convnext tiny" keeps the names that hold both words in any order and any case: the
rule of ``engine.models.timm_models.name_matches`` (which ``python main.py models --timm``
uses), evaluated by Qt without a Python call per row.

The chosen name goes to the window's ``load_model`` ("timm:NAME"), which loads it on the
engine thread with its progress in the status bar, and offers to open a weights file when
the weights are not on this computer and cannot be downloaded.
"""

from __future__ import annotations

import html
import re
from typing import Callable

from PySide6.QtCore import (QAbstractTableModel, QCoreApplication, QEvent, QModelIndex, QObject, QRegularExpression, QRunnable,
                            QSortFilterProxyModel, Qt, QThreadPool, Signal)
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHeaderView, QLabel, QLineEdit,
                               QTreeView, QVBoxLayout)

COLUMNS = ("Model", "Trained on", "Weights")
NAME, DESCRIPTION, WEIGHTS = range(len(COLUMNS))
CACHED, TO_DOWNLOAD = "cached", "download"
NAME_ROLE = Qt.ItemDataRole.UserRole + 1  # the model name to load: "timm:NAME"
# The keys that move through the list while the focus stays in the filter field.
_LIST_KEYS = (Qt.Key.Key_Up, Qt.Key.Key_Down, Qt.Key.Key_PageUp, Qt.Key.Key_PageDown)


def filter_pattern(text: str) -> str:
    """A regular expression that matches a name holding every word of ``text`` (one
    look-ahead per word; case is the proxy's to ignore); "" matches everything."""
    return "".join(f"(?=.*{re.escape(word)})" for word in text.split())


def _list_catalogue() -> tuple[str, tuple, frozenset[str]]:
    """timm's "timm:" prefix, its catalogue and the names whose weights are cached (the thread pool's work)."""
    from engine.models.timm_models import PREFIX, timm_catalogue

    entries = timm_catalogue()
    return PREFIX, entries, frozenset(entry.name for entry in entries if entry.is_cached())


class _Listed(QObject):
    done = Signal(object)  # (prefix, entries, cached names); queued to the UI thread
    failed = Signal(str)


class _Listing(QRunnable):
    def __init__(self, signals: _Listed) -> None:
        super().__init__()
        self.signals = signals

    def run(self) -> None:
        try:
            listed = _list_catalogue()
        except Exception as error:  # noqa: BLE001 - timm missing or broken: the dialog says so
            self.signals.failed.emit(f"timm's models could not be listed: {type(error).__name__}: {error}")
            return
        self.signals.done.emit(listed)


class CatalogueModel(QAbstractTableModel):
    """timm's catalogue as rows: name, what it was trained on (dataset, classes, input
    size) and whether its weights are on this computer."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.prefix = ""
        self.entries: tuple = ()
        self.cached: frozenset[str] = frozenset()
        self._dim = QPalette().color(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)  # "download"

    def set_catalogue(self, prefix: str, entries: tuple, cached: frozenset[str]) -> None:
        if entries != self.entries:
            self.beginResetModel()
            self.prefix, self.entries, self.cached = prefix, entries, cached
            self.endResetModel()
        elif cached != self.cached:
            self.cached = cached
            self.dataChanged.emit(self.index(0, WEIGHTS), self.index(len(entries) - 1, WEIGHTS))

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        entry = self.entries[index.row()]
        cached = entry.name in self.cached
        if role == Qt.ItemDataRole.DisplayRole:
            return (entry.name, entry.description, CACHED if cached else TO_DOWNLOAD)[index.column()]
        if role == NAME_ROLE:
            return self.prefix + entry.name
        if role == Qt.ItemDataRole.ToolTipRole:
            where = ("its weights are on this computer" if cached else
                     f"its weights are downloaded when it loads (from {html.escape(entry.hub_id or 'timm')}; "
                     "progress in the status bar, Esc cancels)")
            return (f"<qt><b>{html.escape(self.prefix + entry.name)}</b><br>{html.escape(entry.description)}"
                    f"<br>{where}</qt>")
        if role == Qt.ItemDataRole.ForegroundRole and index.column() == WEIGHTS and not cached:
            return self._dim
        return None


class TimmDialog(QDialog):
    """The searchable list; ``load(name)`` is called with "timm:NAME" for the model chosen."""

    def __init__(self, parent, load: Callable[[str], object]) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open a timm model")
        self._load = load
        self.catalogue = CatalogueModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.catalogue)
        self.proxy.setFilterKeyColumn(NAME)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by name: convnext tiny, vit in21k, efficientnetv2…")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._on_filter)
        self.filter.installEventFilter(self)
        self.view = QTreeView()
        self.view.setModel(self.proxy)
        self.view.setRootIsDecorated(False)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setSortingEnabled(True)
        self.view.sortByColumn(NAME, Qt.SortOrder.AscendingOrder)
        self.view.header().setStretchLastSection(False)
        self.view.header().setSectionResizeMode(DESCRIPTION, QHeaderView.ResizeMode.Stretch)
        self.view.doubleClicked.connect(lambda _index: self.accept())
        self.view.selectionModel().currentChanged.connect(lambda *_: self._enable_load())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        self.load_button = buttons.button(QDialogButtonBox.StandardButton.Open)
        self.load_button.setText("Load")
        self.load_button.setDefault(True)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.status)
        layout.addWidget(buttons)
        self._listed = _Listed()  # no parent: it outlives a dialog deleted while a listing runs
        self._listed.done.connect(self._on_listed)
        self._listed.failed.connect(self.status.setText)
        self.listing = False
        self.resize(920, 600)
        self._enable_load()

    # -- opening and listing --------------------------------------------------------------
    def open_list(self) -> None:
        """Show the dialog now; the list (or its cache column) arrives from the listing thread."""
        if not self.catalogue.entries:
            self.status.setText("Listing timm's pretrained models…")
        self._start_listing()
        self.open()
        self.filter.setFocus()
        self.filter.selectAll()

    def _start_listing(self) -> None:
        if not self.listing:
            self.listing = True
            QThreadPool.globalInstance().start(_Listing(self._listed))

    def _on_listed(self, listed) -> None:
        self.listing = False
        first = not self.catalogue.entries
        self.catalogue.set_catalogue(*listed)
        if first:
            metrics = self.view.fontMetrics()
            longest = max((entry.name for entry in self.catalogue.entries), key=len, default="")
            self.view.setColumnWidth(NAME, metrics.horizontalAdvance(longest) + 24)
            self.view.setColumnWidth(WEIGHTS, metrics.horizontalAdvance(f"{TO_DOWNLOAD}  {COLUMNS[WEIGHTS]}") + 24)
        self._on_filter(self.filter.text())

    # -- filtering and choosing ----------------------------------------------------------
    def _on_filter(self, text: str) -> None:
        self.proxy.setFilterRegularExpression(QRegularExpression(
            filter_pattern(text), QRegularExpression.PatternOption.CaseInsensitiveOption))
        if not self.view.currentIndex().isValid() and self.proxy.rowCount():
            self.view.setCurrentIndex(self.proxy.index(0, NAME))
        self.view.scrollTo(self.view.currentIndex())
        self._say_count()
        self._enable_load()

    def _say_count(self) -> None:
        total, shown = self.catalogue.rowCount(), self.proxy.rowCount()
        if not total:
            return
        cached = len(self.catalogue.cached)
        matching = f"{shown:,} match “{self.filter.text().strip()}”" if self.filter.text().strip() else "all shown"
        self.status.setText(f"{total:,} pretrained classifiers ({cached:,} with their weights on this computer); "
                            f"{matching}. Weights not on this computer are downloaded when the model loads.")

    def visible_names(self) -> list[str]:
        """The names the list shows now, in its order ("timm:NAME")."""
        return [self.proxy.index(row, NAME).data(NAME_ROLE) for row in range(self.proxy.rowCount())]

    def chosen(self) -> str | None:
        index = self.view.currentIndex()
        return index.siblingAtColumn(NAME).data(NAME_ROLE) if index.isValid() else None

    def _enable_load(self) -> None:
        self.load_button.setEnabled(self.chosen() is not None)

    def accept(self) -> None:
        name = self.chosen()
        if name is None:
            return  # nothing chosen (the filter matches nothing): the dialog stays
        super().accept()
        self._load(name)

    def eventFilter(self, watched, event) -> bool:
        # Up and Down in the filter field move through the list: type, arrow, Enter.
        if watched is self.filter and event.type() == QEvent.Type.KeyPress and event.key() in _LIST_KEYS:
            QCoreApplication.sendEvent(self.view, event)
            return True
        return super().eventFilter(watched, event)
