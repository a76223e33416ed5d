"""Reading files that ``torch.save`` wrote: the one place ConvScope unpickles anything.

Unpickling runs code: a pickle can name any importable function and have it called
while it loads. So every file is read with ``weights_only=True``, which rebuilds only
tensors and plain containers, and a file that needs more is refused with
``UntrustedFileError`` unless the caller passes ``trust=True`` (a whole model file the
user said they trust). Whether a file needs more is found out by reading its pickle
opcodes, never by running them. TorchScript archives, when a caller accepts them, are
loaded with ``torch.jit.load``, which runs TorchScript, not arbitrary Python.

Every other failure (no such file, a folder, no permission, an empty, foreign, cut-short
or damaged file) is one ``ConvScopeError`` line that names the file and says what to do.
PyTorch's own messages are never passed on whole: they advise re-running with
``weights_only=False``, which for a hostile file is exactly the wrong thing to do.
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

from engine.core.device import is_out_of_memory
from engine.core.errors import ConvScopeError, ModelLoadError, UntrustedFileError

# Training checkpoints often wrap the weights (or the model) in a dict under one of these.
CHECKPOINT_KEYS = ("state_dict", "model")
# Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A legacy (pre-zip, PyTorch < 1.6) torch.save file starts with these pickles: magic number,
# protocol version, system info, then the saved object. Raw tensor data follows.
LEGACY_PICKLE_COUNT = 4
SAFETENSORS_HEAD = 9  # the header's length (8 bytes) and the first byte of its JSON
ZIP_SIGNATURE = b"PK\x03\x04"  # every torch.save archive since PyTorch 1.6 is a zip
PICKLE_PROTOCOL_OPCODE = b"\x80"  # the first byte of a legacy torch.save file's first pickle
# How many of the Python names a pickle refers to are quoted in the refusal message.
QUOTED_NAMES = 5
# Words that mark PyTorch's advice to unpickle without safeguards; a detail holding them is dropped.
UNSAFE_ADVICE_MARKERS = ("weights_only", "weights only", "arbitrary code", "trusted source", "trust the source")
DETAIL_LENGTH = 160

WEIGHTS_ADVICE = 'choose another with "File > Open weights file..." or --weights FILE'


def read_torch_file(path: str | os.PathLike, what: str, *, advice: str = "",
                    error: type[ConvScopeError] = ModelLoadError, trust: bool = False, torchscript: bool = False,
                    mmap: bool = False) -> Any:
    """What ``torch.save`` wrote into ``path``, rebuilt from tensors and plain containers only.

    ``what`` names the file for the messages ("weights file", "ConvScope style model");
    ``advice`` ends them, saying what to do instead. Raises ``UntrustedFileError`` when the
    file is a pickle of arbitrary Python objects, unless ``trust`` is true: then, and only
    then, it is unpickled in full. A TorchScript archive comes back as a
    ``torch.jit.ScriptModule`` when ``torchscript`` is true and is refused otherwise.
    ``mmap`` maps a zip archive's tensors instead of reading them (for a quick look).
    Every other failure raises ``error`` with one line naming the file.
    """
    path = Path(path)
    kind = _torch_format(path, what, advice, error)
    if kind == "zip" and is_torchscript_archive(path):
        if not torchscript:
            raise error(_sentence(f"{path.name} is a TorchScript model, not a {what}", advice))
        return _load_torchscript(path, advice, error)
    try:
        with warnings.catch_warnings():
            # Notes about pickle protocols and storage types: nothing a person can act on.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError:
        # Raised both for a pickle of arbitrary objects and for data that is no pickle at all.
        code_names = _pickled_code_names(path, kind)
        if code_names is None:
            raise _damaged(path, advice, error, "") from None
        if not trust:
            raise UntrustedFileError(_untrusted_message(path, code_names)) from None
    except OSError as exc:
        raise error(_sentence(f"cannot read {path}: {_os_reason(exc)}", advice)) from None
    except Exception as exc:  # torch.load fails in many ways on a damaged file
        if is_out_of_memory(exc):
            raise
        raise _damaged(path, advice, error, _detail(exc)) from None
    return _load_trusted(path, advice, error)


def read_state_dict(path: str | os.PathLike, what: str = "weights file", *,
                    advice: str = WEIGHTS_ADVICE) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read with ``weights_only=True`` and nothing else.

    Accepts a plain state dict, or a checkpoint dict wrapping one under "state_dict" or
    "model", or a safetensors file (Hugging Face's format, tensors only by design); a "module." (or torch.compile's "_orig_mod.") prefix on every key is removed.
    Raises ``ModelLoadError`` (never ``UntrustedFileError``: weights never need full
    unpickling, so there is nothing to trust).
    """
    path = Path(path)
    if is_safetensors_file(path):
        return _read_safetensors(path, what, advice)
    _torch_format(path, what, advice, ModelLoadError)
    if is_torchscript_archive(path):
        raise ModelLoadError(f"{path.name} is a TorchScript model, not a {what}: open it as the model itself")
    try:
        content = read_torch_file(path, what, advice=advice)
    except UntrustedFileError:
        raise ModelLoadError(
            f"{path.name} is not a plain {what}: it holds pickled Python objects, which could run "
            f"code when loaded. If it is a whole pickled model and you trust it, open it as the model "
            f"instead of as weights"
        ) from None
    state_dict = as_state_dict(content)
    if state_dict is None:
        raise ModelLoadError(
            f"{path.name} holds a {type(content).__name__}, not a state dict (parameter names mapped to tensors)"
        )
    return state_dict


def is_safetensors_file(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte little-endian header
    length, then the JSON header's opening brace."""
    try:
        with path.open("rb") as stream:
            head = stream.read(SAFETENSORS_HEAD)
    except OSError:
        return False  # _torch_format says what is wrong with it
    if len(head) < SAFETENSORS_HEAD or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path, what: str, advice: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, advice, ModelLoadError, _detail(exc)) from None
    return as_state_dict(state_dict) or {}


def is_torchscript_archive(path: Path) -> bool:
    # torch.save archives and TorchScript archives are both zips, laid out as
    # "<archive name>/<record>"; only TorchScript has a "constants.pkl" record.
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.partition("/")[2] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def unwrap_checkpoint(content: Any) -> Any:
    """The network or weights a training checkpoint holds under "state_dict" or "model", else ``content``."""
    if isinstance(content, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = content.get(key)
            if isinstance(inner, (Mapping, torch.nn.Module)):
                return inner
    return content


def as_state_dict(content: Any) -> dict[str, torch.Tensor] | None:
    """``content`` as a state dict (unwrapped, prefixes removed), or None if it is not one."""
    content = unwrap_checkpoint(content)
    if not isinstance(content, Mapping) or not content:
        return None
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()):
        return None
    state_dict = dict(content)
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            state_dict = {key.removeprefix(prefix): value for key, value in state_dict.items()}
    return state_dict


def _torch_format(path: Path, what: str, advice: str, error: type[ConvScopeError]) -> str:
    """"zip" or "legacy": which torch.save layout the file starts like; or one clear error."""
    try:
        with path.open("rb") as stream:
            head = stream.read(len(ZIP_SIGNATURE))
    except FileNotFoundError:
        raise error(_sentence(f"{path} does not exist", advice)) from None
    except IsADirectoryError:
        raise error(_sentence(f"{path} is a folder, not a {what}", advice)) from None
    except OSError as exc:
        if path.is_dir():  # Windows says "permission denied" for a folder
            raise error(_sentence(f"{path} is a folder, not a {what}", advice)) from None
        raise error(_sentence(f"cannot read {path}: {_os_reason(exc)}", advice)) from None
    if not head:
        raise error(_sentence(f"{path} is empty (0 bytes: an interrupted download or copy?)", advice))
    if head == ZIP_SIGNATURE:
        return "zip"
    if head.startswith(PICKLE_PROTOCOL_OPCODE) and _is_legacy_torch_pickle(path):
        return "legacy"
    raise error(_sentence(f"cannot read {path.name}: it is not a PyTorch file at all, so not a {what}", advice))


def _load_torchscript(path: Path, advice: str, error: type[ConvScopeError]) -> torch.nn.Module:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export; the user has a file to open all the same.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # a damaged archive can fail in many ways; say which file and why
            if is_out_of_memory(exc):
                raise
            raise _damaged(path, advice, error, _detail(exc)) from None


def _load_trusted(path: Path, advice: str, error: type[ConvScopeError]) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as exc:
        raise error(
            f"cannot load {path.name}: {_detail(exc) or type(exc).__name__}. A pickled model needs the Python code "
            f"that defined its classes to be importable; a TorchScript export of it does not"
        ) from None
    except Exception as exc:  # anything can go wrong while running someone else's pickle
        if is_out_of_memory(exc):
            raise
        raise _damaged(path, advice, error, _detail(exc)) from None


def _pickled_code_names(path: Path, kind: str) -> list[str] | None:
    """The Python classes and functions a full pickle would import, read without running it.

    None when the file is not a torch.save pickle at all; an empty list when it is one
    whose names cannot be listed (the legacy format).
    """
    if kind == "zip":
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a torch.save archive
            return None
        return sorted(names) or None
    return []


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


def _damaged(path: Path, advice: str, error: type[ConvScopeError], detail: str) -> ConvScopeError:
    because = f" ({detail})" if detail else ""
    return error(_sentence(f"cannot read {path.name}: it is a damaged or incomplete PyTorch file, perhaps from an "
                           f"interrupted download or copy{because}", advice))


def _detail(exc: BaseException) -> str:
    """The first sentence of an error, short, or '' if it holds PyTorch's advice to unpickle anyway."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].rstrip(".")
    if not first or any(marker in first.lower() for marker in UNSAFE_ADVICE_MARKERS):
        return ""
    return first if len(first) <= DETAIL_LENGTH else first[:DETAIL_LENGTH - 3] + "..."


def _os_reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _sentence(message: str, advice: str) -> str:
    return f"{message}; {advice}" if advice else message
