"""The status bar's parts: a line of text, the progress of the running job with how long
is left, Cancel, the device picker and the model's name."""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QComboBox, QLabel, QProgressBar, QPushButton, QStatusBar

from engine.core.errors import in_field_words
from engine.core.eta import Eta

# A run is told its time left once it is expected to take this long in all (shorter ones
# are over before anyone reads it) and has shown a pace.
ETA_SHOWN_FROM_S = 10.0


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
        self.eta: Eta | None = None
        self._message = ""
        # Counts the time left down between progress events, which a slow step spaces out.
        self._tick = QTimer(bar)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self._count_down)
        self._shown = ""  # the text this class last wrote: another writer's text is left alone

    def set_busy(self, busy: bool, message: str) -> None:
        self.cancel_button.setEnabled(busy)
        self._message = self._shown = message
        self.text.setText(message)
        # A job starting, or the last one ending: the pace measured so far was another job's.
        self.eta = Eta() if busy else None
        if busy:
            self.progress.setRange(0, 0)
            self._tick.start()
        else:
            self._tick.stop()
            self.progress.setRange(0, 1000)
            self.progress.setValue(0)

    def show_progress(self, fraction: float, message: str) -> None:
        if fraction < 0:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        if self.eta is not None:
            self.eta.update(fraction)
        if message:
            self._message = in_field_words(message)
        self._show_text()

    def time_left(self) -> str:
        """'about 40 s left' for a long run with a pace; '' otherwise."""
        if self.eta is None:
            return ""
        left = self.eta.seconds_left()
        if left is None or self.eta.elapsed() + left < ETA_SHOWN_FROM_S:
            return ""
        return self.eta.text()

    def _show_text(self) -> None:
        if self.eta is None:
            return
        left = self.time_left()
        self._shown = f"{self._message} · {left}" if left and self._message else left or self._message
        self.text.setText(self._shown)

    def _count_down(self) -> None:
        if self.text.text() == self._shown:  # not an error or a hint the window put there since
            self._show_text()

    def set_devices(self, devices: list[str]) -> None:
        self.device_box.blockSignals(True)
        self.device_box.clear()
        self.device_box.addItems(devices)
        self.device_box.blockSignals(False)
