"""File > Export: the save dialogs, the question before replacing files, the messages.

What is written, and how, is the session's (``Session.export``); here are only the
questions to the user and the answers on screen. A failed write is a message naming the
file and the reason, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox

from engine.core.errors import ConvScopeError


def export_picture_dialog(window) -> list[Path] | None:
    session = window.session
    if session is None or session.shown is None:
        window.show_error("Export", "There is nothing on the canvas to export yet.")
        return None
    path, _filter = QFileDialog.getSaveFileName(window, "Export PNG and JSON sidecar", session.suggested_export_name(),
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
    written = _export(window, dict(picture=path, view=window.canvas.view_settings(), overwrite=bool(overwrite)))
    if written:
        extra = " and the coordinates as CSV" if len(written) > 2 else ""
        window.say(f"Exported {written[0]} and {written[1].name}{extra}")
    return written


def export_array_dialog(window) -> Path | None:
    suggested = window.session.suggested_export_name(".npy") if window.session else ""
    path, _filter = QFileDialog.getSaveFileName(window, "Export the raw result", suggested, "NumPy array (*.npy)")
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
    suggested = window.session.suggested_export_name(".gif") if window.session else ""
    path, _filter = QFileDialog.getSaveFileName(window, "Export the run as an animation", suggested,
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
        return window.session.export(**arguments)
    except ConvScopeError as error:
        window.show_error("Export failed", str(error))
        return None
