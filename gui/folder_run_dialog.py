"""What a folder run made (Evaluate > Run the current method on a folder): its contact
sheet, what was done, skipped before and failed (each with its reason), and a button that
opens the output folder in the desktop's file manager.

Not modal and kept per window, so the sheet can stay beside the canvas while the user
opens one of the photos to look closer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QPixmap
from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QPushButton, QScrollArea,
                               QVBoxLayout)

if TYPE_CHECKING:
    from engine.app.folder_run import FolderRun


def run_summary(run: FolderRun, title: str) -> str:
    """One line: how many photos were done, done before, and could not be."""
    parts = [f"{title} on {len(run.done)} photo{'s' * (len(run.done) != 1)}"]
    if run.skipped:
        parts.append(f"{len(run.skipped)} done before, kept")
    if run.failed:
        parts.append(f"{len(run.failed)} skipped (see below)")
    return "; ".join(parts) + "."


class FolderRunDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.summary = QLabel(wordWrap=True)
        self.sheet = QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(self.sheet)
        self.failures = QPlainTextEdit(readOnly=True)
        self.failures.setMaximumHeight(70)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.open_folder = QPushButton("Open output folder")
        buttons.addButton(self.open_folder, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.close)
        self.open_folder.clicked.connect(self._open_folder)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.failures)
        layout.addWidget(buttons)
        self.folder: Path | None = None
        self.resize(1000, 640)

    def show_run(self, run: FolderRun, title: str, out: str) -> None:
        self.folder = Path(out)
        self.setWindowTitle(f"{title} on a folder")
        self.summary.setText(run_summary(run, title) + f" Pictures, sidecars and the contact sheet are in {out}.")
        pixmap = QPixmap(str(run.contact_sheet)) if run.contact_sheet else QPixmap()
        if pixmap.isNull():
            self.sheet.setText("No picture was made, so there is no contact sheet.")
        else:  # the whole sheet in view across: a long folder scrolls down, not sideways
            fits = self.width() - 60
            self.sheet.setPixmap(pixmap if pixmap.width() <= fits else
                                 pixmap.scaledToWidth(fits, Qt.TransformationMode.SmoothTransformation))
        # A reason names its photo's file already, mostly; where not, the photo comes first.
        self.failures.setPlainText("\n".join(why if Path(name).name in why else f"{name}: {why}"
                                             for name, why in run.failed))
        self.failures.setVisible(bool(run.failed))
        self.show()
        self.raise_()
        self.activateWindow()

    def _open_folder(self) -> None:
        if self.folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.folder)))
