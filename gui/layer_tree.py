"""The layer browser: every module with its output, parameters and receptive field, and what
each layer is good for.

The dock is narrow (the picture gets the room), so the columns shown at first are the
ones that fit in it without a horizontal scroll: the layer, its output (channels × grid
for every layer that lies over the image, however its tensor is laid out: a
transformer's 197 tokens read "192×14×14", the class token set aside) and the size of its
receptive field ("RF", in input pixels, or "whole image" where every unit sees all of
it). Type and parameter count are a right click on the header away, and every row's
tooltip says all of it: the layout in words, the field's jump and start, why a layer
sees the whole image.

What each layer is good for comes later than the tree (the engine's ``LayerGuide``, a
forward and backward pass away, worked out on the engine thread): the recommended
Grad-CAM layer is set in bold with a "Grad-CAM" badge, the layers "early", "middle" and
"late" stand for get theirs, and layers whose tokens attention has mixed say "whole image".
"""

from __future__ import annotations

import html
import textwrap

from PySide6.QtCore import QModelIndex, QRect, QSize, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QAction, QColor, QFont, QFontMetrics, QPainter, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QHeaderView, QLineEdit, QStyle, QStyledItemDelegate,
                               QStyleOptionViewItem, QTreeView, QVBoxLayout, QWidget)

from gui.tooltips import LINE

COLUMNS = ("Layer", "Output", "RF (px)", "Type", "Params")
FIELD = COLUMNS.index("RF (px)")
HIDDEN_AT_FIRST = ("Type", "Params")
PATH_ROLE = Qt.ItemDataRole.UserRole + 1
BADGES_ROLE = Qt.ItemDataRole.UserRole + 2  # the marks drawn after a layer's name ("Grad-CAM", "late")
INDENT = 12  # pixels per level: expand_relu6 sits four levels deep
WHOLE_IMAGE = "whole image"
GRADCAM = "Grad-CAM"
BADGE_COLOURS = {GRADCAM: QColor("#c0562b")}  # the others: PRESET_COLOUR
PRESET_COLOUR = QColor("#4f6f8f")
# What the presets stand for, as the method forms' "early", "middle" and "late" mean them.
PRESET_WORDS = {"early": "edges, colours, simple textures", "middle": "textures and patterns",
                "late": "object parts, whole objects"}


def _number(value: float) -> str:
    return f"{value:g}"


def _field_size(field) -> str:
    """The receptive field's extent alone, as its column shows it: "115", "1043×1171" (height × width)."""
    height, width = field.size
    return _number(height) if height == width else f"{_number(height)}×{_number(width)}"


def _field_cell(node, guide) -> str:
    if node.sees_whole_image(guide):
        return WHOLE_IMAGE
    field = node.receptive_field if node.is_conv_or_pool else None
    return _field_size(field) if field is not None else ""


def _output_text(node) -> str:
    """Channels × grid for a layer that lies over the image, whatever its tensor's layout
    (tokens without their class token, which the tooltip mentions); else the shape
    without the batch axis."""
    layout = node.layout
    if layout is not None and layout.spatial and layout.grid:
        return f"{layout.channels}×{layout.grid[0]}×{layout.grid[1]}"
    return _format_shape(node.output_shape)


def _row_tooltip(node, guide) -> str:
    """Everything the row knows, wrapped (rich text) so it never runs the width of the screen."""
    lines = [f"<b>{html.escape(node.path)}</b> ({html.escape(node.type_name)})"]
    if node.output_shape:
        described = node.layout_text
        stored = _format_shape(node.output_shape)
        if described and node.layout.kind == "tokens":
            lines.append(f"output: {html.escape(described)}, {node.layout.channels} channels each ({stored} as stored)")
        elif described and node.layout.kind == "channels-last":
            lines.append(f"output: {html.escape(described)} ({stored}: height × width × channels)")
        elif described and node.layout.spatial:
            lines.append(f"output: {html.escape(described)}, {node.layout.channels} channels ({stored})")
        else:
            axes = " (channels × height × width)" if len(node.output_shape) == 4 else ""
            lines.append(f"output {stored}{axes}" + (f": {html.escape(described)}" if described else ""))
    lines.append(f"{node.total_params:,} parameters")
    field = node.receptive_field if node.is_conv_or_pool else None
    if node.sees_whole_image(guide):
        lines.append(f"receptive field: the whole image. {_whole_image_reason(node)}")
    elif field is not None:
        lines.append(f"receptive field {html.escape(str(field))}: its size in input pixels, the jump (stride) "
                     "between neighbouring units' fields, and the centre of the first unit's field")
    for role in guide.roles(node.path) if guide is not None else []:
        if role == GRADCAM:
            lines.append("<b>recommended for Grad-CAM</b>: the last spatial layer the class score depends on")
        else:
            lines.append(f"the “{role}” layer of the method forms ({PRESET_WORDS.get(role, role)})")
    # Broken into lines of a readable width here, each kept whole, as gui.tooltips does: Qt's
    # own wrapping squeezes a rich-text tooltip into a narrow column.
    return "<qt>" + "<br>".join(f"<nobr>{part}</nobr>" for line in lines
                                for part in textwrap.wrap(line, LINE, break_long_words=False)) + "</qt>"


def _whole_image_reason(node) -> str:
    if node.is_conv_or_pool and node.receptive_field is None:
        return "It pools (or convolves) the whole map into one value per channel."
    if node.layout is not None and node.layout.kind == "tokens":
        return ("Attention has mixed every patch with every other by here, so each token holds something of "
                "all of them.")
    return "An operation before it (attention, a global pooling) mixes every position, so each unit holds something of all."


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


class _BadgeDelegate(QStyledItemDelegate):
    """Draws a row's marks ("Grad-CAM", "late") as small rounded badges at the right of its
    name's cell; the column widens to hold them (its size hint counts them)."""

    PADDING, GAP = 3, 2

    def _badges(self, index: QModelIndex) -> list[str]:
        return index.data(BADGES_ROLE) or []

    def _font(self, option: QStyleOptionViewItem) -> QFont:
        font = QFont(option.font)
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        return font

    def _widths(self, option: QStyleOptionViewItem, badges: list[str]) -> list[int]:
        metrics = QFontMetrics(self._font(option))
        return [metrics.horizontalAdvance(badge) + 2 * self.PADDING for badge in badges]

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        size = super().sizeHint(option, index)
        badges = self._badges(index)
        if badges:
            size.setWidth(size.width() + sum(self._widths(option, badges)) + self.GAP * (len(badges) + 1))
        return size

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        badges = self._badges(index)
        if not badges:
            super().paint(painter, option, index)
            return
        widths = self._widths(option, badges)
        room = sum(widths) + self.GAP * (len(badges) + 1)
        # The row's background and selection span the badges too; the name is drawn left of them.
        full = QStyleOptionViewItem(option)
        self.initStyleOption(full, index)
        style = option.widget.style() if option.widget is not None else QApplication.style()
        style.drawPrimitive(QStyle.PrimitiveElement.PE_PanelItemViewItem, full, painter, option.widget)
        named = QStyleOptionViewItem(option)
        named.rect = option.rect.adjusted(0, 0, -room, 0)
        super().paint(painter, named, index)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setFont(self._font(option))
        height = painter.fontMetrics().height() + 2
        top = option.rect.top() + (option.rect.height() - height) // 2
        left = option.rect.right() - room + self.GAP + 1
        for badge, width in zip(badges, widths):
            box = QRect(left, top, width, height)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(BADGE_COLOURS.get(badge, PRESET_COLOUR))
            painter.drawRoundedRect(box, height / 2.5, height / 2.5)
            painter.setPen(QColor("white"))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, badge)
            left += width + self.GAP
        painter.restore()


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
        self.view.setItemDelegateForColumn(0, _BadgeDelegate(self.view))
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
        self._nodes: dict[str, object] = {}  # path -> the engine's LayerNode shown on its row
        self._guide = None  # the engine's LayerGuide for the model on show, once known

    def set_tree(self, root) -> None:
        """Show a LayerNode tree; keeps the selection when only the shapes changed."""
        selected = self.current_path()
        expanded = {path for path, item in self._items.items() if self.view.isExpanded(self.proxy.mapFromSource(item.index()))}
        self.model.removeRows(0, self.model.rowCount())
        self._items.clear()
        self._nodes.clear()
        for child in root.children:
            self._add(self.model.invisibleRootItem(), child)
        if not expanded:
            self.view.expandToDepth(0)
        for path in expanded:
            if path in self._items:
                self.view.expand(self.proxy.mapFromSource(self._items[path].index()))
        if selected in self._items:
            self.select(selected, emit=False)

    def set_guide(self, guide) -> None:
        """Mark what each layer is good for, as the engine's ``LayerGuide`` says (the
        Grad-CAM layer, the presets, the layers that see the whole image); None clears the
        marks (another model)."""
        before = self._guide.marked_paths() if self._guide is not None else set()
        self._guide = guide
        after = guide.marked_paths() if guide is not None else set()
        for path in before | after:
            if path in self._items:
                self._show_marks(self._nodes[path], self._row(path))
        # The columns size to their contents as rows come, not as their texts change.
        for column in range(len(COLUMNS)):
            if not self.view.isColumnHidden(column):
                self.view.resizeColumnToContents(column)

    @property
    def guide(self):
        return self._guide

    def _add(self, parent: QStandardItem, node) -> None:
        cells = [
            QStandardItem(node.name),
            QStandardItem(_output_text(node)),
            QStandardItem(""),
            QStandardItem(node.type_name),
            QStandardItem(_format_count(node.total_params)),
        ]
        cells[0].setData(node.path, PATH_ROLE)
        self._show_marks(node, cells)  # before the row is added, which sizes the columns to it
        parent.appendRow(cells)
        self._items[node.path] = cells[0]
        self._nodes[node.path] = node
        for child in node.children:
            self._add(cells[0], child)

    def _row(self, path: str) -> list[QStandardItem]:
        item = self._items[path]
        parent = item.parent() or self.model.invisibleRootItem()
        return [parent.child(item.row(), column) for column in range(len(COLUMNS))]

    def _show_marks(self, node, cells: list[QStandardItem]) -> None:
        """The row's receptive field, badges, weight and tooltip, as the guide (if any) has them."""
        guide = self._guide
        cells[FIELD].setText(_field_cell(node, guide))
        badges = guide.roles(node.path) if guide is not None else []
        cells[0].setData(badges or None, BADGES_ROLE)
        font = cells[0].font()
        font.setBold(GRADCAM in badges)
        cells[0].setFont(font)
        tooltip = _row_tooltip(node, guide)
        for cell in cells:
            cell.setToolTip(tooltip)

    def badges(self, path: str) -> list[str]:
        """The marks drawn after the layer's name."""
        item = self._items.get(path)
        return list(item.data(BADGES_ROLE) or []) if item is not None else []

    def cell_text(self, path: str, column: str) -> str:
        return self._row(path)[COLUMNS.index(column)].text()

    def tooltip(self, path: str) -> str:
        return self._items[path].toolTip()

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
