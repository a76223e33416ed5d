"""The window's file choosers and the questions a model load can raise."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QMessageBox

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp *.ppm *.pgm);;All files (*)"


def choose_image(parent) -> str:
    return QFileDialog.getOpenFileName(parent, "Open image", str(Path.home()), IMAGE_FILTER)[0]


def choose_dataset_folder(parent) -> str:
    return QFileDialog.getExistingDirectory(parent, "Open a folder of images (subfolders become labels)", str(Path.home()))


# The suffixes engine.data.datasets.LIST_SUFFIXES reads, written out: this module loads before the engine.
IMAGE_LIST_FILTER = "Lists of image paths (*.txt *.csv *.tsv *.lst);;All files (*)"


def choose_image_list(parent) -> str:
    """A file naming a dataset's images, one path a line (a label after a tab or comma)."""
    path, _ = QFileDialog.getOpenFileName(parent, "Open a list of image paths (one a line, a label after a tab or comma)",
                                          str(Path.home()), IMAGE_LIST_FILTER)
    return path


WEIGHTS_FILTER = "State dicts (*.pt *.pth *.bin *.safetensors);;All files (*)"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
MODEL_FILE_FILTER = ("Models (*.pt *.pth *.ts *.pkl *.onnx *.py);;PyTorch models (*.pt *.pth *.ts *.pkl);;"
                     "ONNX models (*.onnx);;Python files (*.py);;All files (*)")


def choose_folder(parent, title: str) -> str:
    return QFileDialog.getExistingDirectory(parent, title)


def choose_model_file(parent) -> str:
    return QFileDialog.getOpenFileName(
        parent, "Open model file (TorchScript, pickled model, ONNX, or a Python file defining the network)",
        str(Path.home()), MODEL_FILE_FILTER)[0]


def choose_weights_file(parent, model_name: str, start: str | None = None) -> str:
    return QFileDialog.getOpenFileName(parent, f"Open weights for {model_name}", start or str(Path.home()),
                                       WEIGHTS_FILTER)[0]


def ask_to_trust(parent, message: str, title: str = "Load a pickled model?") -> bool:
    """The file runs code when it is loaded (a pickle, a Python file): load it anyway?"""
    answer = QMessageBox.question(
        parent, title, f"{message}\n\nLoad it anyway? Only do this if you trust where the file came from.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def choose_python_weights(parent, script: str) -> str | None:
    """The weights for the network a Python file defines: a state-dict file's path, "" to
    keep the weights the file's own code gives it, None to open nothing after all.

    The file chooser starts on a weights file named like the script beside it (net.pt
    for net.py), if there is one: a likely answer, but only ever a suggestion.
    """
    script = Path(script)
    answer = QMessageBox.question(
        parent, "Weights for the network?",
        f"Load a weights file (a state dict) into the network {script.name} defines?\n\n"
        f"Yes: choose the file. No: keep the weights its own code gives it (random, unless it loads some itself).",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No | QMessageBox.StandardButton.Cancel,
        QMessageBox.StandardButton.Yes)
    if answer == QMessageBox.StandardButton.No:
        return ""
    if answer != QMessageBox.StandardButton.Yes:
        return None
    beside = next((script.with_suffix(suffix) for suffix in WEIGHTS_SUFFIXES if script.with_suffix(suffix).is_file()),
                  script.parent)
    return choose_weights_file(parent, script.name, str(beside)) or None


def offer_weights_file(parent, message: str, pick_file) -> QMessageBox:
    """Missing pretrained weights: say which file, and offer to pick it from disk
    (``pick_file()`` opens the file dialog). Non-blocking; returns the open message box."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Weights not found", message, QMessageBox.StandardButton.Close, parent)
    pick = box.addButton("Open weights file…", QMessageBox.ButtonRole.AcceptRole)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.buttonClicked.connect(lambda button: button is pick and pick_file())
    box.open()
    return box
