"""Temporary ``.part`` files: how a file is written before it is renamed into place, and
how the ones a killed process left behind are removed.

Every writer that must never leave half a file under its final name (``write_atomically``,
the download of pretrained weights, the render of the digits dataset) writes into a
hidden sibling ``.<final name>.<random hex>.part`` and renames it into place once it is
complete. A kill in between leaves the ``.part`` behind (a style network's checkpoint is
21 MB) and nothing would ever remove it: ``remove_stale_parts`` does, when the same
place is next written, listed or started from.

Stale, or a write in progress in another process? The writer holds an exclusive
``flock`` on its ``.part`` from the moment it creates it until it closes it, just
before the rename. The kernel drops the lock when the process ends, however it ends
(a kill -9 or a power cut included), so a ``.part`` that nobody holds a lock on has no
writer. That holds across processes, users and containers sharing a folder on one
machine, which a pid in the name would not (pids are reused and differ between
namespaces). Two short gaps remain, between creating the file and locking it and
between closing it and renaming it; a ``.part`` written to in the last ``GRACE_S`` is
therefore always kept. Where a lock cannot be checked (Windows, a network file system
without lock support) only a ``.part`` untouched for ``STALE_AFTER_S`` is removed: a
writer in progress keeps its file fresh (a download writes a chunk per read, and a read
times out after 30 s; the others write their bytes in one go). On Windows an open file
cannot be deleted either, which protects a writer there as well.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PART_SUFFIX = ".part"
GRACE_S = 60.0
STALE_AFTER_S = 3600.0
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def part_path(path: str | os.PathLike) -> Path:
    """A new hidden ``.part`` name beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART_SUFFIX}")


def create_part_file(path: str | os.PathLike, mode: int = 0o666) -> tuple[int, Path]:
    """A new ``.part`` file beside ``path``, open for writing and locked: (descriptor, path).

    The lock lasts until the descriptor is closed. Created with mode 0o666 by default, so
    the umask applies and the final file gets the permissions any new file of the user's
    would (tempfile.mkstemp would make it private).
    """
    while True:
        part = part_path(path)
        try:
            descriptor = os.open(part, _CREATE_FLAGS, mode)
        except FileExistsError:
            continue  # another writer drew the same name; draw again
        _lock(descriptor)
        return descriptor, part


@contextlib.contextmanager
def part_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new hidden ``.part`` folder beside ``path``, locked while the block runs.

    The block fills it and renames it into place; whatever is left of it afterwards (a
    failure, a cancel) is removed.
    """
    while True:
        folder = part_path(path)
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:
            continue
    descriptor = None
    try:
        descriptor = os.open(folder, os.O_RDONLY)
        _lock(descriptor)
    except OSError:
        pass  # unlockable: the age rule protects it
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if descriptor is not None:
            os.close(descriptor)


def remove_stale_parts(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the stale ``.part`` files and folders in ``folder`` (see the module's notes):
    those of the file ``name`` only, or every one when ``name`` is None. Returns what was
    removed; never raises (what cannot be listed or removed is left for another time).
    """
    prefix = f".{name}." if name is not None else "."
    try:
        with os.scandir(folder) as listing:
            candidates = [Path(entry.path) for entry in listing
                          if entry.name.startswith(prefix) and entry.name.endswith(PART_SUFFIX)]
    except OSError:
        return []
    removed = []
    for part in candidates:
        if _remove_if_stale(part):
            removed.append(part)
    return removed


def _remove_if_stale(part: Path) -> bool:
    written = _last_written(part)
    if written is None:
        return False
    age = time.time() - written
    if age < GRACE_S:
        return False
    with _probe(part) as held:
        if held or (held is None and age < STALE_AFTER_S):
            return False
        try:
            if part.is_dir() and not part.is_symlink():
                shutil.rmtree(part)
            else:
                part.unlink()
        except OSError:
            return False  # removed by someone else meanwhile, open on Windows, or not ours to remove
    return True


@contextlib.contextmanager
def _probe(part: Path) -> Iterator[bool | None]:
    """Whether a writer holds ``part``'s lock: True, False (then it is held here until the
    block ends, so no writer can take it meanwhile), or None when that cannot be told."""
    descriptor = _open_for_lock(part)
    held = None
    try:
        if descriptor is not None and fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            except OSError:  # no lock support here (some network file systems)
                held = None
        yield held
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _open_for_lock(part: Path) -> int | None:
    # A network file system may emulate flock with write locks, which need write access.
    for flags in ((os.O_RDONLY,) if part.is_dir() else (os.O_RDWR, os.O_RDONLY)):
        try:
            return os.open(part, flags)
        except OSError:
            continue
    return None


def _lock(descriptor: int) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # no lock support here: the age rule protects this file instead


def _last_written(part: Path) -> float | None:
    """When anything in ``part`` (a file, or a folder and what it holds) was last written."""
    try:
        newest = part.lstat().st_mtime
        if part.is_dir() and not part.is_symlink():
            for folder, _folders, files in os.walk(part):
                for entry in (folder, *(os.path.join(folder, file) for file in files)):
                    newest = max(newest, os.lstat(entry).st_mtime)
        return newest
    except OSError:
        return None
