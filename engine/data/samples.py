"""Sample photos that ship with scikit-image: real pictures, available offline.

Found by path, without importing scikit-image itself, so the window can list them
before any heavy import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_FILES = {
    "chelsea": "chelsea.png",  # a tabby cat
    "coffee": "coffee.png",
    "astronaut": "astronaut.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "camera": "camera.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}
DEFAULT_SAMPLE = "chelsea"


def sample_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_paths() -> dict[str, Path]:
    folder = sample_dir()
    if folder is None:
        return {}
    return {name: folder / file for name, file in SAMPLE_FILES.items() if (folder / file).is_file()}


def sample_path(name: str = DEFAULT_SAMPLE) -> Path | None:
    return sample_paths().get(name)
