"""``embed``: a dataset's features laid out in 2-D by PCA, t-SNE or UMAP.

Images with similar features land close together. The scatter is coloured by label (the
dataset's subfolders) or by the model's predicted class; hovering shows the image and a
click opens it. ``--grid WxH`` snaps the layout to a regular grid and fills every cell
with its image: the well-known t-SNE grid picture. t-SNE streams its layout as it settles.

Past ``engine.data.embedding.LARGE`` images the features are read from the store a block
at a time, never whole (a million rows of 1,280 values are 5 GB as float32), and t-SNE
fits a subsample and places the rest into its map, kept beside the store: run again on
the grown dataset, only the new images are placed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from engine.data.datasets import open_dataset
from engine.data.embedding import (ALGORITHMS, LARGE, Rows, pca_2d, pca_2d_large, snap_to_grid, tsne_2d, tsne_2d_large,
                                   umap_2d, umap_2d_large, write_csv)
from engine.core.errors import MethodInputError
from engine.data.extraction import extract, skipped_list, skipped_note
from engine.view.gallery import Tile, render_gallery
from engine.data.images import load_image
from engine.core.jobs import Frame, Progress, Result, within
from engine.view.display import Gallery, Scatter
from engine.methods.params import DATASET, FEATURE_LAYER, SEED, MethodSpec, Param

GRID_TILE = 48


def run(ctx, p):
    algo, cells, seed, csv = p.algo, p.grid, p.seed, p.csv
    data = open_dataset(p.dataset)
    path = ctx.resolve_layer(p.layer, default="penultimate")
    color = p.color if p.color != "auto" else "label" if data.classes else "prediction"
    p.record(layer=path, color=color)
    # Extraction takes the first 60% of the progress bar (half of it for the predictions).
    features = yield from within(extract(ctx.model, data, path, cancel=ctx.cancel), 0.0, 0.3 if color == "prediction" else 0.6)
    try:
        paths, labels, failures = features.paths, features.labels, features.failures
        if color == "prediction":
            logits = yield from within(extract(ctx.model, data, "", cancel=ctx.cancel), 0.3, 0.6)
            try:
                predicted = np.concatenate([block.argmax(axis=1) for _, block in store_rows(logits).blocks()])
                groups = [ctx.model.labels[i] for i in predicted]
            finally:
                logits.close()
        else:
            groups = [label or "unlabelled" for label in labels]
        if len(paths) < 2:
            raise MethodInputError(f"{data.name} has {len(paths)} readable image(s); an embedding needs at least 2")
        title = f"{algo.upper() if algo != 'tsne' else 't-SNE'} of {path} features, {len(paths)} images, coloured by {color}"
        yield Progress(0.6, f"{algo} of {len(paths)} x {features.store.dim} features")
        if len(paths) > LARGE:
            layout = yield from _large_layout(ctx, p, features, data, paths, groups, title)
        else:
            layout = yield from _layout(ctx, p, features.matrix(np.float32), paths, groups, title)
    finally:
        features.close()

    metrics = {"colour": color, "images": len(paths), "skipped": skipped_list(failures)}
    if len(paths) > LARGE:
        # A million paths would make every record of this result (the CLI's line, an export's
        # provenance) tens of megabytes: past LARGE they live in the coordinates' CSV only.
        csv = csv or layout_file(features, data, p)
    else:
        metrics.update(paths=paths, labels=groups if color == "label" else labels)
    if csv:
        write_csv(csv, paths, groups, layout)
        metrics["csv"] = str(Path(csv).resolve())
    if cells:
        mosaic, regions = grid_picture(layout, paths, *cells, seed=seed)
        display = Gallery(rgb=mosaic, regions=regions,
                          note=f"{title}, snapped to a {cells[0]}x{cells[1]} grid; click an image to open it{skipped_note(failures)}")
    else:
        display = Scatter(layout, paths, groups, title,
                          note=f"{title}; hover for the image, click to open it{skipped_note(failures)}")
    return Result(display=display, array=layout, layer=path, metrics=metrics)


def _layout(ctx, p, vectors: np.ndarray, paths: list[str], groups: list[str], title: str):
    """The exact layout of every vector at once, t-SNE streamed as it settles."""
    if p.algo == "pca":
        return pca_2d(vectors, p.seed)
    if p.algo == "umap":
        return umap_2d(vectors, p.seed)
    job = tsne_2d(vectors, p.perplexity, p.seed)
    try:
        step = 0
        while True:
            ctx.cancel.check()
            partial, fraction = next(job)
            step += 1
            yield Frame(Scatter(partial, paths, groups, title), step=step)
            yield Progress(0.6 + 0.4 * fraction, f"t-SNE, {fraction:.0%} of the iterations")
    except StopIteration as stop:
        return stop.value


def _large_layout(ctx, p, features, data, paths: list[str], groups: list[str], title: str):
    """The layout of more vectors than are read at once: ``engine.data.embedding``'s chunked
    paths over the feature store; the t-SNE map is kept beside the store for the next run."""
    rows = store_rows(features)
    if p.algo == "pca":
        job = pca_2d_large(rows)
    elif p.algo == "umap":
        job = umap_2d_large(rows, p.seed)
    else:
        job = tsne_2d_large(rows, p.perplexity, p.seed, keep=tsne_map_path(features, data, p.perplexity, p.seed))
    frames = 0
    shown: tuple[list[str], list[str]] | None = None
    try:
        while True:
            ctx.cancel.check()
            step = next(job)
            if step.layout is not None:
                if shown is None:  # the fitted subsample: the same points in every frame
                    shown = ([paths[i] for i in step.positions], [groups[i] for i in step.positions])
                frames += 1
                yield Frame(Scatter(step.layout, *shown, f"{title}: fitting {len(step.positions):,} of them"), step=frames)
            yield Progress(0.6 + 0.4 * step.fraction, step.message)
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()  # a cancelled t-SNE keeps the points it has placed


def store_rows(features) -> Rows:
    """An extraction's vectors as ``Rows``: read from the store a block at a time, never all at once."""
    store, rows = features.store, features.rows
    return Rows(len(rows), store.dim or 0, lambda positions: store.matrix(rows[positions], np.float32), rows.copy())


def tsne_map_path(features, data, perplexity: float, seed: int) -> Path:
    """Where the t-SNE map of this dataset's features is kept: beside the store, so it goes
    when the store goes; one map per dataset and settings (a store serves every dataset)."""
    return _beside_store(features, data, "tsne-maps", "pickle", perplexity=float(perplexity), seed=int(seed))


def layout_file(features, data, p) -> Path:
    """Where a large embedding's coordinates are written when no CSV was asked for: beside
    the store, one file per dataset and settings, each run replacing the last."""
    return _beside_store(features, data, "layouts", "csv", algo=p.algo, perplexity=float(p.perplexity), seed=int(p.seed))


def _beside_store(features, data, folder: str, suffix: str, **settings) -> Path:
    """A file of this dataset's, named by a digest of the dataset and ``settings``, in ``folder`` of its store."""
    what = json.dumps({"dataset": str(data.root), "name": data.name, **settings}, sort_keys=True)
    return features.store.folder / folder / f"{hashlib.sha256(what.encode()).hexdigest()[:24]}.{suffix}"


def grid_picture(layout: np.ndarray, paths: list[str], columns: int, rows: int, seed: int = 0):
    """The t-SNE grid: every cell filled with the image assigned to it, one large mosaic."""
    chosen, cells = snap_to_grid(layout, columns, rows, seed)
    by_cell = {(int(c), int(r)): paths[i] for i, (c, r) in zip(chosen, cells)}
    grid_rows = []
    for row in range(rows):
        tiles = []
        for column in range(columns):
            where = by_cell.get((column, row))
            tiles.append(Tile(load_image(where).image, path=where) if where else Tile(_blank(), path=""))
        grid_rows.append(("", tiles))
    mosaic, regions = render_gallery(grid_rows, tile=GRID_TILE, gap=1)
    return mosaic, [region for region in regions if region.path]


def _blank():
    from PIL import Image

    return Image.new("RGB", (GRID_TILE, GRID_TILE), (40, 40, 40))


SPEC = MethodSpec(
    id="embed",
    title="Embedding (PCA / t-SNE / UMAP)",
    summary="The dataset's features in 2-D: similar images land together. Hover to see, click to open.",
    params=(
        DATASET,
        FEATURE_LAYER,
        Param("algo", "choice", "tsne", "the reduction", ALGORITHMS),
        Param("color", "choice", "auto", "colour points by the dataset's labels or the model's prediction",
              ("auto", "label", "prediction")),
        Param("grid", "grid", None, "snap to a grid of WxH cells filled with the images, e.g. 20x20", minimum=1,
              maximum=100),
        Param("perplexity", "float", 30.0, "t-SNE's neighbourhood size", minimum=2.0, maximum=100.0),
        SEED,
        Param("csv", "save_file", None, "also write the coordinates to this CSV file"),
    ),
    run=run,
    gradients=False,
    needs_image=False,
    streams_frames=True,
)
