"""A network defined in the user's own Python file, with its weights from a state-dict file.

Opening ``net.py`` as a model runs it, so, like a pickled model, it is refused with
``UntrustedFileError`` unless the user says they trust it (a dialog in the window,
``--trust`` on the command line). What can be checked without running anything is
checked first: that the file exists and compiles, and that the weights file reads.

What the file must define, looked for in this order:

1. a function ``build_model()`` (or ``create_model()`` or ``get_model()``), defined in the
   file itself, that returns the ``torch.nn.Module``; it is called without arguments;
2. else a module-level ``model`` that is a ``torch.nn.Module``;
3. else exactly one ``torch.nn.Module`` subclass, defined in the file itself, whose
   constructor needs no arguments; it is constructed once.

The file is imported under a private module name, so its ``if __name__ == "__main__":``
block (a training script's) does not run. Its folder is importable while it is imported
and built, so ``import helpers`` finds ``helpers.py`` beside it; afterwards ``sys.path``
is as it was and the modules imported from that folder are dropped from ``sys.modules``
(the network keeps them; the next file's ``helpers.py`` is its own). No ``__pycache__``
is written beside the user's files.

The weights file (``--weights``, or the window's question after the trust dialog) is read
with ``weights_only=True`` and its keys checked against the network's before any is
copied. Without one the network keeps the weights the file's own code gives it.

An exception while the file is imported or the network built is reported in one line with
its type, its message and the line of the user's file it came from, never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import itertools
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from torch import nn

from engine.core.device import is_out_of_memory
from engine.core.errors import ModelLoadError, UntrustedFileError
from engine.core.torch_files import read_state_dict
from engine.core.errors import first_line
from engine.models.state_dicts import load_state_dict
from engine.models.user_files import MODEL_ADVICE

PYTHON_SUFFIX = ".py"
BUILD_FUNCTIONS = ("build_model", "create_model", "get_model")
MODEL_VARIABLE = "model"
WHAT_TO_DEFINE = (
    f"define a function build_model() that returns the torch.nn.Module, or a module-level "
    f"`{MODEL_VARIABLE} = ...` holding one, or a single nn.Module class whose constructor needs no arguments"
)
FIX_ADVICE = 'fix it and open it again with "File > Open model file..." or --model FILE'

_module_numbers = itertools.count(1)  # each import gets its own private module name


def is_python_model_file(name: str | os.PathLike) -> bool:
    """Whether ``load_model`` opens ``name`` as a Python file defining a network."""
    return Path(name).suffix.lower() == PYTHON_SUFFIX


def load_python_model(path: str | os.PathLike, weights_path: str | os.PathLike | None = None,
                      trust: bool = False) -> tuple[nn.Module, str]:
    """The network ``path`` defines, with the weights of ``weights_path`` when given, and
    a description of both files for the export sidecar.

    Raises ``UntrustedFileError`` unless ``trust`` is true (the file is run to build the
    network), and ``ModelLoadError`` for a file that cannot be read, compiled, imported or
    built, defines no network, or whose network the weights do not fit.
    """
    path = Path(path)
    _check_source(path)
    weights_file = Path(weights_path) if weights_path is not None else None
    state_dict = read_state_dict(weights_file) if weights_file is not None else None
    if not trust:
        raise UntrustedFileError(
            f"{path.name} is Python code: opening it as a model runs it, and it can do anything you can do "
            f"on this computer. Open it only if you trust where it came from: confirm in the dialog / pass --trust"
        )
    module = build_python_model(path)
    if state_dict is None:
        return module, f"the network {path.resolve()} defines, with the weights its own code gives it"
    load_state_dict(module, path.name, state_dict, weights_file)
    return module, f"{weights_file.resolve()} in the network {path.resolve()} defines"


def build_python_model(path: Path) -> nn.Module:
    """Import ``path`` under a private name and build the network it defines (see the
    module's docstring). Runs the file: only for a file the user trusts."""
    with _importable_folder(path.parent.resolve()):
        source = _import(path)
        how, build = _builder(source, path)
        try:
            module = build()
        except Exception as exc:  # the user's code can fail in any way; say where in it
            if is_out_of_memory(exc):
                raise
            raise ModelLoadError(f"{how} failed: {_where(exc, path)}; {FIX_ADVICE}") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{how} returned a {type(module).__name__}, not a torch.nn.Module; {WHAT_TO_DEFINE}")
    return module


def _check_source(path: Path) -> None:
    """A clear error for a file that is missing, unreadable or not Python; nothing is run."""
    try:
        code = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist; {MODEL_ADVICE}") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a folder, not a Python file; {MODEL_ADVICE}") from None
    except OSError as exc:
        if path.is_dir():  # Windows says "permission denied" for a folder
            raise ModelLoadError(f"{path} is a folder, not a Python file; {MODEL_ADVICE}") from None
        raise ModelLoadError(f"cannot read {path}: {(exc.strerror or type(exc).__name__).lower()}; {MODEL_ADVICE}") from None
    try:
        compile(code, str(path), "exec", dont_inherit=True)  # compiling runs nothing
    except SyntaxError as exc:
        raise ModelLoadError(f"{_syntax_error(exc, path)}; {FIX_ADVICE}") from None


def _import(path: Path) -> ModuleType:
    name = f"_convscope_user_model_{next(_module_numbers)}"
    spec = importlib.util.spec_from_file_location(name, path)
    source = importlib.util.module_from_spec(spec)
    sys.modules[name] = source  # while it runs: dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(source)
    except SyntaxError as exc:  # in a helper module it imports (its own was compiled already)
        raise ModelLoadError(f"{_syntax_error(exc, path)}; {FIX_ADVICE}") from None
    except (Exception, SystemExit) as exc:  # an exit() at the top of a script ends nothing here
        if is_out_of_memory(exc):
            raise
        raise ModelLoadError(f"importing {path.name} failed: {_where(exc, path)}; {FIX_ADVICE}") from None
    finally:
        sys.modules.pop(name, None)
    return source


def _builder(source: ModuleType, path: Path):
    """How the network is made ("build_model() in net.py") and the call that makes it."""
    defined_here = {name: value for name, value in vars(source).items()
                    if getattr(value, "__module__", None) == source.__name__}
    for name in BUILD_FUNCTIONS:
        if callable(defined_here.get(name)):
            return f"{name}() in {path.name}", defined_here[name]
    variable = vars(source).get(MODEL_VARIABLE)
    if isinstance(variable, nn.Module):
        return f"`{MODEL_VARIABLE}` in {path.name}", lambda: variable
    classes = [value for value in defined_here.values() if isinstance(value, type) and issubclass(value, nn.Module)]
    buildable = [cls for cls in classes if not _required_arguments(cls)]
    if len(buildable) == 1:
        return f"{buildable[0].__name__}() in {path.name}", buildable[0]
    if len(buildable) > 1:
        names = ", ".join(cls.__name__ for cls in buildable)
        raise ModelLoadError(
            f"{path.name} defines {len(buildable)} nn.Module classes that need no arguments ({names}), so which one "
            f"is the network is not clear: add `def build_model(): return {buildable[-1].__name__}()` to it"
        )
    needing = "; ".join(f"{cls.__name__} needs {', '.join(_required_arguments(cls))}" for cls in classes)
    found = f" ({needing})" if needing else ""
    if MODEL_VARIABLE in vars(source):
        found += f" (its `{MODEL_VARIABLE}` is a {type(variable).__name__})"
    raise ModelLoadError(f"{path.name} defines no network ConvScope can build{found}: {WHAT_TO_DEFINE}")


def _required_arguments(cls: type) -> list[str]:
    """The constructor's arguments that have no default ([] when it needs none)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it and see
        return []
    return [p.name for p in parameters
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _where(exc: BaseException, path: Path) -> str:
    """'net.py line 12 (in build_model): ValueError: message': the exception, and the
    deepest line of the user's files (the model's folder) it passed through."""
    folder = path.parent.resolve()
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if _is_within(frame.filename, folder)]
    what = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
    if not frames:
        return what
    frame = frames[-1]
    inside = f" (in {frame.name})" if frame.name != "<module>" else ""
    return f"{Path(frame.filename).name} line {frame.lineno}{inside}: {what}"


def _syntax_error(exc: SyntaxError, path: Path) -> str:
    where = f"{Path(exc.filename).name if exc.filename else path.name}"
    if exc.lineno:
        where += f" line {exc.lineno}"
    return f"{where} is not valid Python: {exc.msg}"


@contextlib.contextmanager
def _importable_folder(folder: Path) -> Iterator[None]:
    """``folder`` importable first, with no bytecode written, and undone afterwards: the
    entry put on ``sys.path`` taken off, and the modules imported from ``folder`` dropped."""
    importlib.invalidate_caches()  # files written since the last import (a test's, an editor's)
    before = set(sys.modules)
    entry = str(folder)
    sys.path.insert(0, entry)
    dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
        if entry in sys.path:
            sys.path.remove(entry)
        for name in set(sys.modules) - before:
            if _loaded_from(sys.modules[name], folder):
                del sys.modules[name]


def _loaded_from(module: ModuleType, folder: Path) -> bool:
    spec = getattr(module, "__spec__", None)
    places = [getattr(module, "__file__", None), *(getattr(spec, "submodule_search_locations", None) or [])]
    return any(place and _is_within(place, folder) for place in places)


def _is_within(filename: str, folder: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False
