"""File > Export: the save dialogs, the question before replacing files, the messages.

What is written, and how, is the session's (``Session.export``); here are only the
questions to the user and the answers on screen. The dialogs open in the folder of the
last export (remembered in the window's QSettings), the first time in Pictures or home;
whether a picture carries its colour bar and caption strip is File > "Export with colour
bar and caption", also remembered. A failed write is a message naming the
file and the reason, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QFileDialog, QMessageBox

from engine.core.errors import ConvScopeError

FOLDER_KEY = "export/folder"  # the folder of the last export, in the window's QSettings
ANNOTATE_KEY = "export/annotate"  # whether exports carry the colour bar and caption strip


def start_folder(last: str | None, pictures: str | None, home: str) -> Path:
    """Where an export dialog opens: the folder of the last export while it still exists,
    else the user's Pictures folder, else home. Never beside the open photo, which for a
    bundled sample is inside the installed package."""
    for candidate in (last, pictures):
        if candidate and os.path.isdir(candidate):
            return Path(candidate)
    return Path(home)


def suggested_path(window, suffix: str = ".png") -> str:
    """The session's suggested file name in the folder the dialog starts in."""
    name = Path(window.session.suggested_export_name(suffix)).name if window.session else f"convscope{suffix}"
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    folder = start_folder(window.settings.value(FOLDER_KEY, None, type=str), pictures, str(Path.home()))
    return str(folder / name)


def annotate_exports(window) -> bool:
    """Whether File > Export draws the colour bar and caption strip (on unless turned off)."""
    return window.settings.value(ANNOTATE_KEY, True, type=bool)


def set_annotate_exports(window, on: bool) -> None:
    window.settings.setValue(ANNOTATE_KEY, bool(on))


def _remember_folder(window, path: str | Path) -> None:
    window.settings.setValue(FOLDER_KEY, str(Path(path).parent))


def export_picture_dialog(window) -> list[Path] | None:
    session = window.session
    if session is None or session.shown is None:
        window.show_error("Export", "There is nothing on the canvas to export yet.")
        return None
    path, _filter = QFileDialog.getSaveFileName(window, "Export PNG and JSON sidecar", suggested_path(window),
                                                "PNG image (*.png)", options=QFileDialog.Option.DontConfirmOverwrite)
    if not path:
        return None
    return export_picture_to(window, path if path.lower().endswith(".png") else path + ".png")


def export_picture_to(window, path: str, overwrite: bool | None = None) -> list[Path] | None:
    """The picture as the canvas draws it, its sidecar (and an embedding's CSV) at ``path``;
    asks before replacing files unless ``overwrite`` says."""
    try:
        existing = [p.name for p in window.session.existing_outputs(picture=path)]
    except ConvScopeError as error:
        window.show_error("Export failed", str(error))
        return None
    if existing and overwrite is None:
        answer = QMessageBox.question(window, "Replace?", f"{' and '.join(existing)} already exist. Replace?",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        overwrite = answer == QMessageBox.StandardButton.Yes
        if not overwrite:
            return None
    written = _export(window, dict(picture=path, view=window.canvas.view_settings(), overwrite=bool(overwrite),
                                   annotated=annotate_exports(window)))
    if written:
        extra = " and the coordinates as CSV" if len(written) > 2 else ""
        window.say(f"Exported {written[0]} and {written[1].name}{extra}")
    return written


def export_array_dialog(window) -> Path | None:
    path, _filter = QFileDialog.getSaveFileName(window, "Export the raw result", suggested_path(window, ".npy"),
                                                "NumPy array (*.npy)")
    if path:
        return export_array_to(window, path if path.lower().endswith(".npy") else path + ".npy")
    return None


def export_array_to(window, path: str) -> Path | None:
    """The method's raw float result (no colormap, no resizing), as the CLI's --save-array;
    the save dialog has asked before replacing a file."""
    written = _export(window, dict(array=path, overwrite=True))
    if written:
        window.say(f"Exported the raw array {tuple(window.session.shown.result.array.shape)} to {written[0]}")
        return written[0]
    return None


def export_animation_dialog(window) -> Path | None:
    path, _filter = QFileDialog.getSaveFileName(window, "Export the run as an animation", suggested_path(window, ".gif"),
                                                "Animated GIF (*.gif);;MP4 video (*.mp4)")
    if path:
        return export_animation_to(window, path if Path(path).suffix.lower() in (".gif", ".mp4") else path + ".gif")
    return None


def export_animation_to(window, path: str, fps: float = 12.0) -> Path | None:
    written = _export(window, dict(animation=path, fps=fps, overwrite=True))  # the save dialog asked
    if written:
        window.say(f"Exported {len(window.session.shown.result.frames)} frames to {written[0]}")
        return written[0]
    return None


def _export(window, arguments: dict) -> list[Path] | None:
    try:
        written = window.session.export(**arguments)
    except ConvScopeError as error:
        window.show_error("Export failed", str(error))
        return None
    if written:
        _remember_folder(window, written[0])  # the next export dialog opens there
    return written
