"""The layer browser: every module with its output shape, parameters and receptive field."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLineEdit, QTreeView, QVBoxLayout, QWidget

COLUMNS = ("Layer", "Output", "Receptive field", "Type", "Params")
PATH_ROLE = Qt.ItemDataRole.UserRole + 1


def _format_shape(shape) -> str:
    if not shape:
        return ""
    return "×".join(str(s) for s in shape[1:])  # drop the batch axis


def _format_count(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1e6:.2f} M"
    if count >= 1_000:
        return f"{count / 1e3:.1f} k"
    return str(count)


class LayerTree(QWidget):
    layer_selected = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.model = QStandardItemModel(0, len(COLUMNS))
        self.model.setHorizontalHeaderLabels(COLUMNS)
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.model)
        self.proxy.setRecursiveFilteringEnabled(True)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterKeyColumn(-1)
        self.view = QTreeView()
        self.view.setModel(self.proxy)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setUniformRowHeights(True)
        self.view.setAlternatingRowColors(True)
        self.view.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.view.selectionModel().currentChanged.connect(self._on_current_changed)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Filter layers (name or type)…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._on_filter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.search)
        layout.addWidget(self.view)
        self._items: dict[str, QStandardItem] = {}
        self._tree_key = None

    def set_tree(self, root) -> None:
        """Show a LayerNode tree; keeps the selection when only the shapes changed."""
        selected = self.current_path()
        expanded = {path for path, item in self._items.items() if self.view.isExpanded(self.proxy.mapFromSource(item.index()))}
        self.model.removeRows(0, self.model.rowCount())
        self._items.clear()
        for child in root.children:
            self._add(self.model.invisibleRootItem(), child)
        if not expanded:
            self.view.expandToDepth(0)
        for path in expanded:
            if path in self._items:
                self.view.expand(self.proxy.mapFromSource(self._items[path].index()))
        if selected in self._items:
            self.select(selected, emit=False)

    def _add(self, parent: QStandardItem, node) -> None:
        rf = node.receptive_field
        cells = [
            QStandardItem(node.name),
            QStandardItem(_format_shape(node.output_shape)),
            QStandardItem(str(rf) if rf is not None and node.is_conv_or_pool else ""),
            QStandardItem(node.type_name),
            QStandardItem(_format_count(node.total_params)),
        ]
        cells[2].setToolTip("Receptive field: size in input pixels, jump (stride) between units, centre of the first unit")
        cells[0].setData(node.path, PATH_ROLE)
        cells[0].setToolTip(node.path)
        parent.appendRow(cells)
        self._items[node.path] = cells[0]
        for child in node.children:
            self._add(cells[0], child)

    def current_path(self) -> str | None:
        index = self.view.currentIndex()
        if not index.isValid():
            return None
        return self.proxy.mapToSource(index.siblingAtColumn(0)).data(PATH_ROLE)

    def select(self, path: str, emit: bool = True) -> bool:
        item = self._items.get(path)
        if item is None:
            return False
        index = self.proxy.mapFromSource(item.index())
        if not index.isValid():
            self.search.clear()
            index = self.proxy.mapFromSource(item.index())
        self.view.blockSignals(not emit)
        self.view.selectionModel().blockSignals(not emit)
        self.view.setCurrentIndex(index)
        self.view.selectionModel().blockSignals(False)
        self.view.blockSignals(False)
        self.view.scrollTo(index)
        return True

    def index_of(self, path: str) -> QModelIndex:
        item = self._items.get(path)
        return self.proxy.mapFromSource(item.index()) if item else QModelIndex()

    def paths(self) -> list[str]:
        return list(self._items)

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.layer_selected.emit(self.proxy.mapToSource(current.siblingAtColumn(0)).data(PATH_ROLE))

    def _on_filter(self, text: str) -> None:
        self.proxy.setFilterFixedString(text)
        if text:
            self.view.expandAll()
