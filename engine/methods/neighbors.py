"""``neighbors``: the dataset images nearest to a query, in feature space and pixel space.

The lecture's point is the contrast: neighbours by raw pixels share colour and layout,
neighbours by a deep layer's features share meaning. Both rows are shown one above the
other, each tile captioned with its label and distance; clicking a tile opens it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.datasets import open_dataset
from engine.core.errors import MethodInputError
from engine.data.extraction import PIXEL_SIDE, extract, extract_pixels, image_vector, skipped_list, skipped_note
from engine.view.gallery import Tile, render_gallery
from engine.data.images import load_image
from engine.core.jobs import Progress, Result, within
from engine.view.display import Gallery
from engine.methods.params import DATASET, FEATURE_LAYER, MethodSpec, Param


def run(ctx, p):
    k, metric, space = p.k, p.metric, p.space
    data = open_dataset(p.dataset)
    if p.query is not None:
        query_path = str(Path(p.query).resolve())
        query_image = load_image(query_path).image
        query_source = query_path
    else:
        image = ctx.require_image()
        query_source, query_path = image, image.path
        query_image = image.image
    path = ctx.resolve_layer(p.layer, default="penultimate")
    p.record(layer=path, query=query_path)
    spaces = ("feature", "pixel") if space == "both" else (space,)

    found: dict[str, list[dict]] = {}
    for index, which in enumerate(spaces):
        start, end = _share(index, len(spaces))
        middle = start + EXTRACTION_SHARE * (end - start)
        if which == "feature":
            features = yield from within(extract(ctx.model, data, path, cancel=ctx.cancel), start, middle)
            vector = image_vector(ctx.model, query_source, path)
        else:
            features = yield from within(extract_pixels(data, cancel=ctx.cancel), start, middle)
            vector = _pixel_vector(query_source, query_image)
        try:
            # A dataset past the index's threshold builds its FAISS index on its first query: shown and cancellable.
            yield from within(features.prepare_nearest(metric, ctx.cancel), middle, end)
            found[which] = _nearest(features, vector, k, metric, exclude=query_path)
            failures = features.failures
        finally:
            features.close()
    yield Progress(1.0, "laying out the neighbours")

    rows = [("query", [Tile(query_image, path=query_path or "", caption=Path(query_path).name if query_path else "current image")])]
    for which in spaces:
        title = f"{'features' if which == 'feature' else 'pixels'} ({metric})"
        rows.append((title, [Tile(load_image(n["path"]).image, path=n["path"], caption=_caption(n)) for n in found[which]]))
    mosaic, regions = render_gallery(rows)
    main = found[spaces[0]]
    metrics = {"neighbors": main, "dataset": data.name, "images": len(data), "space": spaces[0],
               "skipped": skipped_list(failures)}
    if space == "both":
        metrics["pixel_neighbors"] = found["pixel"]
    note = (f"{len(main)} nearest of {len(data)} images in {data.name}; features: {path} "
            f"(averaged over space), pixels: {PIXEL_SIDE}x{PIXEL_SIDE} RGB; click an image to open it{skipped_note(failures)}")
    return Result(display=Gallery(rgb=mosaic, regions=regions, note=note),
                  array=np.array([n["distance"] for n in main], dtype=np.float32), layer=path, metrics=metrics)


EXTRACTION_SHARE = 0.9  # of each space's progress; the rest is the neighbour index (none for a small dataset)


def _share(index: int, count: int) -> tuple[float, float]:
    return index / count, (index + 1) / count


def _nearest(features, vector: np.ndarray, k: int, metric: str, exclude: str) -> list[dict]:
    """The k nearest, leaving out the query itself when it belongs to the dataset."""
    if len(features) == 0:
        raise MethodInputError("no image of the dataset could be read")
    positions, distances = features.nearest(vector, min(k + 1, len(features)), metric)
    paths, labels = features.paths, features.labels
    chosen = [{"path": paths[p], "distance": float(d), "label": labels[p]}
              for p, d in zip(positions, distances) if paths[p] != exclude]
    return chosen[:k]


def _pixel_vector(source, image: Image.Image) -> np.ndarray:
    from engine.data.datasets import load_square, square_pixels

    square = load_square(source, PIXEL_SIDE) if isinstance(source, str) else square_pixels(image, PIXEL_SIDE)
    # Channels first, as the loader hands batches to extract_pixels.
    return (square.transpose(2, 0, 1).reshape(-1).astype(np.float32) / 255).astype(np.float16).astype(np.float32)


def _caption(neighbour: dict) -> str:
    name = neighbour["label"] or Path(neighbour["path"]).stem
    # Two lines, so that a long name shortened to the tile's width never hides the distance.
    return f"{name}\n{neighbour['distance']:.3g}"


SPEC = MethodSpec(
    id="neighbors",
    title="Nearest neighbours",
    summary="The dataset images closest to the current image, by a layer's features and by raw pixels.",
    params=(
        DATASET,
        FEATURE_LAYER,
        Param("k", "int", 8, "how many neighbours", minimum=1, maximum=100),
        Param("metric", "choice", "l2", "distance", ("l2", "cosine")),
        Param("space", "choice", "both", "feature space, pixel space, or both side by side", ("both", "feature", "pixel")),
        Param("query", "image", None, "an image file to query with (default: the current image)"),
    ),
    run=run,
    gradients=False,
    needs_image=False,
)
