"""Shared fixtures: the bundled model (loaded once), real sample photos, a tiny model."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
import torch
from torch import nn

from engine.images import load_image
from engine.models.preprocessing import Preprocessing
from engine.models.registry import LoadedModel, load_model
from engine.samples import sample_path

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
