"""Reading the model and weights files a user picks.

Unpickling runs code: a pickle can name any importable function and have it called
while it loads. So every file is first read with ``weights_only=True``, which rebuilds
only tensors and plain containers, and a file that needs more is refused unless the
user says they trust it. Whether a file needs more is found out by reading its pickle
opcodes, never by running them. TorchScript archives are loaded with
``torch.jit.load``, which runs TorchScript, not arbitrary Python.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.errors import ModelLoadError, UntrustedFileError
from engine.models.model import first_line

# Training checkpoints often wrap the weights (or the model) in a dict under one of these.
CHECKPOINT_KEYS = ("state_dict", "model")
# Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A legacy (pre-zip, PyTorch < 1.6) torch.save file starts with these pickles: magic number,
# protocol version, system info, then the saved object. Raw tensor data follows.
LEGACY_PICKLE_COUNT = 4
# How many of the Python names a pickle refers to are quoted in the refusal message.
QUOTED_NAMES = 5


def load_model_file(path: str | os.PathLike, trust: bool = False) -> nn.Module:
    """A whole network from a TorchScript archive or a ``torch.save``'d ``nn.Module``.

    A pickled module needs full unpickling, which can run any code in the file: it is
    refused with ``UntrustedFileError`` unless ``trust`` is true.
    """
    path = _existing_file(path)
    if _is_torchscript_archive(path):
        return _load_torchscript(path)
    try:
        content = _load_weights_only(path)
    except UntrustedFileError:
        if not trust:
            raise
        content = _load_trusted(path)
    content = _unwrap_checkpoint(content)
    if isinstance(content, nn.Module):
        return content
    if _as_state_dict(content) is not None:
        raise ModelLoadError(
            f"{path.name} is a state dict: it holds weights but not the network they belong to, so it needs "
            f"an architecture name. Choose the architecture in the model list and open the file with "
            f'"File > Open weights file...", or run with --model ARCH --weights {path.name}'
        )
    raise ModelLoadError(f"{path.name} holds a {type(content).__name__}, not a model")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read with ``weights_only=True`` and nothing else.

    Accepts a plain state dict, or a checkpoint dict wrapping one under "state_dict" or
    "model"; a "module." (or torch.compile's "_orig_mod.") prefix on every key is removed.
    """
    path = _existing_file(path)
    if _is_torchscript_archive(path):
        raise ModelLoadError(
            f"{path.name} is a TorchScript model, not a weights file: open it as the model itself"
        )
    try:
        content = _load_weights_only(path)
    except UntrustedFileError:
        # Weights never need full unpickling, so there is nothing to trust here.
        raise ModelLoadError(
            f"{path.name} is not a plain weights file: it holds pickled Python objects, which could run "
            f"code when loaded. If it is a whole pickled model and you trust it, open it as the model "
            f"instead of as weights"
        ) from None
    state_dict = _as_state_dict(content)
    if state_dict is None:
        raise ModelLoadError(
            f"{path.name} holds a {type(content).__name__}, not a state dict (parameter names mapped to tensors)"
        )
    return state_dict


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty (an interrupted download or copy?)")
    return path


def _is_torchscript_archive(path: Path) -> bool:
    # torch.save archives and TorchScript archives are both zips, laid out as
    # "<archive name>/<record>"; only TorchScript has a "constants.pkl" record.
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.partition("/")[2] == "constants.pkl" for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export; the user has a file to open all the same.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # a damaged archive can fail in many ways; say which file and why
            raise _unreadable(path, first_line(exc)) from None


def _load_weights_only(path: Path) -> Any:
    """``torch.load`` that rebuilds tensors and plain containers only, so nothing in the file can run.

    Raises ``UntrustedFileError`` when the file is a full pickle of Python objects.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Raised both for a pickle of arbitrary objects and for a file that is no pickle at all.
        code_names = _pickled_code_names(path)
        if code_names is None:
            raise _unreadable(path, "not a readable pickle") from None
        raise UntrustedFileError(_untrusted_message(path, code_names)) from None
    except Exception as exc:  # torch.load fails in many ways on a file that is not a checkpoint
        raise _unreadable(path, first_line(exc)) from None


def _load_trusted(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as exc:
        raise ModelLoadError(
            f"cannot load {path.name}: {first_line(exc)}. A pickled model needs the Python code that "
            f"defined its classes to be importable; a TorchScript export of it does not"
        ) from None
    except Exception as exc:  # anything can go wrong while running someone else's pickle
        raise _unreadable(path, first_line(exc)) from None


def _pickled_code_names(path: Path) -> list[str] | None:
    """The Python classes and functions a full pickle would import, read without running it.

    None when the file is not a torch.save pickle at all; an empty list when it is one
    whose names cannot be listed (the legacy format).
    """
    if zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a torch.save archive
            return None
        return sorted(names) or None
    return [] if _is_legacy_torch_pickle(path) else None


def _is_legacy_torch_pickle(path: Path) -> bool:
    # pickletools only parses opcodes; nothing is imported or called.
    try:
        with path.open("rb") as stream:
            for _ in range(LEGACY_PICKLE_COUNT):
                for _opcode, _argument, _position in pickletools.genops(stream):
                    pass
    except Exception:  # any parse error means the bytes are not a pickle stream
        return False
    return True


def _untrusted_message(path: Path, code_names: list[str]) -> str:
    refers_to = ""
    if code_names:
        quoted = ", ".join(code_names[:QUOTED_NAMES])
        more = f" and {len(code_names) - QUOTED_NAMES} more" if len(code_names) > QUOTED_NAMES else ""
        refers_to = f" (it calls {quoted}{more})"
    return (
        f"{path.name} is a pickled Python object; loading it can run any code inside it{refers_to}. "
        f"Open it only if you trust where it came from: confirm in the dialog / pass --trust"
    )


def _unwrap_checkpoint(content: Any) -> Any:
    if isinstance(content, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = content.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                return inner
    return content


def _as_state_dict(content: Any) -> dict[str, torch.Tensor] | None:
    """``content`` as a state dict (unwrapped, prefixes removed), or None if it is not one."""
    content = _unwrap_checkpoint(content)
    if not isinstance(content, Mapping) or not content:
        return None
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()):
        return None
    state_dict = dict(content)
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            state_dict = {key.removeprefix(prefix): value for key, value in state_dict.items()}
    return state_dict


def _unreadable(path: Path, detail: str) -> ModelLoadError:
    return ModelLoadError(
        f"cannot read {path.name}: it is not a PyTorch model or weights file, or it is damaged ({detail})"
    )
