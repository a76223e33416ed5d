"""k nearest neighbours over many stored vectors, by L2 or cosine distance, without copying them.

``nearest`` takes the rows as one array or as a list of blocks (a ``FeatureStore``'s
memory-mapped shards), so 100,000 x 1,280 float16 vectors are scanned where they lie.

How it stays fast and exact:

1. One pass computes every row's dot product with the query. For float16 rows this is
   torch's half-precision matrix-vector product, which reads the 2-byte values directly
   (converting 100,000 x 1,280 values to float32 first would cost several times more
   than the product itself). The query is scaled to unit length first so no dot product
   can overflow float16.
2. With precomputed row norms (the store keeps them), the dot products give every
   distance: ||x - q||^2 = ||x||^2 - 2 x.q + ||q||^2, cos = x.q / (||x|| ||q||).
3. Those distances carry float16 rounding (about 1e-3 relative), so the best
   ``max(4k, k + 64)`` candidates are re-ranked with distances computed exactly, in
   float64, from their rows. The returned distances are exact, and the order is exact
   unless rows differ by less than that rounding in the first pass.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

METRICS = ("l2", "cosine")
_CONVERT_ROWS = 8192  # rows converted to float32 at a time where a conversion is needed


def nearest(matrix: np.ndarray | Sequence[np.ndarray], query: np.ndarray, k: int = 10, metric: str = "l2", *,
            norms: np.ndarray | None = None, subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows nearest to ``query``, nearest first: ``(indices, distances)``.

    ``matrix``: an (N, D) array of float16/float32/float64 (memory-mapped is fine), or a
    list of such arrays standing for their concatenation. ``query``: a (D,) vector, or
    (Q, D) for Q queries at once (results are then (Q, k)). ``metric``: "l2" (Euclidean
    distance) or "cosine" (1 - cosine similarity; a zero vector is at distance 1 from
    everything). ``norms``: the rows' L2 norms, shape (N,), e.g. ``FeatureStore.norms()``;
    computed here (one extra pass) when None. ``subset``: row numbers to search among;
    the returned indices are then positions in ``subset``. Rows with NaN are never
    returned before finite ones. Fewer than ``k`` results come back when there are
    fewer candidates.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not '{metric}'")
    blocks = [matrix] if isinstance(matrix, np.ndarray) and matrix.ndim == 2 else list(matrix)
    query = np.asarray(query, dtype=np.float64)
    single = query.ndim == 1
    queries = query[None, :] if single else query
    dim = queries.shape[1]
    for block in blocks:
        if block.ndim != 2 or block.shape[1] != dim:
            raise ValueError(f"rows of shape {block.shape[1:]} cannot be compared with a query of {dim} features")
    offsets = np.cumsum([0] + [len(block) for block in blocks])
    total = int(offsets[-1])
    if norms is None:
        norms = row_norms(blocks)
    norms = np.asarray(norms, dtype=np.float64).reshape(-1)
    if len(norms) < total:
        raise ValueError(f"{len(norms)} norms for {total} rows")
    norms = norms[:total]
    candidates_rows = np.arange(total) if subset is None else np.asarray(subset, dtype=np.int64).reshape(-1)
    count = min(int(k), len(candidates_rows))
    if count <= 0:
        empty = (np.empty((0,), np.int64), np.empty((0,), np.float32))
        return empty if single else (np.empty((len(queries), 0), np.int64), np.empty((len(queries), 0), np.float32))

    query_norms = np.linalg.norm(queries, axis=1)
    dots = _unit_dots(blocks, queries, query_norms, norms)  # (total, Q): x . q / ||q||
    pool = candidate_pool(count, len(candidates_rows))
    indices = np.empty((len(queries), count), dtype=np.int64)
    distances = np.empty((len(queries), count), dtype=np.float32)
    chosen_norms = norms[candidates_rows]
    for q, vector in enumerate(queries):
        dot = dots[candidates_rows, q].astype(np.float64)
        if metric == "l2":
            rough = chosen_norms ** 2 - 2.0 * query_norms[q] * dot + query_norms[q] ** 2
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                rough = 1.0 - np.where(chosen_norms > 0, dot / chosen_norms, 0.0)
        rough = np.where(np.isnan(rough), np.inf, rough)
        if pool < len(rough):
            picked = np.sort(np.argpartition(rough, pool - 1)[:pool])
        else:
            picked = np.arange(len(rough))
        order, distances[q] = rerank(blocks, candidates_rows[picked], vector, count, metric)
        indices[q] = picked[order]
    return (indices[0], distances[0]) if single else (indices, distances)


def candidate_pool(count: int, available: int) -> int:
    """How many candidates a rough first pass hands to ``rerank`` for ``count`` results:
    enough that its rounding (float16 here, quantised codes in a FAISS index) cannot
    push a true neighbour out."""
    return min(available, max(4 * count, count + 64))


def rerank(matrix: np.ndarray | Sequence[np.ndarray], rows: np.ndarray, query: np.ndarray, count: int,
           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` of the candidate ``rows`` nearest to ``query`` by distances computed
    exactly, in float64, from the rows themselves: ``(positions in rows, float32 distances)``.

    ``matrix`` is what ``nearest`` takes (blocks stand for their concatenation); ``rows``
    are row numbers in it, in ascending order, so ties go to the earlier row.
    """
    blocks = [matrix] if isinstance(matrix, np.ndarray) and matrix.ndim == 2 else list(matrix)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    offsets = np.cumsum([0] + [len(block) for block in blocks])
    exact = _exact_distances(_gather(blocks, offsets, rows), np.asarray(query, dtype=np.float64), metric)
    order = np.lexsort((np.arange(len(rows)), exact))[:count]
    return order, exact[order].astype(np.float32)


def row_norms(matrix: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """float32 L2 norm of every row (blocks concatenated), converted a chunk at a time."""
    blocks = [matrix] if isinstance(matrix, np.ndarray) and matrix.ndim == 2 else list(matrix)
    parts = []
    for block in blocks:
        for start in range(0, len(block), _CONVERT_ROWS):
            chunk = np.asarray(block[start:start + _CONVERT_ROWS], dtype=np.float32)
            parts.append(np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)).astype(np.float32))
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


def _unit_dots(blocks: list[np.ndarray], queries: np.ndarray, query_norms: np.ndarray,
               norms: np.ndarray) -> np.ndarray:
    """(N, Q) float32: each row's dot product with each query scaled to unit length."""
    import torch

    total = sum(len(block) for block in blocks)
    out = np.empty((total, len(queries)), dtype=np.float32)
    units = queries / np.where(query_norms > 0, query_norms, 1.0)[:, None]
    # x . u <= ||x||: scale u down when the largest row would overflow float16.
    largest = float(np.nanmax(norms)) if len(norms) else 0.0
    scale = min(1.0, 16384.0 / largest) if np.isfinite(largest) and largest > 0 else 1.0
    half_units = torch.from_numpy((units * scale).T.astype(np.float16).copy())  # (D, Q)
    float_units = units.T.astype(np.float32)
    start = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for block in blocks:
            stop = start + len(block)
            if len(block) == 0:
                continue
            if block.dtype == np.float16 and block.flags.c_contiguous:
                rows = torch.from_numpy(np.asarray(block))
                if len(queries) == 1:
                    product = torch.mv(rows, half_units[:, 0])[:, None]
                else:
                    product = rows @ half_units
                out[start:stop] = product.float().numpy() / scale
            else:
                for first in range(0, len(block), _CONVERT_ROWS):
                    chunk = np.asarray(block[first:first + _CONVERT_ROWS], dtype=np.float32)
                    out[start + first:start + first + len(chunk)] = chunk @ float_units
            start = stop
    return out


def _gather(blocks: list[np.ndarray], offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The given global rows as one float64 array."""
    out = np.empty((len(rows), blocks[0].shape[1]), dtype=np.float64)
    which = np.searchsorted(offsets, rows, side="right") - 1
    for block_index in np.unique(which):
        where = np.flatnonzero(which == block_index)
        out[where] = blocks[int(block_index)][rows[where] - offsets[block_index]]
    return out


def _exact_distances(rows: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        distance = np.sqrt(np.square(rows - query).sum(axis=1))
    else:
        row_norm = np.linalg.norm(rows, axis=1)
        query_norm = np.linalg.norm(query)
        denominator = row_norm * query_norm
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = np.where(denominator > 0, rows @ query / denominator, 0.0)
        distance = 1.0 - np.clip(cosine, -1.0, 1.0)
    return np.where(np.isnan(distance) | np.isnan(rows).any(axis=1), np.inf, distance)
