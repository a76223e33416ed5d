"""The status bar's parts: a line of text, the progress of the running job, Cancel, the
device picker and the model's name."""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QLabel, QProgressBar, QPushButton, QStatusBar

from engine.core.errors import in_field_words


class StatusParts:
    def __init__(self, bar: QStatusBar) -> None:
        self.text = QLabel("Starting…")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job (Esc)")
        self.cancel_button.setEnabled(False)
        self.device_box = QComboBox()
        self.device_box.addItem("cpu")
        self.device_box.setToolTip("Where the model runs")
        self.model_label = QLabel("model: loading…")
        bar.addWidget(self.text, 1)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)
        bar.addPermanentWidget(QLabel("Device"))
        bar.addPermanentWidget(self.device_box)
        bar.addPermanentWidget(self.model_label)

    def set_busy(self, busy: bool, message: str) -> None:
        self.cancel_button.setEnabled(busy)
        self.text.setText(message)
        if busy:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(0)

    def show_progress(self, fraction: float, message: str) -> None:
        if fraction < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        if message:
            self.text.setText(in_field_words(message))

    def set_devices(self, devices: list[str]) -> None:
        self.device_box.blockSignals(True)
        self.device_box.clear()
        self.device_box.addItems(devices)
        self.device_box.blockSignals(False)
