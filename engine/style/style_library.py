"""Trained fast-style networks: the file format, and the library of them in the cache.

A style model file is ``torch.save`` of a plain dict, so it loads with
``engine.core.torch_files.read_torch_file`` (``weights_only=True``: no code runs when a file is opened)::

    {"format": "convscope-style-net", "version": 1,
     "architecture": {"styles": N, "width": W, "blocks": B},
     "state_dict": {name: tensor, ...},
     "style_names": [one name per style, in training order],
     "info": {how it was trained: loss model, layers, weights, steps, ...}}

A training checkpoint (``<file>.ckpt``, written by ``fast-style-train``) holds such a
dict under "model" beside the training state, so a half-trained style can be tried too.

The library is the folder ``<cache>/styles`` (see ``engine.core.cache_dir``): ``--save NAME``
without a folder or suffix saves ``<cache>/styles/NAME.pt``, and ``--style-model NAME``
finds it again. ``list_styles()`` is what the GUI offers.

ConvScope ships one style of its own (``engine/resources/styles``): the picture
``stained-glass.png``, drawn by ``packaging/make_style_picture.py``, and the network
``stained-glass.pt``, trained on it by ``fast-style-train`` (``make style-network``). They
are the defaults of ``style``, ``fast-style-train`` and ``fast-style``, so each runs as it
comes; a style of the same name in the library is the user's and comes first.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.core.cache_dir import cache_dir
from engine.core.errors import ConvScopeError, MethodInputError, UntrustedFileError
from engine.core.part_files import create_part_file, remove_stale_parts
from engine.core.torch_files import read_torch_file
from engine.data.images import write_atomically
from engine.style.style_net import StyleNet, build_style_net

STYLE_FORMAT = "convscope-style-net"
CHECKPOINT_FORMAT = "convscope-style-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".pt"
CHECKPOINT_SUFFIX = ".ckpt"
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._+-]+")
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "resources" / "styles"
DEFAULT_STYLE = "stained-glass"  # the shipped style picture and network, by name
PICTURE_SUFFIX = ".png"


@dataclass(frozen=True)
class StyleEntry:
    """One trained style in the library, as a list shows it."""

    name: str  # what --style-model takes
    path: Path
    style_names: list[str] = field(default_factory=list)  # the styles it holds, in order
    steps: int | None = None


@dataclass
class StyleModel:
    """A loaded style network and what its file says about it."""

    net: StyleNet
    path: Path
    style_names: list[str]
    info: dict[str, Any]
    from_checkpoint: bool = False


def library_dir() -> Path:
    return cache_dir() / "styles"


def style_picture(spec: str) -> str:
    """The picture a style field names: a file as given, or the name of a shipped style
    picture ('stained-glass') when no such file exists."""
    if not Path(spec).expanduser().exists() and is_library_name(spec):
        builtin = BUILTIN_DIR / (spec + PICTURE_SUFFIX)
        if builtin.is_file():
            return str(builtin)
    return spec


def style_name_for(style_paths: list[str]) -> str:
    """A library name from the style images' file names: 'starry_night', 'wave+scream'."""
    stems = [_UNSAFE_NAME_CHARACTERS.sub("_", Path(path).stem).strip("._") or "style" for path in style_paths]
    return "+".join(stems)[:120]


def is_library_name(spec: str) -> bool:
    """A bare name ('candy') means the library; anything with a folder or suffix is a path."""
    return bool(spec) and os.sep not in spec and "/" not in spec and not Path(spec).suffix


def save_path(spec: str | None, style_paths: list[str]) -> Path:
    """Where ``--save`` writes: a path as given, a bare name into the library, and by
    default the library under a name made from the style file names."""
    spec = (spec or "").strip()
    if not spec:
        return library_dir() / (style_name_for(style_paths) + SUFFIX)
    if is_library_name(spec):
        return library_dir() / (spec + SUFFIX)
    return Path(spec).expanduser()


def checkpoint_path(path: Path) -> Path:
    """The training checkpoint that belongs beside a style model file."""
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


def style_payload(net: StyleNet, style_names: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """The dict a style model file holds (tensors on the CPU, so any machine can load it)."""
    return {
        "format": STYLE_FORMAT,
        "version": FORMAT_VERSION,
        "architecture": net.architecture,
        "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in net.state_dict().items()},
        "style_names": list(style_names),
        "info": dict(info),
    }


def prepare_save_place(target: Path) -> None:
    """Refuse, before any training, a ``--save`` place that cannot be written, so a long run
    never dies at its first checkpoint; and remove what killed runs left there.

    Checked for real: the folder is created if need be, and a file is created in it and
    removed again, so a read-only folder, a missing permission, a file standing where a
    folder should be, or a folder under the checkpoint's name is found now.
    """
    checkpoint = checkpoint_path(target)
    for path in (target, checkpoint):
        if path.is_dir():
            raise MethodInputError(f"--save {target}: {path} is a folder; give a file name, such as {path / 'style.pt'}")
    blocking = next((parent for parent in target.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise MethodInputError(f"--save {target}: {blocking} is a file, not a folder; give a file in a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, probe = create_part_file(target)
        os.close(descriptor)
        probe.unlink()
    except OSError as exc:
        raise MethodInputError(f"--save {target}: cannot write there ({write_failure(exc)}); give a file in a "
                               "folder you can write to") from None
    for path in (target, checkpoint):
        remove_stale_parts(path.parent, path.name)


def write_failure(exc: OSError) -> str:
    """Why a write failed, in a few plain words ("no space left on device")."""
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def write_torch_file(path: Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` through a temporary sibling: a crash never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomically(path, lambda handle: handle.write(buffer.getbuffer()), overwrite=True)


def save_style(path: Path, net: StyleNet, style_names: list[str], info: dict[str, Any]) -> Path:
    return write_torch_file(path, style_payload(net, style_names, info))


def read_convscope_file(path: Path, what: str) -> dict[str, Any]:
    """A ConvScope file (a style model, a training checkpoint) read safely, with a message a person can act on."""
    advice = ("rerun with --restart to start over" if what == "training checkpoint"
              else "train one with fast-style-train and give the file it saves")
    try:
        payload = read_torch_file(path, f"ConvScope {what}", advice=advice, error=MethodInputError)
    except UntrustedFileError:
        raise MethodInputError(f"{path.name} holds Python objects beyond tensors, so it is not a ConvScope {what} "
                               f"(those are plain tensors and are never unpickled as code); {advice}") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise MethodInputError(f"{path.name} is a PyTorch file but not a ConvScope {what} (it has no 'format' entry); "
                               f"{advice}")
    return payload


def resolve_style_model(spec: str | None) -> Path:
    """The file ``--style-model`` means: a path, or a name in the library."""
    spec = (spec or "").strip()
    if not spec:
        raise MethodInputError("fast-style needs --style-model: a file written by fast-style-train, or the name of a "
                               f"trained style ({_known_styles()})")
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if is_library_name(spec):
        for folder in (library_dir(), BUILTIN_DIR):
            if (folder / (spec + SUFFIX)).is_file():
                return folder / (spec + SUFFIX)
    if path.exists():
        raise MethodInputError(f"{spec} is a folder, not a style model file")
    raise MethodInputError(f"no style model '{spec}': it is neither a file nor a style in the library "
                           f"({_known_styles()})")


def load_style(spec: str | None, device: torch.device | str = "cpu") -> StyleModel:
    """Load a style network from a file or a library name, checked against its format.

    A training checkpoint is accepted as well: its network is the one at the checkpoint.
    """
    path = resolve_style_model(spec)
    payload, from_checkpoint = _network_payload(path)
    try:
        architecture = {key: int(payload["architecture"][key]) for key in ("styles", "width", "blocks")}
        net = build_style_net(architecture, device)
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MethodInputError(f"{path.name} is a damaged style model: its weights do not fit its architecture "
                               f"({first[:200]}). Train it again") from None
    net.eval().requires_grad_(False)
    return StyleModel(net=net, path=path, style_names=_style_names(payload, net.styles), info=dict(payload.get("info", {})),
                      from_checkpoint=from_checkpoint)


def style_names_of(spec: str | None) -> list[str]:
    """The styles a network file or library name holds, in order, without building the
    network: what a mixer shows a slider for. Raises ``MethodInputError`` as ``load_style``."""
    payload, _ = _network_payload(resolve_style_model(spec))
    try:
        count = int(payload["architecture"]["styles"])
    except (KeyError, TypeError, ValueError):
        raise MethodInputError(f"{spec} is a damaged style model: it does not say how many styles it holds") from None
    return _style_names(payload, count)


def _network_payload(path: Path) -> tuple[dict[str, Any], bool]:
    """A style file's network dict, checked for format and version; and whether the file
    is a training checkpoint."""
    payload = read_convscope_file(path, "style model")
    from_checkpoint = payload.get("format") == CHECKPOINT_FORMAT
    if from_checkpoint:
        payload = payload.get("model")
        if not isinstance(payload, dict):
            raise MethodInputError(f"{path.name} is a damaged training checkpoint: it holds no network")
    if payload.get("format") != STYLE_FORMAT:
        raise MethodInputError(f"{path.name} is a '{payload.get('format')}' file, not a ConvScope style model; "
                               "train one with fast-style-train")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MethodInputError(f"{path.name} was written by a newer ConvScope (format version {version}); "
                               f"this one reads version {FORMAT_VERSION}. Update ConvScope or retrain the style")
    return payload, from_checkpoint


def _style_names(payload: dict[str, Any], count: int) -> list[str]:
    names = [str(name) for name in payload.get("style_names", [])]
    return names if len(names) == count else [f"style {i + 1}" for i in range(count)]


def list_styles() -> list[StyleEntry]:
    """The trained styles in the library and the shipped ones, by name (the library's
    first where both have a name); unreadable files are left out."""
    folder = library_dir()
    paths = []
    if folder.is_dir():
        remove_stale_parts(folder)  # style models and checkpoints whose writer was killed
        paths = sorted(folder.glob("*" + SUFFIX))
    names = {path.stem for path in paths}
    paths += [path for path in sorted(BUILTIN_DIR.glob("*" + SUFFIX)) if path.stem not in names]
    entries = []
    for path in paths:
        try:
            payload = read_torch_file(path, "ConvScope style model", mmap=True)
        except ConvScopeError:  # a damaged or foreign file in the folder: not a style to offer
            continue
        if not isinstance(payload, dict) or payload.get("format") != STYLE_FORMAT:
            continue
        info = payload.get("info", {}) if isinstance(payload.get("info"), dict) else {}
        steps = info.get("steps")
        entries.append(StyleEntry(name=path.stem, path=path, style_names=[str(n) for n in payload.get("style_names", [])],
                                  steps=int(steps) if isinstance(steps, int) else None))
    return entries


def _known_styles() -> str:
    names = [entry.name for entry in list_styles()]
    if not names:
        return f"the library {library_dir()} is empty; train a style with fast-style-train"
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"trained styles: {shown}"
