"""The layer browser: every module with its output shape, parameters and receptive field.

The dock is narrow (the picture gets the room), so the columns shown at first are the
ones that fit in it without a horizontal scroll: the layer, its output and the size of
its receptive field ("RF", in input pixels). Type and parameter count are a right click
on the header away, and every row's tooltip says all of it, the field's jump and start
included.
"""

from __future__ import annotations

import html

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QAction, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLineEdit, QTreeView, QVBoxLayout, QWidget

COLUMNS = ("Layer", "Output", "RF (px)", "Type", "Params")
FIELD = COLUMNS.index("RF (px)")
HIDDEN_AT_FIRST = ("Type", "Params")
PATH_ROLE = Qt.ItemDataRole.UserRole + 1
INDENT = 12  # pixels per level: expand_relu6 sits four levels deep


def _number(value: float) -> str:
    return f"{value:g}"


def _field_size(field) -> str:
    """The receptive field's extent alone, as its column shows it: "115", "1043×1171" (height × width)."""
    height, width = field.size
    return _number(height) if height == width else f"{_number(height)}×{_number(width)}"


def _row_tooltip(node, field) -> str:
    """Everything the row knows, wrapped (rich text) so it never runs the width of the screen."""
    lines = [f"<b>{html.escape(node.path)}</b> ({html.escape(node.type_name)})"]
    if node.output_shape:
        axes = " (channels × height × width)" if len(node.output_shape) == 4 else ""
        lines.append(f"output {_format_shape(node.output_shape)}{axes}")
    lines.append(f"{node.total_params:,} parameters")
    if field is not None:
        lines.append(f"receptive field {html.escape(str(field))}: its size in input pixels, the jump (stride) "
                     "between neighbouring units' fields, and the centre of the first unit's field")
    return "<qt>" + "<br>".join(lines) + "</qt>"


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
        self.view.setIndentation(INDENT)
        header = self.view.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(False)
        self.model.setHeaderData(FIELD, Qt.Orientation.Horizontal,
                                 "<qt>Receptive field: its size in input pixels (height×width where they differ). "
                                 "A row's tooltip adds its jump and start.</qt>", Qt.ItemDataRole.ToolTipRole)
        # Right click on the header: which columns to show.
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.column_actions: dict[str, QAction] = {}
        for column, title in enumerate(COLUMNS[1:], start=1):
            name = "receptive field" if column == FIELD else title.lower()
            action = QAction(f"Show {name}", header, checkable=True, checked=title not in HIDDEN_AT_FIRST)
            action.toggled.connect(lambda shown, c=column: self.view.setColumnHidden(c, not shown))
            header.addAction(action)
            self.column_actions[title] = action
            self.view.setColumnHidden(column, title in HIDDEN_AT_FIRST)
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
        field = node.receptive_field if node.is_conv_or_pool else None
        cells = [
            QStandardItem(node.name),
            QStandardItem(_format_shape(node.output_shape)),
            QStandardItem(_field_size(field) if field is not None else ""),
            QStandardItem(node.type_name),
            QStandardItem(_format_count(node.total_params)),
        ]
        tooltip = _row_tooltip(node, field)
        for cell in cells:
            cell.setToolTip(tooltip)
        cells[0].setData(node.path, PATH_ROLE)
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
