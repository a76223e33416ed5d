"""A method's panel: its options as a form, Run and Cancel, and what the last run said.

The form is generated from the method's ``Param`` declarations, the same list the CLI
turns into flags, so the panel and the command line can never disagree on an option.
``EDITORS`` is the one table from a parameter's kind to its field (magicgui's type map
has the same shape): how to build it, read it and fill it. What a field holds is read as
a flag would give it, and checked by the method's own ``bind`` before a run starts; a
value that does not fit is said under its field.

Every field starts on its method's own default, the CLI's: the layer tree's selection
fills a layer field only in panels whose subject is the layer (activations, filters) or
when the user asks with the field's "use selected layer" button. A choice that means
"leave it out" is named (``Param.blank_text``), and every text the engine wrote with
flags is shown with the form's field names (``in_field_words``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QMenu, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine.core.errors import MethodInputError, ParamError, in_field_words
from gui.estimate_label import EstimateLabel
from gui.tooltips import wrapped

TOP1 = "top-1 prediction"
LAYER_KEYWORDS = ("early", "middle", "late")
SPIN_LIMIT = 1_000_000  # a number field's range where its parameter states none


class ExactDoubleSpinBox(QDoubleSpinBox):
    """A float field that shows a number as a person types it ("95", "0.001", "0.00015"),
    takes one typed the same way (or as 1e-4), and gives back exactly the value it was set
    to (2/255, not the rounded number it shows) until the user changes it.

    Qt's own text pads every number to ``decimals()`` places ("95.0000") and rounds what
    has more to them ("0.0000" for 1e-5); here ``decimals()`` is only the precision kept,
    ample for a learning rate, and the text is the shortest that reads back the same.
    """

    PRECISION = 10  # decimal places kept: 1e-10 is the smallest step a field can take

    def __init__(self) -> None:
        super().__init__()
        self.setDecimals(self.PRECISION)
        self._exact: float | None = None

    def setValue(self, value: float) -> None:  # noqa: N802 - Qt's name
        super().setValue(value)
        self._exact = float(value) if self.minimum() <= value <= self.maximum() else None

    def value(self) -> float:
        shown = super().value()
        if self._exact is not None and round(self._exact, self.decimals()) == round(shown, self.decimals()):
            return self._exact
        return shown

    def textFromValue(self, value: float) -> str:  # noqa: N802 - Qt's name
        return plain_number(round(value, self.decimals()))

    def valueFromText(self, text: str) -> float:  # noqa: N802 - Qt's name
        number = _parse_number(text)
        return self.value() if number is None else number

    def validate(self, text: str, pos: int):
        number = _parse_number(text)
        if number is not None:
            inside = self.minimum() <= number <= self.maximum()
            state = QValidator.State.Acceptable if inside else QValidator.State.Intermediate
        elif _PARTIAL_NUMBER.fullmatch(text.strip()):
            state = QValidator.State.Intermediate  # on the way to a number: "", "-", "1e-"
        else:
            state = QValidator.State.Invalid
        return state, text, pos

    def fixup(self, text: str) -> str:
        return text


_PARTIAL_NUMBER = re.compile(r"[-+]?(\d*[.,]?\d*([eE][-+]?\d*)?)?")


def _parse_number(text: str) -> float | None:
    """A number as a person types it: "0.001", "1e-4", "1,5" (a decimal comma); None if not one."""
    try:
        number = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def plain_number(value: float) -> str:
    """The shortest plain-decimal text that reads back as ``value``: 95, 0.001, 0.00015, 1000000."""
    text = repr(float(value))
    if "e" in text:  # 1e-05, 1e+16: written out, as nobody types exponents into a form
        text = format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


def float_step(param) -> float:
    """One click of a float field's arrows: a tenth of the default's order of magnitude (95 steps
    by 1, 0.001 by 0.0001); a default of 0 (a term switched off) steps by 0.01 on a 0..1
    scale and 0.1 otherwise."""
    default = abs(float(param.default or 0.0))
    if default == 0:
        return 0.01 if param.maximum is not None and param.maximum <= 1 else 0.1
    return 10.0 ** (math.floor(math.log10(default)) - 1)


def _int_spin(param, _labels) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(int(param.minimum if param.minimum is not None else -SPIN_LIMIT),
                  int(param.maximum if param.maximum is not None else SPIN_LIMIT))
    spin.setSpecialValueText(in_field_words(param.special))
    return spin


def _put_int(spin: QSpinBox, param, value) -> None:
    spin.setValue(int(param.coerce(None) if value is None else value))


def _float_spin(param, _labels) -> QDoubleSpinBox:
    spin = ExactDoubleSpinBox()
    spin.setSingleStep(float_step(param))
    low = param.minimum if param.minimum is not None else param.above if param.above is not None else -SPIN_LIMIT
    spin.setRange(float(low), float(param.maximum if param.maximum is not None else SPIN_LIMIT))
    spin.setSpecialValueText(in_field_words(param.special))  # what the minimum stands for ("eps / 4")
    return spin


def _put_float(spin: QDoubleSpinBox, param, value) -> None:
    spin.setValue(float(param.coerce(None) if value is None else value))


def _channel_spin(param, _labels) -> QSpinBox:
    spin = QSpinBox()
    if param.minimum is not None:  # a channel is required
        spin.setRange(int(param.minimum), SPIN_LIMIT)
    else:  # -1 stands for "no channel", which each method names (all of them, the strongest)
        spin.setRange(-1, SPIN_LIMIT)
        spin.setSpecialValueText(in_field_words(param.special or "all"))
    return spin


def _check_box(_param, _labels) -> QCheckBox:
    return QCheckBox()


def _choice_box(param, _labels) -> QComboBox:
    box = QComboBox()
    box.addItems([str(choice) for choice in param.choices])
    return box


def _put_choice(box: QComboBox, _param, value) -> None:
    box.setCurrentIndex(max(0, box.findText(str(value))))


class LayerPicker(QWidget):
    """A layer field: the method's keywords (and its own default) to choose from, any
    module path typed, and a "use selected layer" button that takes the layer tree's
    selection, so the tree fills the field only when the user asks.

    A layer that may be left out (guided backprop's: then the class score is explained)
    has that choice as the list's first entry, named (``Param.blank_text``)."""

    def __init__(self, param) -> None:
        super().__init__()
        self.blank = param.blank_text if param.default is None else None
        self.box = QComboBox()
        self.box.setEditable(True)
        self.box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        own = [param.default] if param.default not in (*LAYER_KEYWORDS, None) else []
        self.box.addItems(([self.blank] if self.blank else []) + own + list(LAYER_KEYWORDS))
        self.use_selected = QPushButton("use selected layer")
        self.use_selected.setToolTip("Select a layer in the layer tree first")
        self.use_selected.setEnabled(False)
        self.use_selected.clicked.connect(lambda: self.setCurrentText(self.selected))
        self.selected = ""
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.box, 1)
        layout.addWidget(self.use_selected)

    def set_selected(self, path: str) -> None:
        """The layer tree's selection, offered by the button (not put in the field)."""
        self.selected = path
        self.use_selected.setEnabled(bool(path))
        # set after the window wraps its tooltips, so wrapped here
        self.use_selected.setToolTip(wrapped(f"Put the layer selected in the layer tree here: {path}" if path else
                                             "Select a layer in the layer tree first"))

    def currentText(self) -> str:  # noqa: N802 - the QComboBox-like interface the panel reads
        text = self.box.currentText().strip()
        return "" if text == self.blank else text

    def setCurrentText(self, text: str) -> None:  # noqa: N802
        self.box.setCurrentText(text or self.blank or "")


def _combo_text(box) -> str | None:
    return box.currentText().strip() or None


def _put_combo_text(box, param, value) -> None:
    box.setCurrentText(param.text(value))


def _target_box(param, labels: list[str]) -> QComboBox:
    box = QComboBox()
    box.setEditable(True)
    box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    # The first entry is the method's default, named: the top-1 prediction, or the
    # method's own keyword (adversarial's "least-likely class").
    box.setProperty("default_entry", TOP1 if param.default is None else _keyword_entry(param.default))
    _list_targets(box, labels)
    box.completer().setFilterMode(Qt.MatchFlag.MatchContains)
    box.completer().setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
    return box


def _keyword_entry(keyword) -> str:
    return f"{keyword} class" if isinstance(keyword, str) and not keyword.isdigit() else str(keyword)


def _list_targets(box: QComboBox, labels: list[str]) -> None:
    box.clear()
    box.addItem(box.property("default_entry"))
    box.addItems([f"{i}: {label}" for i, label in enumerate(labels)])


def _target_value(box: QComboBox) -> str | None:
    """None for the first entry (the method's default); else the index or label typed."""
    text = box.currentText().strip()
    return None if not text or text == box.property("default_entry") else text.split(":", 1)[0].strip()


def _put_target(box: QComboBox, param, value) -> None:
    default = value is None or (param.default is not None and param.text(value) == param.text(param.default))
    box.setCurrentText(box.property("default_entry") if default else param.text(value))


def _line_edit(param, _labels) -> QLineEdit:
    field = QLineEdit()
    # An empty field is a choice too: say which (the help's "empty: ..." or "default").
    if param.default is None:
        field.setPlaceholderText(in_field_words(param.blank_text))
    return field


def _put_text(field, param, value) -> None:
    field.setText(param.text(value))


@dataclass(frozen=True)
class Editor:
    """A field for one kind of parameter: ``make(param, labels)`` builds it, ``get`` reads
    what it holds (None when left empty), ``put(field, param, value)`` shows a value."""

    make: Callable[[Any, list[str]], QWidget]
    get: Callable[[QWidget], Any]
    put: Callable[[QWidget, Any, Any], None]


_TEXT = Editor(_line_edit, lambda field: field.text().strip() or None, _put_text)
_FILE = Editor(lambda param, _labels: FilePicker(param.kind, param.suggest, param.blank_text if param.default is None
                                                  else ""), lambda picker: picker.value(),
               lambda picker, _param, value: picker.set_value(value))

EDITORS: dict[str, Editor] = {
    "int": Editor(_int_spin, lambda spin: spin.value(), _put_int),
    "float": Editor(_float_spin, lambda spin: spin.value(), _put_float),
    "bool": Editor(_check_box, lambda check: check.isChecked(), lambda check, _param, value: check.setChecked(bool(value))),
    "choice": Editor(_choice_box, lambda box: box.currentText(), _put_choice),
    "layer": Editor(lambda param, _labels: LayerPicker(param), _combo_text, _put_combo_text),
    "target": Editor(_target_box, _target_value, _put_target),
    "channel": Editor(_channel_spin, lambda spin: None if spin.value() < 0 else spin.value(),
                      lambda spin, _param, value: spin.setValue(-1 if value is None else int(value))),
    "dataset": Editor(lambda _param, _labels: DatasetPicker(), _combo_text, _put_combo_text),
    "image": _FILE, "images": _FILE, "file": _FILE, "save_file": _FILE,
    # structured values, typed as the CLI spells them: 3,5 / 0.7,0.3 / early:1,late:0.5 / 0-7,9 / 20x15 / a,b
    "position": _TEXT, "weights": _TEXT, "layer_weights": _TEXT, "channels": _TEXT, "grid": _TEXT,
    "layers": _TEXT, "methods": _TEXT,
}


class MethodPanel(QWidget):
    run_requested = Signal(str, dict)  # method id, parameters
    cancel_requested = Signal(str)

    # Panels that redraw whenever the user clicks another layer in the tree.
    follows_layer = False
    # Fields a panel draws its own way, by parameter name (the fast-style panel's sliders).
    custom_editors: dict[str, Editor] = {}

    def __init__(self, spec, labels: list[str], parent=None) -> None:
        super().__init__(parent)
        self.spec = spec
        self.method_id = spec.id
        self.editors: dict[str, QWidget] = {}
        self.field_errors: dict[str, QLabel] = {}
        self.running = False

        self.selected_layer = ""  # the layer tree's selection, offered by each layer field
        title = QLabel(f"<b>{spec.title}</b>")
        summary = QLabel(in_field_words(spec.summary))
        summary.setWordWrap(True)
        summary.setStyleSheet("color: #555;")
        self.form = QFormLayout()
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        for param in spec.params:
            editor = self._editor(param).make(param, labels)
            editor.setToolTip(in_field_words(param.help))
            self.editors[param.name] = editor
            self.set_value(param.name, param.default)
            label = QLabel(param.label)
            label.setToolTip(in_field_words(param.help))
            self.form.addRow(label, editor)
            error = QLabel()
            error.setWordWrap(True)
            error.setStyleSheet("color: #b00020;")
            self.form.addRow("", error)
            self.form.setRowVisible(error, False)
            self.field_errors[param.name] = error

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
        layout.addLayout(self.form)
        layout.addLayout(buttons)
        self.estimate = EstimateLabel(self)  # "about 2 min on this machine", for long runs
        layout.addWidget(self.estimate)
        layout.addWidget(self.status)
        self.loss_plot = None
        if spec.streams_frames:
            from gui.loss_plot import LossPlot

            self.loss_plot = LossPlot()
            self.loss_plot.hide()  # until a frame brings a loss
            layout.addWidget(self.loss_plot)
        layout.addStretch(1)

    # -- the form -------------------------------------------------------------------------
    def _editor(self, param) -> Editor:
        return self.custom_editors.get(param.name) or EDITORS[param.kind]

    def values(self) -> dict:
        """What each field holds, as a flag would give it (None: left empty)."""
        return {param.name: self._editor(param).get(self.editors[param.name]) for param in self.spec.params}

    def set_value(self, name: str, value) -> None:
        param = self.spec.param(name)
        self._editor(param).put(self.editors[name], param, value)

    def check_values(self, values: dict) -> bool:
        """Bind ``values`` as the run will; say under each field what does not fit. True when all do."""
        for error in self.field_errors.values():
            error.clear()
            self.form.setRowVisible(error, False)
        failed = False
        for param in self.spec.params:
            try:
                param.coerce(values.get(param.name))
            except ParamError as error:
                self._show_field_error(error)
                failed = True
        if not failed:
            try:
                self.spec.bind(values)
            except ParamError as error:
                self._show_field_error(error)
                failed = True
            except MethodInputError as error:
                self.show_status(str(error))
                return False
        if failed:
            self.show_status("Some options do not fit: see the messages under them.")
        return not failed

    def _show_field_error(self, error) -> None:
        label = self.field_errors.get(error.name)
        if label is None:
            self.show_status(str(error))
            return
        label.setText(self._in_field_words(error.problem))
        self.form.setRowVisible(label, True)

    def _in_field_words(self, text: str) -> str:
        """A message that names flags (--fg-percentile) naming this form's fields instead."""
        return in_field_words(text)

    def set_labels(self, labels: list[str]) -> None:
        for param in self.spec.params:
            if param.kind == "target":
                _list_targets(self.editors[param.name], labels)

    # -- the window's calls -------------------------------------------------------------
    def layer_clicked(self, path: str) -> bool:
        """The user picked a layer in the tree; returns True when the panel wants to re-run.

        Only a panel whose subject is the layer takes it; every other offers it beside its
        layer fields ("use selected layer"), so Grad-CAM stays at its own late layer."""
        self._offer_layer(path)
        if self.follows_layer and "layer" in self.editors:
            self.set_value("layer", path)
        return self.follows_layer

    def reset_layer(self, preset: str | None) -> None:
        """After a model change: each layer field back to its method's own default (a
        panel that follows the tree: the model's preset for "middle", which the tree
        selects, so the "use selected layer" buttons offer it)."""
        self._offer_layer(preset or "")
        for param in self.spec.params:
            if param.kind == "layer":
                follow = self.follows_layer and preset and param.default == "middle"
                self.set_value(param.name, preset if follow else param.default)

    def _offer_layer(self, path: str) -> None:
        """The layer tree's selection, for the "use selected layer" buttons ("" for none)."""
        self.selected_layer = path
        for editor in self.editors.values():
            if isinstance(editor, LayerPicker):
                editor.set_selected(path)

    def request_run(self) -> None:
        values = self.values()
        if self.check_values(values):
            self.run_requested.emit(self.method_id, values)

    def set_running(self, running: bool) -> None:
        if self.loss_plot is not None:
            if running:  # a new run: a new curve, in the place the last one had (no relayout)
                self.loss_plot.reset()
            else:
                self.loss_plot.flush()  # the run's last points at once, not at the next redraw
        self.running = running
        self.cancel_button.setEnabled(running)

    def show_frame_metrics(self, step: int, metrics: dict) -> None:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool))
        self.show_status(f"step {step}: {shown}")
        if self.loss_plot is not None and self.loss_plot.add(step, metrics):
            self.loss_plot.show()

    def show_status(self, text: str) -> None:
        self.status.setText(in_field_words(text))


class DatasetPicker(QWidget):
    """A dataset: a built-in name, a folder or list file typed or pasted, or one chosen with Browse."""

    BUILT_IN = ("samples", "digits")

    def __init__(self) -> None:
        super().__init__()
        self.box = QComboBox()
        self.box.setEditable(True)
        self.box.addItems(self.BUILT_IN)
        browse = QPushButton("Browse…")
        choices = QMenu(browse)
        choices.addAction("Folder of images…", self.browse)
        choices.addAction("List of image paths…", self.browse_list)
        browse.setMenu(choices)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.box, 1)
        layout.addWidget(browse)

    def browse(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if folder:
            self.setCurrentText(folder)

    def browse_list(self) -> None:
        from gui.dialogs import choose_image_list

        listed = choose_image_list(self)
        if listed:
            self.setCurrentText(listed)

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

    def __init__(self, kind: str, suggest=None, blank: str = "") -> None:
        super().__init__()
        self.kind = kind
        if suggest is None:
            self.field = self.edit = QLineEdit()
        else:  # a list of known values (trained styles) that still takes any path
            self.field = SuggestionBox(suggest)
            self.edit = self.field.lineEdit()
        # What an empty field means, where it means something ("the current image"),
        # else what to put there.
        self.edit.setPlaceholderText(in_field_words(blank) if blank and blank != "default" else
                                     {"image": "an image file", "images": "one or more image files",
                                      "file": "a file", "save_file": "where to save"}[kind])
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
