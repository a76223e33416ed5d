"""A method's panel: its options as a form, Run and Cancel, and what the last run said.

The form is generated from the method's ``Param`` declarations, the same list the CLI
turns into flags, so the panel and the command line can never disagree on an option.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

TOP1 = "top-1 prediction"
LAYER_KEYWORDS = ("early", "middle", "late")


class MethodPanel(QWidget):
    run_requested = Signal(str, dict)  # method id, parameters
    cancel_requested = Signal(str)

    # Panels that redraw whenever the user clicks another layer in the tree.
    follows_layer = False

    def __init__(self, spec, labels: list[str], parent=None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.method_id = spec.id
        self.editors: dict[str, QWidget] = {}
        self.running = False

        title = QLabel(f"<b>{spec.title}</b>")
        summary = QLabel(spec.summary)
        summary.setWordWrap(True)
        summary.setStyleSheet("color: #555;")
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for param in spec.params:
            editor = self._editor_for(param, labels)
            editor.setToolTip(param.help)
            self.editors[param.name] = editor
            label = QLabel(param.name.replace("_", " "))
            label.setToolTip(param.help)
            form.addRow(label, editor)

        self.run_button = QPushButton("Run")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.request_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(lambda: self.cancel_requested.emit(self.method_id))
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(title)
        layout.addWidget(summary)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        self.loss_plot = None
        if spec.streams_frames:
            from gui.loss_plot import LossPlot

            self.loss_plot = LossPlot()
            self.loss_plot.hide()  # until a frame brings a loss
            layout.addWidget(self.loss_plot)
        layout.addStretch(1)

    # -- editors --------------------------------------------------------------------
    def _editor_for(self, param, labels: list[str]) -> QWidget:
        kind = param.kind
        if kind == "layer":
            box = QComboBox()
            box.setEditable(True)
            box.addItems(([param.default] if param.default not in LAYER_KEYWORDS else []) + list(LAYER_KEYWORDS))
            box.setCurrentText(str(param.default))
            return box
        if kind == "dataset":
            return DatasetPicker(str(param.default or ""))
        if kind in FilePicker.KINDS:
            return FilePicker(kind, param.default, param.suggest)
        if kind == "target":
            box = QComboBox()
            box.setEditable(True)
            box.addItem(TOP1)
            box.addItems([f"{i}: {label}" for i, label in enumerate(labels)])
            box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
            box.completer().setFilterMode(Qt.MatchFlag.MatchContains)
            box.completer().setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
            return box
        if kind == "channel":
            spin = QSpinBox()
            if param.minimum is not None:  # a channel is required
                spin.setRange(int(param.minimum), 100_000)
            else:  # -1 stands for "no channel", which each method names (all of them, the strongest)
                spin.setRange(-1, 100_000)
                spin.setSpecialValueText(param.special or "all")
            spin.setValue(-1 if param.default is None else int(param.default))
            return spin
        if kind == "bool":
            check = QCheckBox()
            check.setChecked(bool(param.default))
            return check
        if param.choices:
            box = QComboBox()
            box.addItems([str(c) for c in param.choices])
            box.setCurrentText(str(param.default))
            return box
        if kind == "int":
            spin = QSpinBox()
            spin.setRange(int(param.minimum if param.minimum is not None else -1_000_000),
                          int(param.maximum if param.maximum is not None else 1_000_000))
            spin.setValue(int(param.default))
            spin.setSpecialValueText(param.special)
            return spin
        if kind == "float":
            spin = QDoubleSpinBox()
            spin.setDecimals(4)
            spin.setSingleStep(0.01 if abs(param.default or 0) < 1 else 0.1)
            spin.setRange(float(param.minimum if param.minimum is not None else -1e6),
                          float(param.maximum if param.maximum is not None else 1e6))
            spin.setValue(float(param.default))
            return spin
        edit = QLineEdit()
        edit.setText("" if param.default is None else str(param.default))
        return edit

    def values(self) -> dict:
        values = {}
        for param in self.spec.params:
            editor = self.editors[param.name]
            if param.kind in ("layer", "dataset"):
                values[param.name] = editor.currentText().strip() or None
            elif isinstance(editor, FilePicker):
                values[param.name] = editor.value()
            elif param.kind == "target":
                text = editor.currentText().strip()
                values[param.name] = None if not text or text == TOP1 else text.split(":", 1)[0].strip()
            elif param.kind == "channel":
                values[param.name] = None if editor.value() < 0 else editor.value()
            elif param.kind == "bool":
                values[param.name] = editor.isChecked()
            elif isinstance(editor, QComboBox):
                values[param.name] = editor.currentText()
            elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
                values[param.name] = editor.value()
            else:
                values[param.name] = editor.text() or None
        return values

    def set_value(self, name: str, value) -> None:
        editor = self.editors[name]
        if isinstance(editor, FilePicker):
            editor.set_value(value)
        elif isinstance(editor, DatasetPicker):
            editor.setCurrentText(str(value))
        elif isinstance(editor, QComboBox):
            if editor.isEditable():
                editor.setCurrentText(str(value))
            else:
                editor.setCurrentIndex(max(0, editor.findText(str(value))))
        elif isinstance(editor, QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, QSpinBox):
            editor.setValue(-1 if value is None else int(value))
        elif isinstance(editor, QDoubleSpinBox):
            editor.setValue(float(value))
        else:
            editor.setText(str(value))

    def set_labels(self, labels: list[str]) -> None:
        for param in self.spec.params:
            if param.kind == "target":
                box = self.editors[param.name]
                box.clear()
                box.addItem(TOP1)
                box.addItems([f"{i}: {label}" for i, label in enumerate(labels)])

    # -- the window's calls -------------------------------------------------------------
    def layer_clicked(self, path: str) -> bool:
        """The user picked a layer in the tree; returns True when the panel wants to re-run."""
        if "layer" in self.editors:
            self.set_value("layer", path)
        return self.follows_layer

    def reset_layer(self, preset: str | None) -> None:
        """After a model change: the model's preset, or the method's own default keyword."""
        for param in self.spec.params:
            if param.kind == "layer":
                self.set_value(param.name, preset if preset and param.default == "middle" else param.default)

    def request_run(self) -> None:
        self.run_requested.emit(self.method_id, self.values())

    def set_running(self, running: bool) -> None:
        if running and self.loss_plot is not None:  # a new run: a new curve
            self.loss_plot.reset()
            self.loss_plot.hide()
        self.running = running
        self.cancel_button.setEnabled(running)

    def show_frame_metrics(self, step: int, metrics: dict) -> None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool))
        self.show_status(f"step {step}: {shown}")
        if self.loss_plot is not None and self.loss_plot.add(step, metrics):
            self.loss_plot.show()

    def show_status(self, text: str) -> None:
        self.status.setText(text)


class DatasetPicker(QWidget):
    """A dataset: a built-in name, a folder typed or pasted, or one chosen with Browse."""

    BUILT_IN = ("samples", "digits")

    def __init__(self, default: str) -> None:
        super().__init__()
        self.box = QComboBox()
        self.box.setEditable(True)
        self.box.addItems(self.BUILT_IN)
        self.box.setCurrentText(default)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.box, 1)
        layout.addWidget(browse)

    def browse(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if folder:
            self.setCurrentText(folder)

    def currentText(self) -> str:  # noqa: N802 - the QComboBox-like interface the panel reads
        return self.box.currentText()

    def setCurrentText(self, text: str) -> None:  # noqa: N802
        if self.box.findText(text) < 0:
            self.box.addItem(text)
        self.box.setCurrentText(text)


class FilePicker(QWidget):
    """A path typed or chosen with Browse; for the "images" kind, several paths in order.

    Several paths are shown one per line-separator ';' in the line edit and handed to the
    method as a list, the same shape the CLI's repeated flag gives.
    """

    KINDS = ("image", "images", "file", "save_file")
    IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp);;All files (*)"
    SEPARATOR = ";"

    def __init__(self, kind: str, default, suggest=None) -> None:
        super().__init__()
        self.kind = kind
        if suggest is None:
            self.field = self.edit = QLineEdit()
        else:  # a list of known values (trained styles) that still takes any path
            self.field = SuggestionBox(suggest)
            self.edit = self.field.lineEdit()
        self.edit.setPlaceholderText({"image": "an image file", "images": "one or more image files",
                                      "file": "a file", "save_file": "where to save"}[kind])
        self.set_value(default)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self.browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.field, 1)
        layout.addWidget(browse)

    def browse(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        if self.kind == "images":
            paths, _ = QFileDialog.getOpenFileNames(self, "Choose images", "", self.IMAGE_FILTER)
            if paths:
                self.set_value(paths)
        elif self.kind == "save_file":
            path, _ = QFileDialog.getSaveFileName(self, "Save as", self.edit.text())
            if path:
                self.set_value(path)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", "",
                                                  self.IMAGE_FILTER if self.kind == "image" else "All files (*)")
            if path:
                self.set_value(path)

    def value(self):
        text = self.edit.text().strip()
        if self.kind == "images":
            return [part.strip() for part in text.split(self.SEPARATOR) if part.strip()] or None
        return text or None

    def set_value(self, value) -> None:
        if isinstance(value, (list, tuple)):
            value = f"{self.SEPARATOR} ".join(map(str, value))
        self.edit.setText("" if value is None else str(value))


class SuggestionBox(QComboBox):
    """An editable field whose list is asked for afresh each time it opens, so a style
    trained a minute ago is already offered."""

    def __init__(self, suggest) -> None:
        super().__init__()
        self.suggest = suggest
        self.setEditable(True)
        self.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.refresh()

    def refresh(self) -> None:
        text = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems(self.suggest())
        self.setCurrentIndex(-1)
        self.setEditText(text)
        self.blockSignals(False)

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self.refresh()
        super().showPopup()


class ActivationsPanel(MethodPanel):
    follows_layer = True

    def layer_clicked(self, path: str) -> bool:
        # A new layer has other channels: go back to the grid.
        self.set_value("channel", None)
        return super().layer_clicked(path)


class FiltersPanel(MethodPanel):
    follows_layer = True
