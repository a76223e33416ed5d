"""The Methods dock: the image's prediction, a method picker, and one scrolling page per panel."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QFrame, QLabel, QScrollArea, QStackedWidget, QVBoxLayout, QWidget

from gui.panels import MethodPanel, panel_for


class MethodDock(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.panels: dict[str, MethodPanel] = {}
        self.pages: dict[str, QScrollArea] = {}  # the scrolling page that holds each panel
        self.selector = QComboBox()
        self.selector.currentIndexChanged.connect(self._on_selected)
        self.stack = QStackedWidget()
        self.prediction = QLabel("")
        self.prediction.setWordWrap(True)
        self.prediction.setTextFormat(Qt.TextFormat.RichText)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<b>Prediction</b>"))
        layout.addWidget(self.prediction)
        layout.addWidget(QLabel("<b>Method</b>"))
        layout.addWidget(self.selector)
        layout.addWidget(self.stack, 1)

    def add_panels(self, methods: dict, families: dict[str, str], labels: list[str]) -> None:
        """A panel per method, in the registry's order, a separator between families."""
        family = None
        for spec in methods.values():
            if family is not None and families[spec.id] != family:
                self.selector.insertSeparator(self.selector.count())
            family = families[spec.id]
            panel = panel_for(spec, labels)
            self.panels[spec.id] = panel
            # A long form (class-viz has two dozen options) scrolls instead of pushing
            # Run, the status and the loss plot off the bottom of the dock.
            page = QScrollArea()
            page.setWidgetResizable(True)
            page.setFrameShape(QFrame.Shape.NoFrame)
            page.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            page.setWidget(panel)
            # Keep the dock as wide as the form needs: only the height scrolls.
            page.setMinimumWidth(panel.minimumSizeHint().width() + page.verticalScrollBar().sizeHint().width())
            self.stack.addWidget(page)
            self.pages[spec.id] = page
            self.selector.addItem(spec.title, spec.id)
        self.selector.setCurrentIndex(max(0, self.selector.findData("activations")))

    def select(self, method_id: str) -> MethodPanel:
        self.selector.setCurrentIndex(self.selector.findData(method_id))
        return self.panels[method_id]

    def current_panel(self) -> MethodPanel | None:
        page = self.stack.currentWidget()
        return page.widget() if isinstance(page, QScrollArea) else None

    def set_model(self, labels: list[str], middle_layer: str | None) -> None:
        """A new model has other classes and other layer names: every panel starts afresh
        at the model's "middle" layer."""
        for panel in self.panels.values():
            panel.set_labels(labels)
            panel.reset_layer(middle_layer)

    def set_dataset(self, spec: str) -> None:
        for panel in self.panels.values():
            if "dataset" in panel.editors:
                panel.set_value("dataset", spec)

    def layer_clicked(self, path: str) -> bool:
        """Every panel takes the layer picked in the tree; True when the one in front
        wants to run again for it."""
        rerun = [panel for panel in self.panels.values() if panel.layer_clicked(path)]
        return self.current_panel() in rerun

    def show_prediction(self, top5) -> None:
        self.prediction.setText(" · ".join(f"{label} <b>{prob:.1%}</b>" for _i, label, prob in top5))

    def _on_selected(self, index: int) -> None:
        method_id = self.selector.itemData(index)
        if method_id in self.pages:
            self.stack.setCurrentWidget(self.pages[method_id])
