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


MODEL_FILE_FILTER = "Models (*.pt *.pth *.ts *.pkl *.onnx);;PyTorch models (*.pt *.pth *.ts *.pkl);;ONNX models (*.onnx);;All files (*)"


def choose_model_file(parent) -> str:
    return QFileDialog.getOpenFileName(parent, "Open model file (TorchScript, pickled model or ONNX)", str(Path.home()),
                                       MODEL_FILE_FILTER)[0]


def choose_weights_file(parent, model_name: str) -> str:
    return QFileDialog.getOpenFileName(parent, f"Open weights for {model_name}", str(Path.home()),
                                       "State dicts (*.pt *.pth *.bin);;All files (*)")[0]


def ask_to_trust(parent, message: str) -> bool:
    """The file needs full unpickling, which can run code: load it anyway?"""
    answer = QMessageBox.question(
        parent, "Load a pickled model?", f"{message}\n\nLoad it anyway? Only do this if you trust where the file came from.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def offer_weights_file(parent, message: str, pick_file) -> QMessageBox:
    """Missing pretrained weights: say which file, and offer to pick it from disk
    (``pick_file()`` opens the file dialog). Non-blocking; returns the open message box."""
    box = QMessageBox(QMessageBox.Icon.Warning, "Weights not found", message, QMessageBox.StandardButton.Close, parent)
    pick = box.addButton("Open weights file…", QMessageBox.ButtonRole.AcceptRole)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.buttonClicked.connect(lambda button: button is pick and pick_file())
    box.open()
    return box
