"""A FAISS index over some of a feature store's rows: nearest neighbours past the exact scan's size.

``engine.data.nearest.nearest`` scans every row per query: ~10 ms over 100,000 x 1,280
float16, but ~300 ms over 10^6 (2.5 GB read per query). Past ``IndexPlan.ivf_from`` rows
an inverted-file index answers in a few milliseconds by looking only at the clusters
nearest the query. What an index covers is one set of rows (a dataset's, in the store)
and one metric; it is built once, as a job (chunked from the store's memory maps,
cancellable between chunks, with progress), saved beside the store's shards and loaded
memory-mapped by every later query, in this process or another.

Kinds (``IndexPlan.kind`` picks one by the number of rows):

- ``"scan"``: no index; the exact scan. Below ``ivf_from`` it is as fast as a flat
  FAISS index and needs no build and no second copy of the vectors on disk.
- ``"flat"``: FAISS's exact flat search over float16 codes (``IndexScalarQuantizer``
  with ``QT_fp16``: the store's own values, half the memory of ``IndexFlat``'s float32
  at the same recall). Measured against the scan it only ever matched it (9.3 against
  9.8 ms at 100,000 x 1,280; float32 ``IndexFlatL2`` took 45 ms), so the default plan
  never picks it; it is there when asked for (``IndexPlan(flat_from=...)``).
- ``"ivf"``: ``IndexIVFScalarQuantizer``, sqrt(N) clusters, 8-bit codes (a quarter of
  the float32 size), trained on a sample of 50 rows per cluster with k-means run a few
  iterations at a time so that a cancel lands within seconds. ``nprobe`` (clusters
  visited per query) is chosen when the index is built: twice the smallest that gives
  recall@10 of at least ``IndexPlan.target_recall`` against the exact scan on a sample
  of queries near the indexed rows; it is recorded with the index.

Every kind returns exact distances: FAISS proposes ``candidate_pool`` candidates and they
are re-ranked from the store's rows exactly as the scan re-ranks its own
(``engine.data.nearest.rerank``), so the flat index gives the scan's answer, and an IVF
index differs from it only where a true neighbour lies outside the clusters visited.

On disk, beside the shards (the store's own files are not touched)::

    index-<metric>-<name>-<rows digest>-<kind>.faiss   faiss.write_index
    index-<metric>-<name>-<rows digest>-<kind>.json    what it covers and how it was built

``name`` stands for the owner of the rows (a dataset), so a dataset whose rows change
replaces its index instead of piling up old ones; the digest of the rows in the file
name means a meta file can only ever describe the index beside it. Rows are immutable
once committed, so an index is current exactly while its rows are: an append of other
files to the store leaves it valid, an append that adds to the dataset (or an edited
file, which gets a new row) makes a new one. Both files are written to ``.part`` files
and renamed into place, so two processes building the same index at once each leave a
whole one (the last rename wins); a cancelled or failed build leaves nothing. A file that
does not load (damaged, truncated, from another FAISS) is rebuilt, never an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np

from engine.core.errors import MethodInputError
from engine.core.jobs import CancelToken, Progress
from engine.core.part_files import remove_stale_parts
from engine.data.feature_store import FeatureStore
from engine.data.images import write_together
from engine.data.nearest import METRICS, candidate_pool, nearest, rerank

FORMAT = 1
KINDS = ("scan", "flat", "ivf")
# Rows from which the IVF index replaces the scan. Below it the scan answers within ~30 ms
# on 2 cores (~10 ms per 100,000 x 1,280) with no build; an IVF build at 100,000 rows
# (13 s) pays for itself only after 500-1,600 queries. At 10^6 the scan takes 180-300 ms a
# query and the index (about 2 minutes to build, once) 1-2 ms. bench/_scale_index.py.
IVF_FROM = 300_000
CHUNK_ROWS = 8_192  # rows converted to float32 and added at a time: 40 MB at 1,280 features
TRAIN_PER_CLUSTER = 50  # k-means sample; FAISS warns below 39 per cluster
KMEANS_ROUNDS, KMEANS_ITERATIONS = 4, 5  # 20 iterations, a cancel checked after every 5
TUNING_QUERIES = 64
RECALL_K = 10


@dataclass(frozen=True)
class IndexPlan:
    """Which kind of index a number of rows gets, and how good an approximate one must be."""

    flat_from: int | None = None  # None: never a flat index (it does not beat the scan)
    ivf_from: int = IVF_FROM
    target_recall: float = 0.99  # on the tuning sample (see _tune_nprobe)

    def kind(self, count: int) -> str:
        if count >= self.ivf_from:
            return "ivf"
        if self.flat_from is not None and count >= self.flat_from:
            return "flat"
        return "scan"


DEFAULT_PLAN = IndexPlan()  # what ``Extracted.nearest`` follows unless given a plan of its own


class VectorIndex:
    """A loaded FAISS index over ``rows`` of ``store``; ``search`` answers like ``nearest``."""

    def __init__(self, store: FeatureStore, rows: np.ndarray, metric: str, index, meta: dict, path: Path) -> None:
        self.store, self.rows, self.metric = store, rows, metric
        self.index, self.meta, self.path = index, meta, path
        if meta["kind"] == "ivf":
            index.nprobe = int(meta["nprobe"])

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def search(self, query: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` indexed rows nearest to ``query``: (positions in ``rows``, exact distances),
        shaped as ``nearest`` with ``subset=rows`` shapes them ((k,) or (Q, k))."""
        query = np.asarray(query, dtype=np.float64)
        single = query.ndim == 1
        queries = query[None, :] if single else query
        count = min(int(k), len(self.rows))
        pool = candidate_pool(count, len(self.rows))
        indices = np.empty((len(queries), count), dtype=np.int64)
        distances = np.empty((len(queries), count), dtype=np.float32)
        if count > 0:
            _scores, proposed = self.index.search(_prepared(queries, self.metric), pool)
            blocks = self.store.blocks()
            for q, vector in enumerate(queries):
                candidates = np.sort(proposed[q][proposed[q] >= 0])
                if len(candidates) < count:  # the clusters visited hold too few rows: scan them all
                    indices[q], distances[q] = nearest(blocks, vector, count, self.metric,
                                                       norms=self.store.norms(), subset=self.rows)
                    continue
                order, distances[q] = rerank(blocks, self.rows[candidates], vector, count, self.metric)
                indices[q] = candidates[order]
        return (indices[0], distances[0]) if single else (indices, distances)


def rows_digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def index_files(store: FeatureStore, rows: np.ndarray, metric: str, kind: str, name: str = "") -> tuple[Path, Path]:
    """Where the index of ``rows`` (owned by ``name``) for ``metric`` lives: (.faiss, .json)."""
    stem = f"{_prefix(metric, name)}{rows_digest(rows)[:16]}-{kind}"
    return store.folder / f"{stem}.faiss", store.folder / f"{stem}.json"


def load_index(store: FeatureStore, rows: np.ndarray, metric: str, kind: str, name: str = "") -> VectorIndex | None:
    """The saved index of exactly these rows, memory-mapped; None when there is none that
    loads and matches (missing, damaged, built for other rows or by an older format)."""
    faiss = _faiss()
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    index_path, meta_path = index_files(store, rows, metric, kind, name)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not (meta.get("format") == FORMAT and meta.get("kind") == kind and meta.get("metric") == metric
                and meta.get("rows_digest") == rows_digest(rows) and meta.get("rows") == len(rows)
                and meta.get("dim") == store.dim and index_path.stat().st_size == meta.get("bytes")):
            return None
        flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if kind == "ivf" else faiss.IO_FLAG_MMAP_IFC)
        index = faiss.read_index(str(index_path), flags)
    except (OSError, ValueError, RuntimeError, TypeError, AttributeError):
        return None  # json.JSONDecodeError is a ValueError; FAISS raises RuntimeError on a bad file
    if index.ntotal != len(rows) or index.d != store.dim:
        return None
    return VectorIndex(store, rows, metric, index, meta, index_path)


def open_index(store: FeatureStore, rows: np.ndarray, metric: str = "l2", *, name: str = "",
               plan: IndexPlan | None = None, kind: str | None = None, cancel: CancelToken | None = None,
               chunk_rows: int = CHUNK_ROWS) -> Generator[Progress, None, VectorIndex | None]:
    """The index ``plan`` (default ``DEFAULT_PLAN``) calls for over ``rows`` of ``store``
    (``kind`` overrides it); a job.

    Loads the saved one when it matches these rows, otherwise builds it from the store,
    ``chunk_rows`` at a time, and saves it; returns None for ``"scan"`` (no index).
    ``cancel`` is checked between chunks and k-means rounds; a cancelled build writes nothing.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not '{metric}'")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    kind = kind or (plan or DEFAULT_PLAN).kind(len(rows))
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}, not '{kind}'")
    if kind == "scan" or len(rows) == 0:
        return None
    loaded = load_index(store, rows, metric, kind, name)
    if loaded is not None:
        return loaded
    cancel = cancel or CancelToken()
    started = time.perf_counter()
    meta = {"format": FORMAT, "kind": kind, "metric": metric, "rows": len(rows), "rows_digest": rows_digest(rows),
            "store_rows": len(store), "dim": store.dim}
    if kind == "flat":
        index = yield from _build_flat(store, rows, metric, cancel, chunk_rows)
        meta["codes"] = "fp16"
    else:
        index = yield from _build_ivf(store, rows, metric, cancel, chunk_rows)
        meta.update(codes="sq8", nlist=int(index.nlist))
        yield Progress(-1.0, "choosing how many clusters a query visits")
        meta["nprobe"], meta["tuned_recall_at_10"] = _tune_nprobe(store, rows, metric, index,
                                                                  (plan or DEFAULT_PLAN).target_recall, cancel)
    cancel.check()
    meta["build_s"] = round(time.perf_counter() - started, 3)
    index_path, meta_path = index_files(store, rows, metric, kind, name)
    try:
        _save(index_path, meta_path, index, meta)
    except OSError:
        # The index is a cache: a store folder that cannot take it (full, read-only) costs the
        # next process a rebuild, not this query its answer.
        return VectorIndex(store, rows, metric, index, meta, index_path)
    _remove_superseded(store.folder, _prefix(metric, name), keep={index_path.name, meta_path.name})
    return load_index(store, rows, metric, kind, name) or VectorIndex(store, rows, metric, index, meta, index_path)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MethodInputError("nearest neighbours in a dataset this large go through a FAISS index, which needs "
                               "the faiss-cpu package: pip install faiss-cpu") from None
    return faiss


def _prefix(metric: str, name: str) -> str:
    return f"index-{metric}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:12]}-"


def _prepared(vectors: np.ndarray, metric: str, *, in_place: bool = False) -> np.ndarray:
    """float32 rows as the index holds them: unit length for cosine (a zero row stays zero,
    at distance 1 from everything as in ``nearest``), NaN and infinities as 0 (the exact
    re-ranking puts such rows last, as the scan does). ``in_place``: ``vectors`` is a
    float32 array of the caller's own, changed rather than copied (a chunk of a build)."""
    out = np.asarray(vectors, dtype=np.float32) if in_place else np.array(vectors, dtype=np.float32)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if metric == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
    return out


def _float32_rows(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """The rows as a new float32 array (never a view of the store's read-only maps)."""
    out = store.matrix(rows, dtype=np.float32)
    return out if out.flags.writeable and out.flags.owndata else np.array(out)


def _faiss_metric(metric: str):
    faiss = _faiss()

    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _add_in_chunks(index, store: FeatureStore, rows: np.ndarray, metric: str, cancel: CancelToken,
                   chunk_rows: int, start: float, end: float) -> Generator[Progress, None, None]:
    total = len(rows)
    for first in range(0, total, chunk_rows):
        cancel.check()
        index.add(_prepared(_float32_rows(store, rows[first:first + chunk_rows]), metric, in_place=True))
        done = min(total, first + chunk_rows)
        yield Progress(start + (end - start) * done / total, f"indexing {done:,} of {total:,} vectors")


def _build_flat(store, rows, metric, cancel, chunk_rows) -> Generator[Progress, None, object]:
    faiss = _faiss()

    index = faiss.IndexScalarQuantizer(store.dim, faiss.ScalarQuantizer.QT_fp16, _faiss_metric(metric))
    yield from _add_in_chunks(index, store, rows, metric, cancel, chunk_rows, 0.0, 1.0)
    return index


def _build_ivf(store, rows, metric, cancel, chunk_rows) -> Generator[Progress, None, object]:
    faiss = _faiss()

    dim, total = store.dim, len(rows)
    clusters = max(1, min(int(math.sqrt(total)), total // TRAIN_PER_CLUSTER or 1))
    picked = np.sort(np.random.default_rng(0).choice(total, min(total, TRAIN_PER_CLUSTER * clusters), replace=False))
    yield Progress(0.0, f"reading {len(picked):,} vectors to find {clusters:,} clusters")
    sample = np.empty((len(picked), dim), dtype=np.float32)
    for first in range(0, len(picked), chunk_rows):
        chunk = _float32_rows(store, rows[picked[first:first + chunk_rows]])
        sample[first:first + len(chunk)] = _prepared(chunk, metric, in_place=True)
    kmeans = faiss.Kmeans(dim, clusters, niter=KMEANS_ITERATIONS, seed=1234, spherical=metric == "cosine",
                          max_points_per_centroid=TRAIN_PER_CLUSTER, verbose=False)
    centroids = None
    for round_ in range(KMEANS_ROUNDS):
        cancel.check()
        kmeans.train(sample, init_centroids=centroids)
        centroids = kmeans.centroids
        yield Progress(0.4 * (round_ + 1) / KMEANS_ROUNDS, f"clustering: {round_ + 1} of {KMEANS_ROUNDS} rounds")
    quantizer = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, clusters, faiss.ScalarQuantizer.QT_8bit,
                                          _faiss_metric(metric))
    index.own_fields = True  # the index keeps its quantizer alive (and frees it)
    quantizer.this.disown()
    cancel.check()
    index.train(sample)  # the quantizer is full: this trains the 8-bit codes' ranges only
    del sample
    yield from _add_in_chunks(index, store, rows, metric, cancel, chunk_rows, 0.45, 0.95)
    return index


def _tune_nprobe(store, rows, metric, index, target: float, cancel: CancelToken) -> tuple[int, float]:
    """Twice the fewest clusters per query that find ``target`` of the true 10 nearest on a
    sample, and the recall that fewest found.

    The sample queries lie halfway between an indexed row and its nearest neighbour: not
    on a stored row, which as its own query sits inside its own cluster. Any sample
    flatters a small ``nprobe`` for queries unlike it: tuned on stored rows, 1 of 1,000
    clusters found 0.995 of their neighbours but 0.956 of those of queries moved off the
    rows (bench/_scale_index.py). Doubling costs about a millisecond a query at 10^6 rows.
    """
    blocks, norms = store.blocks(), store.norms()
    picked = np.sort(np.random.default_rng(1).choice(len(rows), min(len(rows), TUNING_QUERIES), replace=False))
    starts = store.matrix(rows[picked], dtype=np.float64)
    pairs, _ = nearest(blocks, starts, min(2, len(rows)), metric, norms=norms, subset=rows)
    partners = np.where(pairs[:, 0] == picked, pairs[:, -1], pairs[:, 0])
    queries = (starts + store.matrix(rows[partners], dtype=np.float64)) / 2
    want = min(RECALL_K, len(rows))
    exact, _ = nearest(blocks, queries, want, metric, norms=norms, subset=rows)
    meta = {"kind": "ivf", "nprobe": 1}
    nprobe = 1
    while True:
        cancel.check()
        meta["nprobe"] = nprobe
        found, _ = VectorIndex(store, rows, metric, index, meta, Path()).search(queries, want)
        recall = float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))
        if recall >= target or nprobe >= index.nlist:
            return min(index.nlist, 2 * nprobe), round(recall, 4)
        nprobe = min(index.nlist, nprobe * 2)


def _save(index_path: Path, meta_path: Path, index, meta: dict) -> None:
    faiss = _faiss()

    remove_stale_parts(index_path.parent)  # what a build killed midway left
    size = {}

    def write_index(handle) -> None:
        start = handle.tell()
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
        handle.flush()
        size["bytes"] = handle.tell() - start

    def write_meta(handle) -> None:
        handle.write(json.dumps({**meta, "bytes": size["bytes"]}, indent=1).encode("utf-8"))

    # The index goes into place before its description, so a meta file always has its index.
    write_together([(index_path, write_index), (meta_path, write_meta)], overwrite=True)


def _remove_superseded(folder: Path, prefix: str, keep: set[str]) -> None:
    """The files of this owner's earlier indexes (of rows it no longer has). A process still
    reading one keeps its mapping; one about to open it finds nothing and rebuilds."""
    for path in folder.glob(f"{prefix}*"):
        if path.name not in keep and path.suffix in (".faiss", ".json"):
            try:
                path.unlink()
            except OSError:
                pass
