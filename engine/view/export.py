"""Exporting what the canvas shows: a PNG, and a JSON sidecar that says how it was made.

The sidecar records what is needed to reproduce the picture (model, weights, layer,
method and parameters, source image, preprocessing, device) and the versions of the
software that drew it. The files are written together (``write_together``): an
interrupted or failed export leaves either all of them new or all as they were, never
half a file under the user's chosen name, nor a new picture beside an old sidecar.

This module is imported by the GUI at start-up, so it stays cheap: no Qt ever, and torch
is only imported when its version is asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import functools
import importlib
import io
import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import PIL

from engine import __version__
from engine.data.images import image_from_array, write_png, write_together

# Bumped whenever a sidecar key changes meaning, so readers can tell old files apart.
SIDECAR_FORMAT = 1


def build_sidecar(
    *,
    model: str,
    weights: str,
    layer,
    method,
    params: dict,
    image_path,
    preprocessing: dict | None = None,
    device: str = "cpu",
    metrics: dict | None = None,
    target=None,
) -> dict:
    """The sidecar for one exported picture, as a dict of plain JSON values."""
    sidecar = {
        "convscope_sidecar": SIDECAR_FORMAT,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "model": model,
        "weights": weights,
        "layer": layer,
        "method": method,
        "target": target,
        "params": params,
        "image_path": image_path,
        "preprocessing": preprocessing or {},
        "device": device,
        "metrics": metrics or {},
        "versions": software_versions(),
    }
    return to_jsonable(sidecar)


@functools.lru_cache(maxsize=1)
def _cached_versions() -> tuple[tuple[str, str | None], ...]:
    return (
        ("convscope", __version__),
        ("python", platform.python_version()),
        ("torch", _module_version("torch")),
        ("torchvision", _module_version("torchvision")),
        ("numpy", np.__version__),
        ("pillow", PIL.__version__),
        ("platform", platform.platform()),
    )


def software_versions() -> dict[str, str | None]:
    """Versions of ConvScope and what it runs on; None for a package that is missing."""
    return dict(_cached_versions())


def _module_version(name: str) -> str | None:
    # Imported here rather than at the top: torch takes seconds to import, and by the
    # time anything is exported the engine has loaded it already.
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return str(module.__version__)


def to_jsonable(value):
    """``value`` rebuilt from types that ``json`` writes as themselves.

    Numpy scalars and arrays (and torch tensors) become Python numbers and lists, tuples
    and sets become lists, paths become strings, and NaN or infinity become None because
    JSON has no spelling for them. Anything else unknown is written as its ``str()``: a
    sidecar that says a little less is better than an export that fails.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "tolist"):  # before int/float: numpy's float64 subclasses float
        return to_jsonable(value.tolist())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_jsonable(item) for item in value), key=repr)  # stable file contents
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    return str(value)


def sidecar_path_for(png_path: str | os.PathLike) -> Path:
    """Where the sidecar of a PNG goes: next to it, same stem, ``.json``."""
    return Path(png_path).with_suffix(".json")


def export_png(
    path: str | os.PathLike, rgb: np.ndarray, sidecar: dict, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``rgb`` (HxWx3 uint8) as a PNG at ``path`` and ``sidecar`` as JSON next to it.

    The pair is written together (``write_together``): either both files are new or both
    are as they were. Unless ``overwrite`` is true, nothing is written if either file
    exists already (FileExistsError names it). Returns the paths of the PNG and the sidecar.
    """
    png_path = Path(path)
    written = write_together(picture_files(png_path, rgb, sidecar), overwrite=overwrite)
    return written[0], written[1]


def picture_files(path: str | os.PathLike, rgb: np.ndarray, sidecar: dict) -> list[tuple[Path, object]]:
    """The PNG and its sidecar as ``(path, write)`` pairs for ``write_together``.

    Everything that can fail short of the disk (a wrong array, a .json name) fails here,
    before the first byte is written.
    """
    png_path = Path(path)
    json_path = sidecar_path_for(png_path)
    if json_path == png_path:
        raise ValueError(f"{png_path}: a picture cannot be exported under a .json name")
    png_bytes = _encode_png(rgb)
    json_bytes = (
        json.dumps(to_jsonable(sidecar), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode("utf-8")
    return [(png_path, _writing(png_bytes)), (json_path, _writing(json_bytes))]


def array_file(path: str | os.PathLike, array: np.ndarray) -> tuple[Path, object]:
    """A raw result as float32 ``.npy``, as a ``(path, write)`` pair for ``write_together``."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return Path(path), _writing(buffer.getvalue())


def _writing(content: bytes):
    return lambda handle: handle.write(content)


def describe_write_failure(target: str | os.PathLike, error: OSError) -> str:
    """Why ``target`` could not be written, in words a person can act on."""
    target = Path(target)
    blocking = next((parent for parent in target.parents if parent.exists()), None)
    if isinstance(error, IsADirectoryError) or target.is_dir():
        return "it is a folder"
    if blocking is not None and not blocking.is_dir():
        return f"{blocking} is a file, not a folder"
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    if error.errno == errno.EDQUOT:
        return "the disk quota is used up"
    if error.errno == errno.EROFS:
        return "the file system is read-only"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {target.parent}"
    return error.strerror or str(error)


def _encode_png(rgb: np.ndarray) -> bytes:
    array = np.asarray(rgb)
    # No silent conversion: a float 0..1 array cast to uint8 would export a black picture.
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 array to export, got shape {array.shape} and dtype {array.dtype}")
    buffer = io.BytesIO()
    write_png(buffer, image_from_array(array))
    return buffer.getvalue()


def save_array(path: str | os.PathLike, array: np.ndarray) -> Path:
    """A method's raw result as float32 ``.npy``, written atomically (replacing any old file)."""
    return write_together([array_file(path, array)], overwrite=True)[0]
