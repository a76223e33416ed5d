"""Features of a whole dataset at one layer: batched, cached on disk, cancellable, incremental.

``extract`` is a job in the shape of ``engine.core.jobs``: a generator that yields
``Progress`` and returns an ``Extracted``. It looks every file up in the feature store
first and runs only the missing ones through the model, as far as the layer and no
further, a batch at a time while the next batches decode in the background. Each batch
is appended to the store (on a writer thread, while the next batch runs), so a cancel
keeps every finished batch, a crash all but the last, and running again computes only
the rest. Two processes asked for the same dataset's features at once do the work once:
the second waits for the first (``FeatureStore.fill_lock``) and then finds the rows
stored, or computes what a killed or cancelled first one left. Cancel is also checked inside the forward pass, block by block, so it never
waits for a whole batch.

What is stored per image (``kind``):

- ``"avgpool"``: the layer's output averaged over H and W (a C x H x W map) or taken as
  it is (a vector layer); float16, C values. What ``neighbors`` and ``embed`` use.
- ``"channel-max"``: for each channel of a C x H x W map, its maximum and where it is;
  float32 rows of 3*C + 2 values ``[max_0..max_C-1, y_0.., x_0.., H, W]`` (read them
  with ``Extracted.channel_maxima()``). One scan serves every channel for ``patches``.
  As each batch lands, it is also folded into each channel's running top list for the
  dataset (``engine.data.channel_topk``), so ``Extracted.top_channel_maxima`` ranks
  without reading the rows back.

Every image enters the model as a ``size x size`` square (see ``engine.data.datasets``), so
all maps of one layer have the same H x W, and (y, x) of a maximum is a position in
that map; the layer's receptive field turns it into a box of the square input.

The forward pass runs the model's fast copy, folded and channels-last (``engine.anatomy.fast_copy``): on
2 CPU threads it reaches the bundled model's last layer 3.4x faster than the model as
loaded, so decoding, not the network, is what a folder of large PNGs waits for.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from engine.data.datasets import (KEEP_LISTING_FROM, LOADER_VERSION, Dataset, DatasetItem, batch_to_input,
                                  iter_batches, load_square, square_pixels)
from engine.core.errors import MethodInputError
from engine.data.channel_topk import ChannelTopK
from engine.data.feature_store import FeatureStore, FillLock
from engine.anatomy.hooks import forward_to, hooked
from engine.core.jobs import CancelToken, Progress, drive
from engine.anatomy.layers import find_module, is_hookable
from engine.data.vector_index import IndexPlan, VectorIndex, open_index
from engine.models.model import LoadedModel

KINDS = {"avgpool": np.float16, "channel-max": np.float32}
_READ_ROWS = 8192  # rows read from the store at a time where only some columns are wanted
PIXEL_SIDE = 32  # pixel-space vectors: 32 x 32 x 3 = 3,072 values, as CIFAR-sized thumbnails
WAIT_POLL_S = 0.25  # how often a process waiting for another's extraction checks its lock and cancel
WAIT_COUNT_S = 2.0  # how often it counts the rows stored so far, for its progress message


@dataclass
class ChannelMaxima:
    """Each image's maximum of each channel and where it is (``kind="channel-max"``)."""

    values: np.ndarray  # N x C float32 (C: the channels asked for, in that order)
    y: np.ndarray  # N x C int64, row of the maximum in the layer's map (the first, on ties)
    x: np.ndarray  # N x C int64, column of the maximum
    map_size: tuple[int, int]  # (H, W) of the layer's map, the same for every image


@dataclass
class ChannelRanking:
    """Each channel's best images by its maximum, best first (ties: the dataset's order)."""

    order: np.ndarray  # channels x top int64, positions in ``Extracted.items``/``paths``/``rows``
    values: np.ndarray  # channels x top float32, the maxima
    y: np.ndarray  # channels x top int64, row of each maximum in the layer's map
    x: np.ndarray  # channels x top int64, column of each maximum
    map_size: tuple[int, int]  # (H, W) of the layer's map


@dataclass
class Extracted:
    """The features of a dataset's readable images, one row per image.

    ``items``, ``labels`` and the rows of ``vectors`` are aligned; ``indices`` are their
    positions in ``dataset.items`` (files that could not be read are left out and listed
    in ``failures`` as (path, message)). ``computed`` counts the images that went
    through the model in this run (0 when everything was cached).
    """

    dataset: Dataset
    layer: str
    kind: str
    indices: np.ndarray  # int64, positions in dataset.items
    rows: np.ndarray  # int64, rows in ``store``
    store: FeatureStore
    failures: list[tuple[str, str]] = field(default_factory=list)
    computed: int = 0
    channel_top: ChannelTopK | None = field(default=None, repr=False)  # kind "channel-max": the running top lists
    index_plan: IndexPlan | None = None  # when ``nearest`` goes through a FAISS index (None: DEFAULT_PLAN)
    _vectors: np.ndarray | None = field(default=None, repr=False)
    _indexes: dict[str, VectorIndex | None] = field(default_factory=dict, repr=False)  # metric -> index (None: scan)

    @property
    def items(self) -> list[DatasetItem]:
        return [self.dataset.items[i] for i in self.indices]

    @property
    def labels(self) -> list[str | None]:
        return [self.dataset.items[i].label for i in self.indices]

    @property
    def paths(self) -> list[str]:
        return [self.dataset.items[i].path for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def vectors(self) -> np.ndarray:
        """N x D in the store's dtype (float16 for "avgpool"), read from the store on first use.

        A memory-mapped view when the rows lie consecutively in one shard (the usual case
        for a dataset extracted in one go), otherwise a gathered copy of N x D values.
        For a query over a large dataset prefer ``nearest``, which copies nothing.
        """
        if self._vectors is None:
            self._vectors = self.store.matrix(self.rows)
        return self._vectors

    def matrix(self, dtype=np.float32) -> np.ndarray:
        """The vectors as a new array of ``dtype`` (float32 for scikit-learn and friends)."""
        return np.asarray(self.vectors, dtype=dtype)

    def prepare_nearest(self, metric: str = "l2", cancel: CancelToken | None = None) -> Generator[Progress, None, None]:
        """Load or build the neighbour index ``index_plan`` calls for at this many images; a job.

        Nothing to do below the plan's threshold (``nearest`` scans). Past it, the first
        query of a dataset (or of its changed rows) waits for a build that can take a
        minute at 10^6 images: run this first to show its progress and let it be cancelled.
        """
        if metric not in self._indexes:
            self._indexes[metric] = yield from open_index(self.store, self.rows, metric, name=self.dataset.identity,
                                                          plan=self.index_plan, cancel=cancel)

    def nearest(self, query: np.ndarray, k: int = 10, metric: str = "l2") -> tuple[np.ndarray, np.ndarray]:
        """(positions, distances) of the ``k`` images nearest to ``query``, nearest first.

        Positions index ``items``/``labels``/``vectors``; ``query`` comes from
        ``image_vector``. Below ``index_plan``'s threshold this scans the store's memory
        maps in place (``engine.data.nearest.nearest``), past it it asks the dataset's FAISS
        index (``engine.data.vector_index``; built by ``prepare_nearest`` if not yet).
        Distances are exact either way.
        """
        if metric not in self._indexes:
            drive(self.prepare_nearest(metric))
        index = self._indexes[metric]
        if index is not None:
            return index.search(query, k)
        from engine.data.nearest import nearest

        return nearest(self.store.blocks(), query, k, metric, norms=self.store.norms(), subset=self.rows)

    def close(self) -> None:
        """Release the store's files (also done when this object is garbage collected)."""
        self._vectors = None
        self._indexes.clear()
        self.store.close()

    def channel_maxima(self, channels: Sequence[int] | None = None) -> ChannelMaxima:
        """For ``kind="channel-max"``: each image's maximum of each channel and where it is.

        ``channels`` picks columns (default: all); the store is read a block of rows at a
        time, so asking for a few channels of 100,000 images needs memory for those only.
        """
        picked, count = self._channels(channels)
        columns = np.concatenate([picked, picked + count, picked + 2 * count, [3 * count, 3 * count + 1]])
        parts = [np.asarray(self.store.matrix(self.rows[start:start + _READ_ROWS])[:, columns], dtype=np.float32)
                 for start in range(0, len(self.rows), _READ_ROWS)]
        data = np.concatenate(parts) if parts else np.zeros((0, len(columns)), np.float32)
        n = len(picked)
        size = (int(data[0, -2]), int(data[0, -1])) if len(data) else (0, 0)
        return ChannelMaxima(values=data[:, :n], y=data[:, n:2 * n].astype(np.int64),
                             x=data[:, 2 * n:3 * n].astype(np.int64), map_size=size)

    def top_channel_maxima(self, channels: Sequence[int], top: int) -> ChannelRanking:
        """For ``kind="channel-max"``: each channel's ``top`` images by their maximum, best first.

        The order of ``channel_maxima`` sorted by value, ties kept in the dataset's order.
        Read from the running top lists when they are complete for these images (always,
        after an extraction that finished, unless ``top`` is above ``channel_topk.KEEP``);
        otherwise ranked from every stored row.
        """
        picked, _count = self._channels(channels)
        top = max(0, min(int(top), len(self)))
        kept = self.channel_top.ranking(picked, top, self.indices, self.rows) if self.channel_top else None
        if kept is not None:
            order, values, y, x = kept
            return ChannelRanking(order=order, values=values, y=y.astype(np.int64), x=x.astype(np.int64),
                                  map_size=self.channel_top.map_size)
        maxima = self.channel_maxima(picked)
        order = np.argsort(-maxima.values, axis=0, kind="stable")[:top].T
        return ChannelRanking(order=order, values=np.take_along_axis(maxima.values.T, order, axis=1),
                              y=np.take_along_axis(maxima.y.T, order, axis=1),
                              x=np.take_along_axis(maxima.x.T, order, axis=1), map_size=maxima.map_size)

    def _channels(self, channels: Sequence[int] | None) -> tuple[np.ndarray, int]:
        """The channels asked for (all when None), checked, and how many the layer has."""
        if self.kind != "channel-max":
            raise ValueError(f"channel maxima need kind='channel-max'; these features are '{self.kind}'")
        count = ((self.store.dim or 2) - 2) // 3
        picked = np.arange(count) if channels is None else np.asarray(channels, dtype=np.int64).reshape(-1)
        if len(picked) and (picked.min() < 0 or picked.max() >= count):
            raise MethodInputError(f"channel must lie in 0 .. {count - 1}")
        return picked, count


def extract(model: LoadedModel, dataset: Dataset, layer: str, *, kind: str = "avgpool", batch_size: int = 32,
            cancel: CancelToken | None = None, store_root: str | os.PathLike | None = None,
            workers: int | None = None) -> Generator[Progress, None, Extracted]:
    """Features of every readable image of ``dataset`` at ``layer``; a job (yields Progress).

    Cached rows are reused; only missing or changed files are run, ``batch_size`` at a
    time, stopping the forward pass at ``layer``. Once ``cancel`` is set it raises
    ``JobCancelled`` within one block of the model; every batch finished before then is
    in the store. ``store_root`` defaults to ``<cache>/features``; ``workers`` is the
    number of decoding threads (default: one per core).
    """
    check_layer_and_kind(model, layer, kind)
    cancel = cancel or CancelToken()

    def rows_of(pixels: torch.Tensor) -> np.ndarray:
        return pixel_rows(model, layer, kind, pixels, cancel)

    store = open_feature_store(model, layer, kind, store_root)
    source = local_batches(model.preprocessing.size, rows_of, batch_size, cancel, workers)
    return (yield from _fill_store(store, dataset, layer, kind, source, cancel))


def check_layer_and_kind(model: LoadedModel, layer: str, kind: str) -> None:
    """A clear message for an unknown kind or a wrong layer, before any work."""
    if kind not in KINDS:
        raise MethodInputError(f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
    find_module(model.module, layer)


def open_feature_store(model: LoadedModel, layer: str, kind: str,
                       store_root: str | os.PathLike | None = None) -> FeatureStore:
    """The store that holds ``model``'s rows of ``kind`` at ``layer``, whichever engine computes them."""
    return FeatureStore.open(store_root, feature_key(model, layer, kind), dtype=KINDS[kind])


def local_batches(size: int, rows_of, batch_size: int, cancel: CancelToken, workers: int | None):
    """The local source of computed batches for ``_fill_store``: this process's decoding
    threads (``iter_batches``) and ``rows_of`` (N x 3 x size x size uint8 pixels to N rows)."""
    def source(items: list[DatasetItem], missing: np.ndarray) -> Iterator[ComputedBatch]:
        for batch in iter_batches(items, missing, size, batch_size=batch_size, cancel=cancel, workers=workers):
            yield ComputedBatch(batch.indices, batch.failures, rows_of(batch.pixels) if batch.indices else None)

    return source


def extract_pixels(dataset: Dataset, *, side: int = PIXEL_SIDE, batch_size: int = 256, cancel: CancelToken | None = None,
                   store_root: str | os.PathLike | None = None, workers: int | None = None
                   ) -> Generator[Progress, None, Extracted]:
    """Each image as raw pixels: a ``side x side`` RGB square, flattened, scaled to 0..1.

    The lecture's comparison space: neighbours by pixels match colour and layout, where
    neighbours by features match meaning. Cached like model features, under its own key.
    """
    store = FeatureStore.open(store_root, {"kind": "pixels", "side": side, "loader": LOADER_VERSION}, dtype=np.float16)

    def rows_of(pixels: torch.Tensor) -> np.ndarray:
        return pixels.reshape(len(pixels), -1).float().div_(255).numpy()

    cancel = cancel or CancelToken()
    return (yield from _fill_store(store, dataset, "pixels", "pixels",
                                   local_batches(side, rows_of, batch_size, cancel, workers), cancel))


class ComputedBatch(NamedTuple):
    """What a source of computed batches hands ``_fill_store``: the rows of some dataset
    files (``vectors[j]`` belongs to ``items[indices[j]]``; None when ``indices`` is
    empty) and the files of the batch that could not be read, as (path, message)."""

    indices: list[int]
    failures: list[tuple[str, str]]
    vectors: np.ndarray | None


def _fill_store(store: FeatureStore, dataset: Dataset, layer: str, kind: str, source,
                cancel: CancelToken) -> Generator[Progress, None, Extracted]:
    """The one extraction loop: look every file up, have ``source`` compute rows for the
    missing ones a batch at a time, and append each batch to ``store``, so a cancel keeps
    finished work. ``source(items, missing)`` iterates ``ComputedBatch``es covering the
    positions ``missing`` of ``items`` in any order: this process's threads and model
    (``local_batches``) or a Ray Data pipeline (``engine.data.ray_extraction``). It is a
    generator, closed when the loop ends however it ends, so a pipeline stops with it.

    Appends run on a writer thread while the model works on the next batch: each one
    waits for its file writes to reach the disk (fsync), 10-20 ms a batch that would
    otherwise stall the forward passes (3-5% of an extraction). One append is in flight
    at a time, in batch order, and the loop never ends (finished, failed or cancelled)
    before it has landed, so "every batch finished before a cancel is in the store" holds.
    """
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convscope-store")
    landing: list = []  # [(indices, future)] of the append in flight, at most one
    lock = store.fill_lock(dataset.identity)
    batches = None  # the source's iterator, once there is work for it
    try:
        items = dataset.items
        yield from _wait_for_another_extraction(lock, store, items, cancel)
        rows = _lookup(store, items)
        # Each channel's running top list: stored rows it has not seen are folded first, each
        # new batch once its append has landed, so it never counts a row the store lacks.
        channel_top = ChannelTopK.open(store, dataset.identity) if kind == "channel-max" else None
        if channel_top is not None:
            yield from channel_top.catch_up(channel_top.follow(rows), rows, cancel)
        missing = np.flatnonzero(rows < 0)
        failures = list(dataset.failures)
        cached = len(items) - len(missing)
        total = len(missing)
        computed = 0

        def land() -> None:
            """Wait for the append in flight and record its rows (its error, if any, is raised)."""
            while landing:
                indices, future = landing.pop()
                rows[indices] = future.result()
                if channel_top is not None:
                    channel_top.fold(indices, rows[indices])
                    channel_top.save_if_due()

        if total == 0:
            yield Progress(1.0, f"{len(items)} images, all cached")
        else:
            yield Progress(0.0, f"0 of {total} images" + (f" ({cached} cached)" if cached else ""))
            started = time.perf_counter()
            done = 0
            batches = source(items, missing)
            for batch in batches:
                failures.extend(batch.failures)
                if batch.indices:
                    land()
                    landing.append((batch.indices, writer.submit(store.append, [items[i] for i in batch.indices],
                                                                 batch.vectors)))
                    computed += len(batch.indices)
                done += len(batch.indices) + len(batch.failures)
                cancel.check()  # a cancelled run still keeps this batch: its append lands below
                yield Progress(done / total, _progress_message(done, total, cached, computed,
                                                               time.perf_counter() - started))
            land()
        if channel_top is not None:
            channel_top.save()
        _remember_rows(store, items, rows)
        kept = np.flatnonzero(rows >= 0)
        return Extracted(dataset=dataset, layer=layer, kind=kind, indices=kept, rows=rows[kept], store=store,
                         failures=failures, computed=computed, channel_top=channel_top)
    except BaseException:
        wait([future for _, future in landing])  # lands (or fails) before the store closes; the first error wins
        store.close()
        raise
    finally:
        if batches is not None:
            batches.close()  # stops a pipeline the loop left early (cancelled or failed)
        writer.shutdown(wait=True)
        lock.release()  # after the last append has landed, so whoever waits finds every row there


# The rows of a kept listing (``datasets.KEEP_LISTING_FROM``): looking up a million files
# in the store's index takes 2-3 s, and the answer cannot change while the store's row
# count does not (rows are only ever appended) and the listing is the same object.
_KEPT_ROWS = 4
_known_rows: "OrderedDict[tuple[str, int], tuple[list, int, np.ndarray]]" = OrderedDict()
_known_rows_lock = threading.Lock()


def _lookup(store: FeatureStore, items: list[DatasetItem]) -> np.ndarray:
    """``store.lookup(items)``, from memory when this listing's rows are known for the store as it is."""
    with _known_rows_lock:
        known = _known_rows.get((str(store.folder), id(items)))
    if known is not None and known[0] is items and known[1] == len(store):
        return known[2].copy()
    rows = store.lookup(items)
    _remember_rows(store, items, rows)
    return rows


def _remember_rows(store: FeatureStore, items: list[DatasetItem], rows: np.ndarray) -> None:
    if len(items) < KEEP_LISTING_FROM:
        return
    with _known_rows_lock:
        key = (str(store.folder), id(items))
        _known_rows[key] = (items, len(store), rows.copy())  # the list itself: its id stays its own
        _known_rows.move_to_end(key)
        while len(_known_rows) > _KEPT_ROWS:
            _known_rows.popitem(last=False)


def _wait_for_another_extraction(lock: FillLock, store: FeatureStore, items: list[DatasetItem],
                                 cancel: CancelToken) -> Generator[Progress, None, None]:
    """Wait, cancellably, while another process fills ``store`` with the same dataset.

    Without this, two processes (two windows, a window and the CLI, batch jobs) asked for
    the same features would each compute all of them. The second waits instead and then
    computes only what the first did not store: nothing if it finished, the rest if it
    was cancelled or killed midway (its lock goes with it).
    """
    if lock.acquire():
        return
    counted = float("-inf")
    while True:
        cancel.check()
        now = time.monotonic()
        if now - counted >= WAIT_COUNT_S:  # counting the stored rows is a query over every file
            stored = int(np.count_nonzero(store.lookup(items) >= 0))
            counted = now
        yield Progress(stored / len(items) if items else -1.0,
                       f"another ConvScope process is extracting these features; waiting for it "
                       f"({stored} of {len(items)} images stored)")
        time.sleep(WAIT_POLL_S)
        if lock.acquire():
            return


def skipped_note(failures: list[tuple[str, str]]) -> str:
    """What a result says about files it had to leave out ('' when there were none)."""
    if not failures:
        return ""
    names = ", ".join(Path(path).name for path, _message in failures[:3])
    more = f" and {len(failures) - 3} more" if len(failures) > 3 else ""
    return f"; skipped {len(failures)} unreadable file(s): {names}{more}"


def skipped_list(failures: list[tuple[str, str]]) -> list[dict]:
    return [{"path": path, "reason": message} for path, message in failures]


@contextmanager
def _cancellable(module: torch.nn.Module, cancel: CancelToken):
    """Check ``cancel`` as the forward pass enters each block (modules two levels deep).

    A batch of 32 can take seconds on a CPU; with these checks Cancel waits for one
    block, not the whole batch. The interrupted batch is dropped; finished ones are stored.
    """
    def check(_module, _inputs):
        cancel.check()

    with hooked(pre=((sub, check) for name, sub in module.named_modules()
                     if name and name.count(".") <= 1 and is_hookable(sub))):
        yield


def pixel_rows(model: LoadedModel, layer: str, kind: str, pixels: torch.Tensor,
               cancel: CancelToken | None = None) -> np.ndarray:
    """The stored rows of a batch of N x 3 x size x size uint8 squares, as every engine computes them."""
    return layer_rows(model, layer, kind, batch_to_input(pixels, model.preprocessing, model.device,
                                                         _input_dtype(model.module)), cancel)


def layer_rows(model: LoadedModel, layer: str, kind: str, x: torch.Tensor,
               cancel: CancelToken | None = None) -> np.ndarray:
    """The stored rows (``summarise``) of a normalised input batch ``x`` at ``layer``,
    through the model's fast copy; ``cancel`` is checked block by block."""
    network = model.state.fast_copy(x[:1], layer=layer)
    with torch.inference_mode(), _cancellable(network, cancel or CancelToken()):
        output = model.state.run_in_fast_layout(lambda batch: forward_to(network, layer, batch), x)
        read = model.state.classifier_prefix(layer) if kind == "avgpool" and output.dim() == 3 else ()
        if read:  # the classifier reads the class token alone: that is this layer's feature, not the patches' mean
            return output[:, list(read)].float().mean(dim=1).cpu().numpy()
        return summarise(model.state.as_map(layer, output, tuple(x.shape[-2:])), kind, layer)


def summarise(output: torch.Tensor, kind: str, layer: str = "") -> np.ndarray:
    """A batch of layer outputs to the stored rows (float32 numpy, one row per image)."""
    if kind == "avgpool":
        if output.dim() == 4:
            return output.float().mean(dim=(2, 3)).cpu().numpy()
        if output.dim() == 2:
            return output.float().cpu().numpy()
    elif kind == "channel-max" and output.dim() == 4:
        n, c, h, w = output.shape
        values, where = output.float().flatten(2).max(dim=2)
        y, x = torch.div(where, w, rounding_mode="floor"), where % w
        size = torch.tensor([h, w], dtype=torch.float32, device=output.device).expand(n, 2)
        return torch.cat([values, y.float(), x.float(), size], dim=1).cpu().numpy()
    shape = " x ".join(str(s) for s in output.shape[1:])
    wanted = "a C x H x W map" if kind == "channel-max" else "a C x H x W map or a vector"
    raise MethodInputError(f"layer '{layer}' gives {shape} per image; {kind} needs {wanted}: pick another layer")


def image_vector(model: LoadedModel, image, layer: str, kind: str = "avgpool") -> np.ndarray:
    """The row ``extract`` would store for one picture: the query vector for ``Extracted.nearest``.

    ``image`` is a file path (read exactly as a dataset file is, so a file that is in the
    dataset gets exactly its cached row), a ``LoadedImage`` or a PIL image (prepared by
    ``square_pixels``; the same row too, except for a large JPEG, which the dataset loader
    decodes at reduced scale, and up to rounding for a photo turned by its EXIF
    orientation). float32 values rounded through the store's dtype.
    """
    size = model.preprocessing.size
    if isinstance(image, (str, os.PathLike)):
        square = load_square(image, size)
    else:
        square = square_pixels(getattr(image, "image", image), size)
    row = pixel_rows(model, layer, kind, torch.from_numpy(square).permute(2, 0, 1)[None].contiguous())[0]
    if KINDS[kind] == np.float16:
        row = np.clip(row, -65504, 65504)
    return row.astype(KINDS[kind]).astype(np.float32)


# How a layer's output becomes a row. 2: at a class-token ViT's penultimate layer, the class
# token the head reads (``ModelState.classifier_prefix``), not the mean of the patch tokens.
POOLING_VERSION = 2


def feature_key(model: LoadedModel, layer: str, kind: str) -> dict:
    """What a cached row depends on: model, weights, layer, preprocessing, kind, loader."""
    preprocessing = model.preprocessing
    weights = {"description": model.weights, "fingerprint": weights_fingerprint(model.module)}
    path = Path(model.weights)
    try:
        if path.is_file():  # a user's file: a new file under the same name is new weights
            stat = path.stat()
            weights["file"] = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    except (OSError, ValueError):
        pass
    return {
        "model": model.name,
        "weights": weights,
        "layer": layer,
        "kind": kind,
        "preprocessing": {"size": preprocessing.size, "mean": list(preprocessing.mean), "std": list(preprocessing.std),
                          "resize": "stretched to size x size, bicubic", "loader": LOADER_VERSION},
        "input_dtype": str(_input_dtype(model.module)),
        "pooling": POOLING_VERSION,
    }


def weights_fingerprint(module: torch.nn.Module, samples: int = 16) -> str:
    """A cheap hash of the weights: every tensor's name, shape and a few evenly spaced values.

    Catches weights loaded from another file, retrained or randomised in place (as the
    sanity check does), without hashing hundreds of megabytes.
    """
    digest = hashlib.sha256()
    picked = []
    for name, tensor in list(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            where = torch.linspace(0, flat.numel() - 1, min(samples, flat.numel()), device=flat.device).long()
            picked.append(flat[where].double().cpu())
    if picked:
        digest.update(torch.cat(picked).numpy().tobytes())
    return digest.hexdigest()[:32]


def _input_dtype(module: torch.nn.Module) -> torch.dtype:
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _progress_message(done: int, total: int, cached: int, computed: int, seconds: float) -> str:
    text = f"{done} of {total} images"
    if cached:
        text += f" ({cached} cached)"
    if computed and seconds > 0:
        rate = computed / seconds
        text += f", {rate:.0f} img/s"
        if done < total:
            text += f", {_duration((total - done) / rate)} left"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
