"""An on-disk cache of one vector per image file, that survives crashes and grows by appending.

One store holds the vectors of one kind of feature: the key (``key_parts``: model,
weights, layer, preprocessing, what is stored) is hashed into the store's folder name,
so a different model or layer simply opens a different store. Inside, each image file
is identified by (absolute path, size, mtime_ns): an edited or replaced file misses and
is extracted again; its old row is left behind, unused.

Layout of a store folder::

    index.sqlite          files(path, size, mtime_ns, row) and info(name, value)
    shard-00000.vec       rows 0 .. shard_rows-1: raw little-endian float16 (or float32), row-major
    shard-00000.norm      the L2 norm of each of those rows, float32 (for nearest-neighbour queries)
    shard-00001.vec ...   (a shard holds up to 1 GiB: 419,430 rows of 1,280 float16)

Why this design:

- Vectors live in fixed-capacity shards of raw rows that grow by appending, and are read
  through ``np.memmap``: 100,000 x 1,280 float16 (256 MB) never needs to be in memory,
  the OS pages in what a query touches, and no file is ever rewritten or preallocated
  (a 9-image dataset costs 9 rows, not a shard). Shards are large (1 GiB) because a
  query makes one pass per shard, and each pass has a fixed cost on a busy machine;
  their cap keeps every file far below any file system's size limit.
- The index is SQLite (standard library): each ``append`` is one transaction, so a crash
  or a cancel leaves every committed batch usable and nothing half-written visible. A
  JSON or ``.npz`` index would have to be rewritten whole on every batch (quadratic for
  a big folder) and could be torn by a crash.
- Ordering makes it crash-safe: vectors are written and fsync'ed *before* the
  transaction that points at them commits. Rows written but never committed are simply
  overwritten by the next append. The row counter lives in the same transaction, and
  ``BEGIN IMMEDIATE`` serialises writers, so two processes appending to one store get
  distinct rows.
- Filling a store is claimed, not just its rows: two processes extracting the same
  dataset into one store would each compute every row (consistent, but the work done
  twice). ``fill_lock`` gives one of them the work; the other waits and then finds the
  rows already there (see ``engine.data.extraction``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

FORMAT = 1
SHARD_BYTES = 1 << 30  # rows per shard are chosen so a full shard file is 1 GiB
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_QUERY_CHUNK = 500  # paths per SELECT ... IN (...), well under SQLite's variable limit


def default_root() -> Path:
    """``<cache>/features``: where feature stores live unless told otherwise."""
    from engine.core.cache_dir import cache_dir

    return cache_dir() / "features"


def store_key(key_parts: dict) -> str:
    """The hex digest naming a store: the same parts always give the same store."""
    text = json.dumps({"format": FORMAT, **key_parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureStore:
    """Vectors of image files, one row each, in memory-mapped shards with an SQLite index.

    Open with ``FeatureStore.open``; ``lookup`` finds cached rows, ``append`` adds new
    ones durably, ``matrix`` gathers rows, ``blocks`` and ``norms`` give every row
    without copying for a fast query (``engine.data.nearest.nearest``). Row numbers
    are stable for the life of the store. One object may be shared between threads
    (calls are serialised by a lock), and several processes may share a store folder.
    """

    def __init__(self, folder: Path, key_parts: dict, dtype: np.dtype, connection: sqlite3.Connection) -> None:
        self.folder = folder
        self.key_parts = key_parts
        self.dtype = dtype
        self._shard_rows: int | None = None
        self._db = connection
        self._lock = threading.RLock()
        self._dim: int | None = None
        self._maps: dict[tuple[int, str], tuple[int, np.ndarray]] = {}  # (shard, suffix) -> (rows, memmap)

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, root: str | os.PathLike | None, key_parts: dict, dim: int | None = None, *,
             dtype: Any = np.float16, shard_rows: int | None = None) -> "FeatureStore":
        """Open (creating if needed) the store for ``key_parts`` under ``root``.

        ``root`` None means ``default_root()``. ``dim`` (features per row) may be left
        None when it is not known yet: the first ``append`` fixes it. ``dtype`` is
        float16 (half the disk and memory; about 3 significant digits) or float32, and is
        part of the key. ``shard_rows`` (rows per shard file; default: what makes 1 GiB)
        applies when the store is created; an existing store keeps its own.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float16), np.dtype(np.float32)):
            raise ValueError(f"a feature store holds float16 or float32, not {dtype}")
        key_parts = dict(key_parts)
        digest = store_key({**key_parts, "dtype": dtype.name})
        root = Path(root) if root is not None else default_root()
        folder = root / f"{_slug(key_parts)}{digest[:16]}"
        if shard_rows is None and dim is not None:
            shard_rows = _default_shard_rows(int(dim), dtype)
        defaults = {"format": str(FORMAT), "key": json.dumps(key_parts, sort_keys=True, default=str),
                    "dtype": dtype.name, "rows": "0"}
        if shard_rows is not None:
            defaults["shard_rows"] = str(max(1, int(shard_rows)))
        if dim is not None:
            defaults["dim"] = str(int(dim))
        try:
            connection, info = _connect(folder, defaults)
        except _Damaged:
            # A cache can always be rebuilt: a damaged store (a torn disk, deleted shards)
            # starts again empty rather than failing every later run.
            shutil.rmtree(folder, ignore_errors=True)
            connection, info = _connect(folder, defaults)
        store = cls(folder, key_parts, dtype, connection)
        store._dim = int(info["dim"]) if "dim" in info else None
        store._shard_rows = int(info["shard_rows"]) if "shard_rows" in info else None
        if dim is not None and store._dim != int(dim):
            store.close()
            raise ValueError(f"the store in {folder} holds {store._dim} features per row, not {dim}")
        return store

    def fill_lock(self, what: str) -> "FillLock":
        """The lock on filling this store with ``what`` (a dataset), shared by every process."""
        return FillLock(self.dataset_path("fill", what, ".lock"))

    def dataset_path(self, prefix: str, what: str, suffix: str) -> Path:
        """The file of this store's folder that belongs to ``what`` (a dataset): one per dataset,
        since several datasets may share a store."""
        digest = hashlib.sha256(what.encode("utf-8")).hexdigest()[:16]
        return self.folder / f"{prefix}-{digest}{suffix}"

    def close(self) -> None:
        with self._lock:
            self._maps.clear()
            self._db.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- facts

    @property
    def dim(self) -> int | None:
        """Features per row; None until the first append of a store opened without ``dim``."""
        if self._dim is None:
            self._dim = self._info_int("dim")
        return self._dim

    @property
    def shard_rows(self) -> int | None:
        """Rows per shard file; None until the first append of a store opened without ``dim``."""
        if self._shard_rows is None:
            self._shard_rows = self._info_int("shard_rows")
        return self._shard_rows

    def _info_int(self, name: str) -> int | None:
        """An integer fact from the index's info table, or None if it is not recorded yet."""
        with self._lock:
            row = self._db.execute("SELECT value FROM info WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def __len__(self) -> int:
        """Rows committed so far, including rows of files that have since changed."""
        with self._lock:
            return int(self._db.execute("SELECT value FROM info WHERE name = 'rows'").fetchone()[0])

    @property
    def live_rows(self) -> int:
        """Rows some file still points at (``len(self)`` minus the rows left behind)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    # ----------------------------------------------------------------- index

    def lookup(self, items: Sequence) -> np.ndarray:
        """The row of each item, or -1 where it is missing or its file has changed.

        ``items`` are ``DatasetItem``s (anything with ``path``, ``size`` and ``mtime_ns``);
        a file matches only if its size and modification time are the ones recorded.
        """
        rows = np.full(len(items), -1, dtype=np.int64)
        position: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            position.setdefault(item.path, []).append(index)
        paths = list(position)
        with self._lock:
            for start in range(0, len(paths), _QUERY_CHUNK):
                chunk = paths[start:start + _QUERY_CHUNK]
                query = f"SELECT path, size, mtime_ns, row FROM files WHERE path IN ({','.join('?' * len(chunk))})"
                for path, size, mtime_ns, row in self._db.execute(query, chunk):
                    for index in position[path]:
                        item = items[index]
                        if item.size == size and item.mtime_ns == mtime_ns:
                            rows[index] = row
        return rows

    def append(self, items: Sequence, vectors) -> np.ndarray:
        """Store one vector per item and return their new rows; durable when it returns.

        ``vectors`` is an (n, dim) array (or tensor) of floats; float16 stores clip to
        +-65504 rather than overflow to infinity. An item already in the store is
        pointed at its new row.
        """
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(items):
            raise ValueError(f"append needs one row per item: {len(items)} items, vectors of shape {vectors.shape}")
        if self.dtype == np.float16:
            vectors = np.clip(vectors, -_FLOAT16_MAX, _FLOAT16_MAX)
        data = np.ascontiguousarray(vectors, dtype=self.dtype.newbyteorder("<"))
        norms = np.linalg.norm(data.astype(np.float32), axis=1).astype("<f4")
        count = len(items)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                info = dict(self._db.execute("SELECT name, value FROM info WHERE name IN ('dim', 'rows', 'shard_rows')"))
                if "dim" not in info:
                    self._db.execute("INSERT INTO info VALUES ('dim', ?)", (str(data.shape[1]),))
                    info["dim"] = str(data.shape[1])
                if int(info["dim"]) != data.shape[1]:
                    raise ValueError(f"this store holds {info['dim']} features per row, not {data.shape[1]}")
                if "shard_rows" not in info:
                    info["shard_rows"] = str(_default_shard_rows(data.shape[1], self.dtype))
                    self._db.execute("INSERT INTO info VALUES ('shard_rows', ?)", (info["shard_rows"],))
                self._dim = int(info["dim"])
                self._shard_rows = int(info["shard_rows"])
                start = int(info["rows"])
                if count:
                    self._write("vec", start, data)
                    self._write("norm", start, norms)
                rows = np.arange(start, start + count, dtype=np.int64)
                self._db.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                    ((item.path, int(item.size), int(item.mtime_ns), int(row)) for item, row in zip(items, rows)))
                self._db.execute("UPDATE info SET value = ? WHERE name = 'rows'", (str(start + count),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rows

    def _shard_path(self, shard: int, suffix: str) -> Path:
        return self.folder / f"shard-{shard:05d}.{suffix}"

    def _write(self, suffix: str, start: int, data: np.ndarray) -> None:
        """Write rows ``start ..`` of one column file, shard by shard, and fsync them."""
        done = 0
        while done < len(data):
            row = start + done
            shard, local = divmod(row, self.shard_rows)
            take = min(len(data) - done, self.shard_rows - local)
            path = self._shard_path(shard, suffix)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
            fd = os.open(path, flags, 0o666)
            try:
                with os.fdopen(fd, "r+b", closefd=False) as handle:
                    handle.seek(local * data[0].nbytes)
                    handle.write(data[done:done + take].tobytes())
                    handle.flush()
                os.fsync(fd)
            finally:
                os.close(fd)
            done += take

    # ----------------------------------------------------------------- reading

    def blocks(self) -> list[np.ndarray]:
        """Every committed row, as read-only memory maps, one (rows, dim) array per shard.

        Concatenated they are rows 0 .. len(self)-1; nothing is copied or read until used.
        """
        return self._column("vec")

    def norms(self, rows: Iterable[int] | None = None) -> np.ndarray:
        """float32 L2 norm of each row (of all rows when ``rows`` is None), from the stored values."""
        column = self._column("norm")
        every = np.concatenate(column) if column else np.empty(0, dtype=np.float32)
        return every.astype(np.float32) if rows is None else every[np.asarray(rows, dtype=np.int64)].astype(np.float32)

    def matrix(self, rows: Sequence[int] | np.ndarray, dtype: Any = None) -> np.ndarray:
        """The given rows as one (len(rows), dim) array, in the store's dtype unless ``dtype``.

        A run of consecutive rows inside one shard comes back as a memory-mapped view
        (read-only, no copy); anything else is gathered into a new array.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        dim = self.dim or 0
        out_dtype = np.dtype(dtype) if dtype is not None else self.dtype
        if len(rows) == 0:
            return np.empty((0, dim), dtype=out_dtype)
        total = len(self)
        if rows.min() < 0 or rows.max() >= total:
            raise IndexError(f"rows must lie in 0 .. {total - 1}")
        blocks = self.blocks()
        shard_rows = self.shard_rows
        first_shard = int(rows[0]) // shard_rows
        if (int(rows[-1]) // shard_rows == first_shard and int(rows[-1]) - int(rows[0]) == len(rows) - 1
                and np.all(np.diff(rows) == 1)):
            local = int(rows[0]) % shard_rows
            view = blocks[first_shard][local:local + len(rows)]
            return view if out_dtype == self.dtype else view.astype(out_dtype)
        out = np.empty((len(rows), dim), dtype=out_dtype)
        shards = rows // shard_rows
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            out[where] = blocks[int(shard)][rows[where] % shard_rows]
        return out

    def _column(self, suffix: str) -> list[np.ndarray]:
        total = len(self)
        dim, shard_rows = self.dim, self.shard_rows
        if total == 0 or dim is None or shard_rows is None:
            return []
        dtype = self.dtype.newbyteorder("<") if suffix == "vec" else np.dtype("<f4")
        shape_tail = (dim,) if suffix == "vec" else ()
        out = []
        with self._lock:
            for shard in range((total + shard_rows - 1) // shard_rows):
                count = min(shard_rows, total - shard * shard_rows)
                cached = self._maps.get((shard, suffix))
                if cached is None or cached[0] != count:
                    mapped = np.memmap(self._shard_path(shard, suffix), dtype=dtype, mode="r", shape=(count, *shape_tail))
                    cached = (count, mapped)
                    self._maps[(shard, suffix)] = cached
                out.append(cached[1])
        return out


class FillLock:
    """One process at a time fills a store with one dataset's rows.

    An exclusive ``flock`` on a small file in the store's folder. The kernel drops it when
    its process ends, however it ends (a kill -9 included), so an extraction that died
    never blocks the next one, which then finds every batch the dead one committed and
    computes the rest. Where locks are not supported (Windows; a network file system
    without lock support) ``acquire`` always succeeds: each process then fills the store
    itself, as before, which is correct but does the work twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    def acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this one may fill the store."""
        if self._descriptor is not None:
            return True
        if fcntl is None:
            return True
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return True  # the folder cannot hold a lock file: fill without one
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except OSError:
            pass  # no lock support here: hold the file, lock nothing
        self._descriptor = descriptor
        return True

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the file drops the lock
            self._descriptor = None


class _Damaged(Exception):
    """The store's files are not what its index says."""


def _connect(folder: Path, defaults: dict[str, str]) -> tuple[sqlite3.Connection, dict[str, str]]:
    """Open (creating) the index, and check the shard files hold every committed row."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        connection = sqlite3.connect(str(folder / "index.sqlite"), timeout=60, isolation_level=None,
                                     check_same_thread=False)
    except sqlite3.DatabaseError as exc:
        raise _Damaged(str(exc)) from None
    try:
        # Creating the index (switching a new file to WAL, the first commit) without fsync
        # takes 1 ms instead of 25-35: a crash meanwhile leaves an empty or damaged index
        # holding no rows yet, which opens as empty or is rebuilt (_Damaged). Appends are
        # then made with synchronous=NORMAL, after their vectors have been fsync'ed.
        connection.execute("PRAGMA synchronous=OFF")
        try:
            connection.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        except sqlite3.OperationalError:
            pass  # some network file systems refuse WAL; the default journal still works
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                           "mtime_ns INTEGER NOT NULL, row INTEGER NOT NULL) WITHOUT ROWID")
        connection.execute("CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.executemany("INSERT OR IGNORE INTO info VALUES (?, ?)", defaults.items())
        connection.execute("COMMIT")
        connection.execute("PRAGMA synchronous=NORMAL")
        info = dict(connection.execute("SELECT name, value FROM info"))
        rows = int(info["rows"])
        if rows:
            dim, shard_rows = int(info["dim"]), int(info["shard_rows"])
            itemsize = np.dtype(info["dtype"]).itemsize
            for shard in range((rows + shard_rows - 1) // shard_rows):
                count = min(shard_rows, rows - shard * shard_rows)
                for suffix, row_bytes in (("vec", dim * itemsize), ("norm", 4)):
                    path = folder / f"shard-{shard:05d}.{suffix}"
                    if not path.is_file() or path.stat().st_size < count * row_bytes:
                        raise _Damaged(f"{path.name} is shorter than its {count} rows")
    except sqlite3.OperationalError:
        connection.close()  # locked by another process past the timeout, disk errors: not damage
        raise
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        connection.close()
        raise _Damaged(str(exc)) from None
    except BaseException:
        connection.close()
        raise
    return connection, info


def _default_shard_rows(dim: int, dtype: np.dtype) -> int:
    return max(1, SHARD_BYTES // max(1, dim * np.dtype(dtype).itemsize))


def _slug(key_parts: dict) -> str:
    """A readable prefix for the folder name (model, layer, kind), safe on every file system."""
    words = [str(key_parts[name]) for name in ("model", "layer", "kind") if key_parts.get(name)]
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(words))[:80]
    return f"{text}-" if text else ""

