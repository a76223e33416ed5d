"""The fast-style panel: trained styles offered by name, and a slider per style to mix them.

A network trained on several styles (conditional instance norm) blends them by weights;
the sliders are those weights. Letting go of a slider restyles the picture, once the
panel has run, as the blend is one forward pass.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QSlider, QVBoxLayout, QWidget

from engine.core.errors import ConvScopeError, in_field_words

from gui.panels.method_panel import Editor, MethodPanel

SLIDER_STEPS = 100


class StyleMixer(QWidget):
    """One slider per style of the chosen network; the mix is their values, normalised.

    Reads and writes the mix as the CLI's text ("0.7,0.3"), so the panel's form treats it
    as the text field it replaces; one style (or none) gives "".
    """

    released = Signal()  # the user let go of a slider

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.sliders: list[QSlider] = []
        self.shares: list[QLabel] = []
        self.grid = QGridLayout()
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #555;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.grid)
        layout.addWidget(self.note)
        self.set_styles([], "choose a style network to mix its styles")

    def set_styles(self, names: list[str], note: str = "") -> None:
        """Show a slider per style (equal weights); ``note`` says why there are none."""
        if names == self.names and self.sliders:
            return  # the same network again: keep the user's mix
        while self.grid.count():
            self.grid.takeAt(0).widget().deleteLater()
        self.names = list(names)
        self.sliders, self.shares = [], []
        if len(names) > 1:
            for row, name in enumerate(names):
                slider = QSlider(Qt.Orientation.Horizontal)
                slider.setRange(0, SLIDER_STEPS)
                slider.setValue(SLIDER_STEPS // 2)
                slider.setToolTip(f"weight of '{name}' in the blend")
                slider.valueChanged.connect(self._show_shares)
                slider.sliderReleased.connect(self.released)
                share = QLabel()
                share.setMinimumWidth(share.fontMetrics().horizontalAdvance("100%"))
                self.grid.addWidget(QLabel(name), row, 0)
                self.grid.addWidget(slider, row, 1)
                self.grid.addWidget(share, row, 2)
                self.sliders.append(slider)
                self.shares.append(share)
            self._show_shares()
        elif len(names) == 1:
            note = note or f"one style ({names[0]}): nothing to mix"
        self.note.setText(note)
        self.note.setVisible(bool(note))

    def _show_shares(self) -> None:
        total = sum(slider.value() for slider in self.sliders)
        for slider, share in zip(self.sliders, self.shares):
            share.setText(f"{slider.value() / total:.0%}" if total else "-")

    def text(self) -> str:
        if len(self.sliders) < 2:
            return ""
        return ",".join(f"{slider.value() / SLIDER_STEPS:g}" for slider in self.sliders)

    def setText(self, text: str) -> None:  # noqa: N802 - the QLineEdit-like interface the panel writes
        try:
            weights = [float(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            return
        if len(weights) != len(self.sliders) or not weights:
            return
        top = max(max(weights), 1e-9)
        scale = SLIDER_STEPS / top if top > 1 else SLIDER_STEPS
        for slider, weight in zip(self.sliders, weights):
            slider.setValue(round(max(weight, 0.0) * scale))


class FastStylePanel(MethodPanel):
    custom_editors = {"style_mix": Editor(lambda _param, _labels: StyleMixer(), lambda mixer: mixer.text() or None,
                                          lambda mixer, param, value: mixer.setText(param.text(value)))}

    def __init__(self, spec, labels: list[str], parent=None) -> None:
        self.has_run = False
        super().__init__(spec, labels, parent)
        self.mixer: StyleMixer = self.editors["style_mix"]
        self.mixer.released.connect(self._mix_moved)
        picker = self.editors["style_model"]
        picker.edit.textChanged.connect(self.style_model_changed)
        self.style_model_changed(picker.edit.text())

    def style_model_changed(self, text: str) -> None:
        from engine.style.style_library import style_names_of  # imports torch: not before the window is on screen

        if not text.strip():
            self.mixer.set_styles([], "choose a style network to mix its styles")
            return
        try:
            self.mixer.set_styles(style_names_of(text))
        except ConvScopeError as error:  # a half-typed path, a foreign file: said under the sliders
            self.mixer.set_styles([], in_field_words(str(error)))
        except Exception as error:  # noqa: BLE001 - never a traceback from typing into a field
            self.mixer.set_styles([], f"{text} could not be read: {error}")

    def request_run(self) -> None:
        self.has_run = True
        super().request_run()

    def _mix_moved(self) -> None:
        if self.has_run:
            self.request_run()
