"""The line under a panel's Run button that says how long a run will take on this machine.

It reads the panel's fields whenever one changes and asks ``engine.methods.cost`` (plain
arithmetic on the calibration the engine thread measured, so nothing waits on the model)
for an estimate; runs expected to be short get no line at all.
"""

from __future__ import annotations

from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit

from engine.core.eta import LONG_RUN_S, duration_text

# The signal each kind of field says "changed" with.
_CHANGED = ((QAbstractSpinBox, "editingFinished"), (QComboBox, "currentTextChanged"), (QLineEdit, "textChanged"),
            (QAbstractButton, "toggled"))


class EstimateLabel(QLabel):
    def __init__(self, panel) -> None:
        super().__init__()
        self.panel = panel
        self.machine = None  # engine.methods.cost.Machine, once the engine has timed this machine
        self.seconds: float | None = None
        self.setStyleSheet("color: #555;")
        self.setToolTip("Estimated from a timing of this machine's passes through the model and from earlier runs; "
                        "a busy machine takes longer")
        self.hide()
        for editor in panel.editors.values():
            # A composite field (a file picker) changes through the line or box inside it.
            for widget in [editor, *editor.findChildren(QLineEdit), *editor.findChildren(QComboBox)]:
                for kind, signal in _CHANGED:
                    if isinstance(widget, kind):
                        getattr(widget, signal).connect(self.refresh)
                        if isinstance(widget, QAbstractSpinBox):
                            widget.valueChanged.connect(self.refresh)
                        break

    def set_machine(self, machine) -> None:
        self.machine = machine
        self.refresh()

    def refresh(self, *_changed) -> None:
        self.seconds = None
        if self.machine is not None:
            from engine.methods.cost import estimate_seconds  # the engine is loaded once a machine is known

            self.seconds = estimate_seconds(self.panel.spec, self.panel.values(), self.machine)
        long = self.seconds is not None and self.seconds > LONG_RUN_S
        self.setText(f"{duration_text(self.seconds)} on this machine" if long else "")
        self.setVisible(long)
