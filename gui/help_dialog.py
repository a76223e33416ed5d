"""Help > Methods: each method's definition, its paper and what to look for.

A list of the methods on the left, the chosen one's help as rich text on the right (the
markdown shipped in ``engine/app/methods_help.md``). F1 opens it on the current panel's
method. One dialog per window, kept and raised again, so it can stay open beside the
canvas while the user tries a method.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QHBoxLayout, QListWidget, QListWidgetItem, QSplitter, QTextBrowser

from engine.app.help import method_help


class MethodsHelp(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("ConvScope methods")
        self.methods = QListWidget()
        for entry in method_help().values():
            item = QListWidgetItem(entry.title)
            item.setData(Qt.ItemDataRole.UserRole, entry.method_id)
            self.methods.addItem(item)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(True)
        self.methods.currentItemChanged.connect(self._on_chosen)
        splitter = QSplitter()
        splitter.addWidget(self.methods)
        splitter.addWidget(self.text)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 520])
        layout = QHBoxLayout(self)
        layout.addWidget(splitter)
        self.resize(780, 520)
        if self.methods.count():
            self.methods.setCurrentRow(0)

    def show_method(self, method_id: str | None) -> None:
        """Show (and raise) the dialog on ``method_id``'s help; None keeps the current one."""
        for row in range(self.methods.count()):
            if self.methods.item(row).data(Qt.ItemDataRole.UserRole) == method_id:
                self.methods.setCurrentRow(row)
                break
        self.show()
        self.raise_()
        self.activateWindow()

    def current_method(self) -> str | None:
        item = self.methods.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _on_chosen(self, item: QListWidgetItem | None, _previous) -> None:
        if item is not None:
            self.text.setMarkdown(method_help()[item.data(Qt.ItemDataRole.UserRole)].page())


def show_methods_help(window, method_id: str | None = None) -> MethodsHelp:
    """The window's methods help, made on first use, opened on ``method_id``."""
    dialog = getattr(window, "methods_help", None)
    if dialog is None:
        dialog = window.methods_help = MethodsHelp(window)
    dialog.show_method(method_id)
    return dialog


def help_for_current_panel(window) -> MethodsHelp:
    """F1: the help of the method whose panel is in front."""
    panel = window.current_panel()
    return show_methods_help(window, panel.method_id if panel is not None else None)


def run_current_panel(window) -> None:
    """Ctrl+Return: run the panel in front with its form's values (as its Run button)."""
    panel = window.current_panel()
    if panel is None:
        window.show_error("Run", "The methods appear once the model has loaded.")
        return
    panel.request_run()
