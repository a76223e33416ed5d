"""Shared fixtures: the bundled model (loaded once), real sample photos, a tiny model."""

from __future__ import annotations

import gc
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# The window is tested on the screen it was tried on (1600x1000), not on the offscreen
# plugin's default 800x800, where a window opened at 90% of the screen is cramped.
if os.environ["QT_QPA_PLATFORM"] == "offscreen":
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={Path(__file__).with_name('offscreen_screen.json')}"

from engine.core.runtime import configure_process  # noqa: E402 - before numpy and torch load

configure_process()

import pytest
import torch
from torch import nn

from engine.data.images import load_image
from engine.models.preprocessing import Preprocessing
from engine.models.model import LoadedModel
from engine.models.registry import load_model
from engine.data.samples import sample_path

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def bundled():
    return load_model()


@pytest.fixture(scope="session")
def chelsea_path():
    return str(sample_path("chelsea"))


@pytest.fixture(scope="session")
def chelsea(chelsea_path):
    return load_image(chelsea_path)


class TinyNet(nn.Module):
    """Small enough for finite differences, with the parts real CNNs have."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(16, classes)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def make_tiny_model(size: int = 16, seed: int = 0, dtype=torch.float32) -> LoadedModel:
    torch.manual_seed(seed)
    module = TinyNet().to(dtype).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(name="tiny", module=module, preprocessing=Preprocessing(size=size, mean=(0.0,) * 3, std=(1.0,) * 3),
                       labels=[f"class {i}" for i in range(5)], weights="random",
                       layer_presets={"early": "features.1", "middle": "features.3", "late": "features.4"})


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def labelled_folder(tmp_path, monkeypatch):
    """The sample photos as a dataset folder with two labels, and a private feature cache."""
    import shutil

    from engine.data.samples import sample_paths

    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    for name, path in sample_paths().items():
        label = "texture" if name in ("brick", "grass", "gravel") else "photo"
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / label / path.name)
    return folder


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    """The real main window, started, with the bundled model and the sample photo loaded."""
    from PySide6.QtCore import QSettings

    from gui.main_window import MainWindow

    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    gc.collect()  # what windows made outside this fixture left, before this one's engine thread starts
    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    win.start_engine()
    qtbot.waitUntil(lambda: win.image_info is not None, timeout=120_000)
    yield win
    win.worker.stop()
    win.close()
    # Qt objects this window left in reference cycles are collected here, on the GUI
    # thread: a collection that a later window's engine thread happened to start would
    # destroy them there, and Qt aborts (gui/app.py collects on the GUI thread for the same reason).
    gc.collect()


@pytest.fixture
def photo_folder(tmp_path):
    """Two photos (one in a subfolder) and a file that is no picture: what a folder run meets."""
    import shutil

    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "cats").mkdir(parents=True)
    shutil.copy(sample_path("chelsea"), folder / "cats" / "chelsea.png")
    Image.open(sample_path("coffee")).resize((200, 150)).save(folder / "coffee.png")
    (folder / "broken.jpg").write_bytes(b"not a picture")
    return folder
