"""``embed``: a dataset's features laid out in 2-D by PCA, t-SNE or UMAP.

Images with similar features land close together. The scatter is coloured by label (the
dataset's subfolders) or by the model's predicted class; hovering shows the image and a
click opens it. ``--grid WxH`` snaps the layout to a regular grid and fills every cell
with its image: the well-known t-SNE grid picture. t-SNE streams its layout as it settles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.data.datasets import open_dataset
from engine.data.embedding import ALGORITHMS, pca_2d, snap_to_grid, tsne_2d, umap_2d, write_csv
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
        vectors = features.matrix(np.float32)
        paths, labels = features.paths, features.labels
        if color == "prediction":
            logits = yield from within(extract(ctx.model, data, "", cancel=ctx.cancel), 0.3, 0.6)
            try:
                groups = [ctx.model.labels[i] for i in logits.matrix(np.float32).argmax(axis=1)]
            finally:
                logits.close()
        else:
            groups = [label or "unlabelled" for label in labels]
    finally:
        failures = features.failures
        features.close()
    if len(vectors) < 2:
        raise MethodInputError(f"{data.name} has {len(vectors)} readable image(s); an embedding needs at least 2")
    title = f"{algo.upper() if algo != 'tsne' else 't-SNE'} of {path} features, {len(vectors)} images, coloured by {color}"

    yield Progress(0.6, f"{algo} of {len(vectors)} x {vectors.shape[1]} features")
    if algo == "pca":
        layout = pca_2d(vectors, seed)
    elif algo == "umap":
        layout = umap_2d(vectors, seed)
    else:
        job = tsne_2d(vectors, p.perplexity, seed)
        try:
            step = 0
            while True:
                ctx.cancel.check()
                partial, fraction = next(job)
                step += 1
                yield Frame(Scatter(partial, paths, groups, title), step=step)
                yield Progress(0.6 + 0.4 * fraction, f"t-SNE, {fraction:.0%} of the iterations")
        except StopIteration as stop:
            layout = stop.value

    metrics = {"paths": paths, "labels": groups if color == "label" else labels, "colour": color,
               "images": len(paths), "skipped": skipped_list(failures)}
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
