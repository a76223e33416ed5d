"""2-D layouts of feature vectors (PCA, t-SNE, UMAP) and the t-SNE grid.

t-SNE runs in chunks of iterations so a job can show the layout settling and stop when
cancelled: openTSNE's ``TSNEEmbedding.optimize`` continues an embedding where the last
chunk left it. Vectors are first reduced to 50 dimensions by PCA, the usual preparation,
which makes the neighbour search for the affinities far cheaper.

Past ``LARGE`` points (a million images: 2.5 GB of float16 features, 5 GB as float32)
the vectors are never in memory together. They come as ``Rows``, read a block at a time
from the feature store, and:

- PCA is fitted in one pass over the blocks: their mean and covariance accumulate in
  float64 and its eigenvectors are the axes (``fit_pca``), so the result is the exact
  PCA's. scikit-learn's ``IncrementalPCA`` does an SVD per block: 107 s for 20,000 x
  1,280 against 2.6 s this way (two busy cores).
- t-SNE is fitted on a seeded subsample of ``TSNE_FIT_POINTS`` and every other point is
  placed into that map (openTSNE's ``prepare_partial`` + ``optimize``, a chunk at a
  time). The map, with the PCA it was fitted in and every point placed so far, is kept
  in a file (``tsne_2d_large``'s ``keep``), so a dataset that grew places its new images
  without fitting again.
- UMAP runs with ``low_memory=True`` on the 50 PCA dimensions.

Each of these is a generator of ``Step`` (progress, and for t-SNE the fitted layout as
it settles) that returns the N x 2 layout; a job stops it between steps to cancel.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator

import numpy as np

from engine.core.errors import MethodInputError
from engine.data.images import write_atomically

ALGORITHMS = ("pca", "tsne", "umap")
PCA_DIMENSIONS = 50
EXAGGERATION_ITERATIONS = 250  # openTSNE's (and van der Maaten's) early exaggeration phase
ITERATIONS = 500
CHUNK = 25
EXACT_NEIGHBOURS = 10_000
LARGE = 50_000  # past this many points: the chunked paths below
READ_ROWS = 16_384  # rows read at a time: 80 MB of 1,280 float32 values
# Fitting grows about linearly with the points (20,000: 44 s on two busy cores), placing
# the rest costs 0.28 ms a point. Measured at 1,000,000 x 1,280 (bench/_scale_embedding.py):
# PCA to 50 and the fit of 50,000 took 67 s, placing 950,000 took 267 s, and every placed
# point of 20 clusters had its 10 nearest fitted points in its own cluster; a fit of 100,000
# would add about a minute for no better placement.
TSNE_FIT_POINTS = 50_000
PLACE_ROWS = 10_000  # points placed into a map at a time
# Placement: openTSNE's ``transform`` settings (perplexity 5, learning rate 0.1, exaggeration
# 1.5, gradients clipped at 0.25) but 50 iterations, not 250: the median of each point's
# 25 nearest map points already puts it in its cluster (the same 10-NN agreement before
# and after optimising), and 250 iterations would triple the time a point.
PLACE_ITERATIONS = 50
PLACE_PERPLEXITY = 5.0
MAP_FORMAT = 1
# Work per point in ms on two busy cores, for progress that runs evenly (and so a fair ETA):
# the PCA pass, fitting t-SNE, placing into the map.
_PCA_MS, _FIT_MS, _PLACE_MS = 0.1, 2.2, 0.23


@dataclass
class Rows:
    """N vectors of ``dim`` values read a block at a time: from a feature store, or an array.

    ``read(positions)`` takes ascending positions in 0 .. count-1 and returns those rows as
    float32; ``ids`` name the rows stably across runs (a store's row numbers), so a kept
    t-SNE map knows which points it has placed.
    """

    count: int
    dim: int
    read: Callable[[np.ndarray], np.ndarray]
    ids: np.ndarray

    @classmethod
    def of_array(cls, array: np.ndarray) -> "Rows":
        array = np.asarray(array) if not isinstance(array, np.memmap) else array
        return cls(len(array), array.shape[1], lambda positions: np.asarray(array[positions], dtype=np.float32),
                   np.arange(len(array), dtype=np.int64))

    def blocks(self, positions: np.ndarray | None = None, size: int | None = None):
        """(positions, float32 rows) of ``positions`` (default: all), ``size`` (``READ_ROWS``) at a time."""
        size = size or READ_ROWS
        positions = np.arange(self.count) if positions is None else np.asarray(positions, dtype=np.int64)
        for start in range(0, len(positions), size):
            chunk = positions[start:start + size]
            yield chunk, self.read(chunk)


@dataclass
class Step:
    """How far a chunked embedding is; ``layout`` is the t-SNE map of ``positions`` so far."""

    fraction: float
    message: str
    layout: np.ndarray | None = None
    positions: np.ndarray | None = None


@dataclass
class Projection:
    """A fitted PCA: ``(x - mean) @ components.T`` gives a row's coordinates."""

    mean: np.ndarray  # D, float64
    components: np.ndarray  # k x D, float32, unit rows, by falling variance
    explained_variance: np.ndarray  # k, float64

    def project(self, block: np.ndarray) -> np.ndarray:
        return ((block - self.mean.astype(np.float32)) @ self.components.T).astype(np.float32)


def fit_pca(rows: Rows, components: int, done: float = 0.0, share: float = 1.0
            ) -> Generator[Step, None, Projection]:
    """PCA of every row in one pass over the blocks: exact, in memory for D x D only.

    Blocks are centred on the first block's mean before their products are summed (in
    float32 per block, float64 across blocks), which keeps the covariance accurate when
    the features sit far from zero. Yields a Step per block, its fraction in ``done`` ..
    ``done + share``.
    """
    if rows.count < 2:
        raise MethodInputError("an embedding needs at least 2 images")
    shift = None
    total = np.zeros(rows.dim, dtype=np.float64)
    products = np.zeros((rows.dim, rows.dim), dtype=np.float64)
    seen = 0
    for positions, block in rows.blocks():
        if shift is None:
            shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
        centred = block - shift
        total += centred.sum(axis=0, dtype=np.float64)
        products += centred.T @ centred
        seen += len(positions)
        yield Step(done + share * seen / rows.count, f"PCA, {seen:,} of {rows.count:,} points")
    mean = total / rows.count
    covariance = (products - rows.count * np.outer(mean, mean)) / (rows.count - 1)
    variance, vectors = np.linalg.eigh(covariance)
    keep = np.argsort(variance)[::-1][:min(components, rows.dim, rows.count)]
    axes = vectors[:, keep].T
    # scikit-learn's sign convention (svd_flip on the components): the largest entry of each axis is positive
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes *= np.where(signs == 0, 1.0, signs)[:, None]
    return Projection(mean + shift.astype(np.float64), axes.astype(np.float32), np.maximum(variance[keep], 0.0))


def project_rows(rows: Rows, projection: Projection, positions: np.ndarray | None = None) -> np.ndarray:
    """The PCA coordinates of ``positions`` (default: all), projected a block at a time."""
    positions = np.arange(rows.count) if positions is None else positions
    out = np.empty((len(positions), len(projection.components)), dtype=np.float32)
    at = 0
    for chunk, block in rows.blocks(positions):
        out[at:at + len(chunk)] = projection.project(block)
        at += len(chunk)
    return out


def pca_2d_large(rows: Rows) -> Generator[Step, None, np.ndarray]:
    """``pca_2d`` for rows that do not fit in memory: one pass to fit, one to project."""
    projection = yield from fit_pca(rows, 2, 0.0, 0.8)
    layout = np.empty((rows.count, 2), dtype=np.float32)
    for positions, block in rows.blocks():
        layout[positions] = projection.project(block)
        yield Step(0.8 + 0.2 * (positions[-1] + 1) / rows.count, f"projecting, {positions[-1] + 1:,} points")
    return layout


def umap_2d_large(rows: Rows, seed: int = 0) -> Generator[Step, None, np.ndarray]:
    """UMAP of many points: PCA to 50 dimensions in blocks, then umap-learn's low-memory mode."""
    umap = _import_umap()
    projection = yield from fit_pca(rows, PCA_DIMENSIONS, 0.0, 0.1)
    reduced = project_rows(rows, projection)
    yield Step(0.15, f"UMAP of {rows.count:,} points (its neighbour graph and layout run in one go)")
    model = umap.UMAP(n_components=2, random_state=seed, n_neighbors=15, low_memory=True)
    return model.fit_transform(reduced).astype(np.float32)


def pca_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    if len(vectors) < 2:
        raise MethodInputError("an embedding needs at least 2 images")
    return PCA(n_components=2, random_state=seed).fit_transform(vectors).astype(np.float32)


def tsne_2d(vectors: np.ndarray, perplexity: float = 30.0, seed: int = 0
            ) -> Generator[tuple[np.ndarray, float], None, np.ndarray]:
    """t-SNE; yields (layout so far, fraction done) after every chunk of iterations."""
    from sklearn.decomposition import PCA

    count = len(vectors)
    if count < 4:
        raise MethodInputError("t-SNE needs at least 4 images")
    dimensions = min(PCA_DIMENSIONS, vectors.shape[1], count)
    reduced = PCA(n_components=dimensions, random_state=seed).fit_transform(vectors).astype(np.float64)
    embedding = yield from _optimise_tsne(reduced, perplexity, seed)
    return np.asarray(embedding, dtype=np.float32)


def _optimise_tsne(reduced: np.ndarray, perplexity: float, seed: int):
    """openTSNE on PCA-reduced rows; yields (layout so far, fraction done), returns the embedding."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    count = len(reduced)
    perplexity = float(min(perplexity, (count - 1) / 3))
    threads = os.cpu_count() or 1
    # Exact neighbours up to 10,000 points: on 50 PCA dimensions a brute-force search is
    # 7x faster than building an Annoy index (0.24 s against 1.8 s for 5,000 points).
    method = "exact" if count <= EXACT_NEIGHBOURS else "auto"
    affinities = affinity.PerplexityBasedNN(reduced, perplexity=perplexity, n_jobs=threads, random_state=seed, method=method)
    start = initialization.pca(reduced, random_state=seed)
    # FFT-interpolated gradients (Linderman et al. 2019). Once early exaggeration ends the
    # layout spreads and the interpolation grid grows with it; a grid of 2 units per box
    # (openTSNE's default is 1) with at least 20 boxes cuts the 750 iterations on 5,000
    # points from 12.5 s to 2.9 s with the same trustworthiness (0.982; measured in bench/).
    embedding = TSNEEmbedding(start, affinities, n_jobs=threads, random_state=seed, negative_gradient_method="fft",
                              ints_in_interval=2, min_num_intervals=20)
    total = EXAGGERATION_ITERATIONS + ITERATIONS
    done = 0
    for iterations, exaggeration, momentum in ((EXAGGERATION_ITERATIONS, 12, 0.5), (ITERATIONS, 1, 0.8)):
        for _ in range(0, iterations, CHUNK):
            embedding = embedding.optimize(n_iter=CHUNK, exaggeration=exaggeration, momentum=momentum)
            done += CHUNK
            yield np.asarray(embedding, dtype=np.float32), done / total
    return embedding


@dataclass
class TsneMap:
    """A fitted t-SNE map kept between runs: what new points are placed into.

    ``settings`` are what the map depends on (perplexity, seed, the vectors' width);
    ``projection`` is the PCA the map was fitted in, ``embedding`` openTSNE's fitted
    ``TSNEEmbedding`` (with its neighbour index), and ``placed_ids`` / ``placed_xy`` every
    point laid out so far (the fitted ones included), by ``Rows.ids``, ids ascending.
    """

    settings: dict
    projection: Projection
    embedding: object
    fitted_ids: np.ndarray
    placed_ids: np.ndarray
    placed_xy: np.ndarray

    def add(self, ids: np.ndarray, xy: np.ndarray) -> None:
        ids = np.concatenate([self.placed_ids, ids])
        order = np.argsort(ids, kind="stable")
        self.placed_ids, self.placed_xy = ids[order], np.concatenate([self.placed_xy, xy])[order]

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Each id's index into ``placed_xy``, or -1 where it has not been placed."""
        if not len(self.placed_ids):
            return np.full(len(ids), -1, dtype=np.int64)
        where = np.minimum(np.searchsorted(self.placed_ids, ids), len(self.placed_ids) - 1)
        return np.where(self.placed_ids[where] == ids, where, -1)


def load_map(path: str | os.PathLike | None, settings: dict) -> TsneMap | None:
    """The map kept in ``path`` if it was made with ``settings``; None when there is none
    or it cannot be read (a damaged or older file is fitted again, never an error)."""
    if path is None or not Path(path).is_file():
        return None
    try:
        with open(path, "rb") as handle:
            kept = pickle.load(handle)
    except Exception:
        return None
    if not isinstance(kept, TsneMap) or kept.settings != {**settings, "format": MAP_FORMAT}:
        return None
    return kept


def save_map(path: str | os.PathLike, kept: TsneMap) -> None:
    write_atomically(path, lambda handle: pickle.dump(kept, handle, protocol=pickle.HIGHEST_PROTOCOL), overwrite=True)


def tsne_2d_large(rows: Rows, perplexity: float = 30.0, seed: int = 0, keep: str | os.PathLike | None = None,
                  fit_points: int | None = None) -> Generator[Step, None, np.ndarray]:
    """t-SNE of more points than fit in a t-SNE: fit a seeded subsample, place the rest.

    PCA to 50 dimensions is fitted on every row (``fit_pca``), the map on ``fit_points``
    of them (default ``TSNE_FIT_POINTS``; streamed as ``Step.layout`` while it settles), and every other point is
    placed into the map ``PLACE_ROWS`` at a time. With ``keep`` (a file) the map and every
    placement are kept there and used the next time: only points not placed before are
    placed, so a dataset that grew costs its new images alone. A kept map is fitted again
    only when its subsample is under half of what a fresh fit would take (a small dataset
    that grew large). Stopping the generator keeps the placements made so far.
    """
    if rows.count < 4:
        raise MethodInputError("t-SNE needs at least 4 images")
    settings = {"perplexity": float(perplexity), "seed": int(seed), "dim": int(rows.dim)}
    kept = load_map(keep, settings)
    fit_count = min(rows.count, fit_points or TSNE_FIT_POINTS)
    if kept is not None and 2 * len(kept.fitted_ids) < fit_count:
        kept = None
    placed_at = kept.lookup(rows.ids) if kept is not None else np.full(rows.count, -1)
    work = _PLACE_MS * (rows.count - (fit_count if kept is None else np.count_nonzero(placed_at >= 0)))
    if kept is None:
        work += _PCA_MS * rows.count + _FIT_MS * fit_count
        pca_share, fit_share = _PCA_MS * rows.count / work, _FIT_MS * fit_count / work
        projection = yield from fit_pca(rows, PCA_DIMENSIONS, 0.0, pca_share)
        chosen = np.sort(np.random.default_rng(seed).choice(rows.count, fit_count, replace=False))
        reduced = project_rows(rows, projection, chosen).astype(np.float64)
        yield Step(pca_share, f"t-SNE of {fit_count:,} points: their nearest neighbours")  # 10-30 s in one call
        job = _optimise_tsne(reduced, perplexity, seed)
        try:
            while True:
                partial, fraction = next(job)
                yield Step(pca_share + fit_share * fraction, f"t-SNE of {fit_count:,} points, {fraction:.0%} of the "
                           f"iterations", layout=partial, positions=chosen)
        except StopIteration as stop:
            embedding = stop.value
        embedding.prepare_interpolation_grid()  # centres the map, as placing into it needs
        fitted = np.asarray(embedding, dtype=np.float32).copy()
        kept = TsneMap({**settings, "format": MAP_FORMAT}, projection, embedding, rows.ids[chosen],
                       np.empty(0, np.int64), np.empty((0, 2), np.float32))
        kept.add(rows.ids[chosen], fitted)
        if keep is not None:
            save_map(keep, kept)
        placed_at = kept.lookup(rows.ids)
        done = pca_share + fit_share
    else:
        done = 0.0
    layout = np.zeros((rows.count, 2), dtype=np.float32)
    known = placed_at >= 0
    layout[known] = kept.placed_xy[placed_at[known]]
    missing = np.flatnonzero(~known)
    new_ids, new_xy = [], []
    try:
        for start in range(0, len(missing), PLACE_ROWS):
            chunk = missing[start:start + PLACE_ROWS]
            placed = place_into_map(kept, project_rows(rows, kept.projection, chunk))
            layout[chunk] = placed
            new_ids.append(rows.ids[chunk])
            new_xy.append(placed)
            count = start + len(chunk)
            yield Step(done + (1 - done) * count / len(missing), f"placing points into the t-SNE map, "
                       f"{count:,} of {len(missing):,}")
    finally:
        if new_ids:
            kept.add(np.concatenate(new_ids), np.concatenate(new_xy))
            if keep is not None:
                save_map(keep, kept)
    return layout


def place_into_map(kept: TsneMap, reduced: np.ndarray) -> np.ndarray:
    """New points' positions in a fitted map: each starts at the median of its 25 nearest
    map points and moves against the fixed map (openTSNE's ``prepare_partial``)."""
    partial = kept.embedding.prepare_partial(reduced.astype(np.float64), initialization="median", k=25,
                                             perplexity=PLACE_PERPLEXITY)
    partial.optimize(n_iter=PLACE_ITERATIONS, learning_rate=0.1, exaggeration=1.5, momentum=0.8, inplace=True,
                     max_grad_norm=0.25)
    return np.asarray(partial, dtype=np.float32)


def _import_umap():
    try:
        import umap
    except ImportError:
        raise MethodInputError("UMAP needs the umap-learn package: pip install umap-learn") from None
    return umap


def umap_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    umap = _import_umap()
    if len(vectors) < 4:
        raise MethodInputError("UMAP needs at least 4 images")
    return umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(vectors) - 1)).fit_transform(vectors).astype(np.float32)


def snap_to_grid(layout: np.ndarray, columns: int, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Assign points to the cells of a columns x rows grid, keeping neighbours together.

    The layout is scaled into the grid's box and points are matched to cells by a linear
    assignment (Jonker-Volgenant, scipy) minimising the total squared distance moved, as
    in the well-known t-SNE grid pictures. With more points than cells a seeded random
    subset is placed. Returns (point indices, their (column, row) cells).
    """
    from scipy.optimize import linear_sum_assignment

    cells = columns * rows
    chosen = np.arange(len(layout))
    if len(chosen) > cells:
        chosen = np.sort(np.random.default_rng(seed).choice(len(layout), size=cells, replace=False))
    points = layout[chosen].astype(np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    points = (points - low) / np.where(high > low, high - low, 1.0)
    grid_x, grid_y = np.meshgrid(np.linspace(0, 1, columns), np.linspace(0, 1, rows))
    centres = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    cost = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    point_index, cell_index = linear_sum_assignment(cost)
    return chosen[point_index], np.stack([cell_index % columns, cell_index // columns], axis=1)


def write_csv(path: str | os.PathLike, paths: list[str], groups: list[str], layout: np.ndarray) -> Path:
    """The layout as CSV: one row per image with its path, group and coordinates."""
    content = layout_csv(paths, groups, layout)
    return write_atomically(path, lambda handle: handle.write(content), overwrite=True)


def layout_csv(paths: list[str], groups: list[str], layout: np.ndarray) -> bytes:
    """The CSV ``write_csv`` writes, as bytes: a header, then path, group, x, y per image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "group", "x", "y"])
    for image, group, (x, y) in zip(paths, groups, layout):
        writer.writerow([image, group, f"{x:.6g}", f"{y:.6g}"])
    return buffer.getvalue().encode()
