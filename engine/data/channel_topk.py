"""Each channel's top images of a dataset, kept up to date while its channel maxima are extracted.

``patches`` ranks a dataset's images by each channel's maximum. Ranking them from the
stored rows (``Extracted.channel_maxima``) reads every row, 3*C+2 float32 per image (15 GB
for 10^6 images at C=1280), on every query. ``ChannelTopK`` instead folds each batch into
a running list per channel as the batch lands in the store, so a query reads nothing more.

What is kept, per (store, dataset), in ``topk-<digest>.npz`` beside the store's shards:
for each channel its best ``KEPT`` entries (value, store row, y, x), best first, ranked as
the full scan ranks them: by value, ties by the image's position in the dataset's listing.
Positions are not saved: a listing changes (files added, removed, edited), so every run
maps rows to its own listing's positions; the order of two files in a listing never
changes, so neither does their order in a list. Beside the lists, a bitmap of the store
rows folded so far.

Why the lists stay right:

- They are saved atomically (a temporary file, then a rename) after the rows they count
  were committed, at most every ``SAVE_EVERY_S`` and when an extraction ends. A crash or
  a cancel in between leaves committed rows the bitmap lacks; the next run folds those
  from the store, and only those, as it does with cached rows the lists have not seen
  (stored by another dataset's extraction, or before the lists existed).
- A file changed since it was folded has a new row; its old row is no longer the
  dataset's live row, so the next run drops it from every list (the new row is folded as
  any new one). A list stays the exact top of what remains, one entry shorter: ``MARGIN``
  spare entries absorb such drops, and once a list that has left entries out falls below
  ``KEEP``, the run rebuilds every list from the store's rows of the dataset (one read of
  them, as one full-scan query does).
- A missing, damaged or foreign file is rebuilt the same way: the store's rows are the
  truth, the lists an index of them.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Generator

import numpy as np

from engine.core.jobs import CancelToken, Progress
from engine.data.feature_store import FeatureStore
from engine.data.images import write_atomically

KEEP = 64  # the most images a query may ask for per channel: the maximum of patches' "top"
MARGIN = 32  # spare entries per channel, dropped one by one as files in the list change
KEPT = KEEP + MARGIN
SAVE_EVERY_S = 2.0  # a crash costs folding at most this much extraction's rows again, from the store
READ_ROWS = 2048  # rows read from the store at a time when folding stored rows
FORMAT = 1
_WORST = np.uint64(np.iinfo(np.uint64).max)  # the key of an empty slot, after every real entry


def rank_keys(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is ``np.argsort(-values, kind="stable")``'s over a listing.

    The high half orders float32 values from largest to smallest (NaN last, -0.0 equal to
    0.0, as the negated sort sees them), the low half breaks ties by listing position, so
    one ``np.argpartition`` over keys selects exactly what the full scan ranks first.
    """
    values = np.asarray(values, dtype=np.float32)
    bits = (values + np.float32(0)).view(np.uint32)  # -0.0 + 0.0 is +0.0
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    ascending = np.where(np.isnan(values), np.uint32(0), ascending)
    high = np.uint64(0xFFFFFFFF) - ascending.astype(np.uint64)
    return (high << np.uint64(32)) | np.asarray(positions).astype(np.uint64)


class ChannelTopK:
    """The running top lists of one dataset's channel maxima in one ``kind="channel-max"`` store.

    ``open`` loads the saved lists (or starts empty), ``follow`` starts a run over the
    dataset's current listing and says which stored rows must be folded, ``fold`` takes
    committed rows, ``save`` writes the lists durably, and ``ranking`` answers a query
    when the lists are complete for the rows asked about.
    """

    def __init__(self, store: FeatureStore, path: Path) -> None:
        self.store = store
        self.path = path
        self.folded_from_store = 0  # rows this run read back from the store to fold (catch-up, rebuild)
        self.rebuilt = False  # whether this run started the lists again from the store
        self._saved_at = time.monotonic()
        self._changed = False  # since the file was read or written
        self._clear()

    def _clear(self) -> None:
        self.channels = 0
        self.map_size = (0, 0)
        self.keys = np.zeros((0, KEPT), np.uint64)
        self.values = np.zeros((0, KEPT), np.float32)
        self.rows = np.zeros((0, KEPT), np.int64)  # -1 in empty slots
        self.y = np.zeros((0, KEPT), np.int32)
        self.x = np.zeros((0, KEPT), np.int32)
        self.count = np.zeros(0, np.int64)  # filled slots per channel, the first ones
        self.truncated = np.zeros(0, bool)  # whether some folded row fell off the channel's list
        self.folded = np.zeros(len(self.store), bool)

    @classmethod
    def open(cls, store: FeatureStore, what: str) -> "ChannelTopK":
        """The lists of dataset ``what`` (as ``FeatureStore.fill_lock`` names it) in ``store``."""
        top = cls(store, store.dataset_path("topk", what, ".npz"))
        top._load()
        return top

    def _load(self) -> None:
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                fields = {name: saved[name] for name in saved.files}
            self._restore(fields)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            self._clear()  # damaged or written by another version: rebuilt from the store's rows

    def _restore(self, fields: dict[str, np.ndarray]) -> None:
        if int(fields["format"]) != FORMAT:
            raise ValueError("another format")
        values = fields["values"]
        channels = values.shape[0]
        total = len(self.store)
        folded = np.unpackbits(fields["folded"], count=int(fields["folded_rows"])).astype(bool)
        if (values.shape != (channels, KEPT) or 3 * channels + 2 != (self.store.dim or 0)
                or any(fields[name].shape != values.shape for name in ("rows", "y", "x"))
                or fields["count"].shape != (channels,) or fields["truncated"].shape != (channels,)
                or len(folded) > total or fields["rows"].max(initial=-1) >= total):
            raise ValueError("these lists do not fit the store")
        self.channels = channels
        self.map_size = tuple(int(v) for v in fields["map_size"])
        self.values = values.astype(np.float32)
        self.rows = fields["rows"].astype(np.int64)
        self.y = fields["y"].astype(np.int32)
        self.x = fields["x"].astype(np.int32)
        self.count = fields["count"].astype(np.int64)
        self.truncated = fields["truncated"].astype(bool)
        self.keys = np.full(values.shape, _WORST)  # positions belong to a listing: ``follow`` sets them
        self.folded = np.zeros(total, bool)
        self.folded[:len(folded)] = folded

    # ----------------------------------------------------------------- a run

    def follow(self, live: np.ndarray) -> np.ndarray:
        """Start a run over a listing whose item ``i`` has store row ``live[i]`` (-1: none yet).

        Ranks the kept entries by this listing's positions, drops those whose row is no
        longer a live row of the listing (a changed or removed file), and starts the lists
        again when one is left too short. Returns the listing positions whose stored rows
        the lists have not folded: ``fold`` them before the run's new rows.
        """
        total = len(self.store)
        self._grow(total)
        stored = np.flatnonzero(live >= 0)
        if self.channels:
            position = np.full(total, -1, np.int64)
            position[live[stored]] = stored
            filled = self.rows >= 0
            positions = np.where(filled, position[np.where(filled, self.rows, 0)], -1)
            kept = positions >= 0
            self.keys = np.where(kept, rank_keys(self.values, np.maximum(positions, 0)), _WORST)
            self._sort()
            self._changed |= bool(np.any(filled & ~kept))
            self.count = kept.sum(axis=1)
            self.rows[self.keys == _WORST] = -1
            if np.any(self.truncated & (self.count < KEEP)):
                self._clear()
                self._grow(total)
                self.rebuilt = True
        return stored[~self.folded[live[stored]]]

    def catch_up(self, positions: np.ndarray, live: np.ndarray,
                 cancel: CancelToken) -> Generator[Progress, None, None]:
        """Fold the stored rows of listing ``positions`` (what ``follow`` returned), a block at a time."""
        for start in range(0, len(positions), READ_ROWS):
            cancel.check()
            yield Progress(start / len(positions), f"ranking {len(positions)} stored images by channel: "
                                                   f"{start} of {len(positions)}")
            chunk = positions[start:start + READ_ROWS]
            self.fold(chunk, live[chunk])
            self.folded_from_store += len(chunk)
            self.save_if_due()

    def fold(self, positions, rows) -> None:
        """Merge committed store ``rows`` (of listing ``positions``) into every channel's list."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        self._grow(int(rows.max(initial=-1)) + 1)
        new = ~self.folded[rows]
        positions, rows = positions[new], rows[new]
        if not len(rows):
            return
        data = np.asarray(self.store.matrix(rows), dtype=np.float32)
        channels = (data.shape[1] - 2) // 3
        if not self.channels:
            self._start(channels, (int(data[0, -2]), int(data[0, -1])))
        self._merge(positions, rows, data[:, :channels].T, data[:, channels:2 * channels].T.astype(np.int32),
                    data[:, 2 * channels:3 * channels].T.astype(np.int32))
        self.folded[rows] = True
        self._changed = True

    def _start(self, channels: int, map_size: tuple[int, int]) -> None:
        self.channels = channels
        self.map_size = map_size
        self.keys = np.full((channels, KEPT), _WORST)
        self.values = np.zeros((channels, KEPT), np.float32)
        self.rows = np.full((channels, KEPT), -1, np.int64)
        self.y = np.zeros((channels, KEPT), np.int32)
        self.x = np.zeros((channels, KEPT), np.int32)
        self.count = np.zeros(channels, np.int64)
        self.truncated = np.zeros(channels, bool)

    def _merge(self, positions: np.ndarray, rows: np.ndarray, values: np.ndarray, y: np.ndarray,
               x: np.ndarray) -> None:
        """Each channel's list against a batch (C x B values, y, x): its best KEPT of both.

        A list that never left an entry out holds every folded row, so the merge is the
        exact top of all of them; one that did holds the exact top ``count`` only, and so
        may not grow: the rows it left out might have ranked between. Only channels where
        some image beats the list's last keepable entry are merged: past a few thousand
        images that is a few channels a batch, not all of them.
        """
        batch = len(rows)
        batch_keys = rank_keys(values, positions[None, :])
        room = np.where(self.truncated, self.count, KEPT)  # how long each list may be
        last = np.take_along_axis(self.keys, np.maximum(room - 1, 0)[:, None], axis=1)[:, 0]
        bar = np.where(self.count < room, _WORST, np.where(room > 0, last, np.uint64(0)))
        merging = np.flatnonzero((batch_keys < bar[:, None]).any(axis=1))
        limit = np.minimum(room, self.count + batch)[merging]
        self.truncated = self.truncated | (self.count + batch > KEPT)
        if not len(merging):
            return
        keys = np.concatenate([self.keys[merging], batch_keys[merging]], axis=1)
        pick = np.argpartition(keys, KEPT - 1, axis=1)[:, :KEPT]
        pick = np.take_along_axis(pick, np.argsort(np.take_along_axis(keys, pick, axis=1), axis=1), axis=1)
        empty = np.arange(KEPT)[None, :] >= limit[:, None]

        def merge(name: str, new: np.ndarray, blank) -> None:
            new = np.broadcast_to(new, (self.channels, batch))[merging]
            kept = np.take_along_axis(np.concatenate([getattr(self, name)[merging], new], axis=1), pick, axis=1)
            kept[empty] = blank
            getattr(self, name)[merging] = kept

        merge("keys", batch_keys, _WORST)
        merge("rows", rows[None, :], -1)
        merge("values", values, 0)
        merge("y", y, 0)
        merge("x", x, 0)
        self.count[merging] = limit

    def _sort(self) -> None:
        order = np.argsort(self.keys, axis=1, kind="stable")
        for name in ("keys", "values", "rows", "y", "x"):
            setattr(self, name, np.take_along_axis(getattr(self, name), order, axis=1))

    def _grow(self, rows: int) -> None:
        if rows > len(self.folded):
            grown = np.zeros(max(rows, 2 * len(self.folded)), bool)
            grown[:len(self.folded)] = self.folded
            self.folded = grown

    # ----------------------------------------------------------------- saving

    def save_if_due(self) -> None:
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Write the lists and the rows they have folded, if they changed; a crash leaves the
        old file or the new one."""
        if not self._changed:
            return
        folded = self.folded[:len(self.store)]  # only committed rows are ever folded
        write_atomically(self.path, lambda handle: np.savez(
            handle, format=np.int64(FORMAT), values=self.values, rows=self.rows, y=self.y, x=self.x, count=self.count,
            truncated=self.truncated, map_size=np.asarray(self.map_size, np.int64), folded=np.packbits(folded),
            folded_rows=np.int64(len(folded))), overwrite=True)
        self._saved_at = time.monotonic()
        self._changed = False

    # ----------------------------------------------------------------- queries

    def ranking(self, channels: np.ndarray, top: int, indices: np.ndarray, rows: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The best ``top`` entries of each of ``channels`` as (order, values, y, x), each
        len(channels) x top, ``order`` indexing ``indices``/``rows`` (a dataset's listing
        positions and live rows, as ``Extracted`` holds them).

        None unless the lists are complete for those rows: every row folded, every
        channel's list at least ``top`` long, every entry one of the rows.
        """
        if not self.channels or not len(rows) or top > len(rows):
            return None
        if int(rows.max()) >= len(self.folded) or not self.folded[rows].all():
            return None
        channels = np.asarray(channels, dtype=np.int64)
        if np.any(self.count[channels] < top):
            return None
        positions = (self.keys[channels, :top] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        order = np.minimum(np.searchsorted(indices, positions), len(indices) - 1)
        if not (np.array_equal(indices[order], positions) and np.array_equal(rows[order], self.rows[channels, :top])):
            return None
        return order, self.values[channels, :top], self.y[channels, :top], self.x[channels, :top]
