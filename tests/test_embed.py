"""Embeddings: PCA as scikit-learn computes it, t-SNE keeps clusters apart, the grid."""

import csv
import shutil

import numpy as np
import pytest

from engine.data.embedding import snap_to_grid, tsne_2d
from engine.core.errors import JobCancelled, MethodInputError
from engine.data.extraction import extract
from engine.data.datasets import open_dataset
from engine.core.jobs import CancelToken, Frame, drive
from engine.methods import METHODS, MethodContext
from engine.data.samples import sample_paths
from engine.view.display import Gallery, Scatter
from tests.conftest import make_tiny_model


def run(ctx, **params):
    spec = METHODS["embed"]
    frames = []
    return drive(spec.start(ctx, params), on_frame=frames.append), frames


def test_pca_layout_is_scikit_learns(labelled_folder, tmp_path):
    from sklearn.decomposition import PCA

    model = make_tiny_model(size=32)
    out = tmp_path / "coords.csv"
    result, frames = run(MethodContext(model=model, image=None), dataset=str(labelled_folder), layer="features.4",
                         algo="pca", csv=str(out))
    features = drive(extract(model, open_dataset(str(labelled_folder)), "features.4"))
    expected = PCA(n_components=2, random_state=0).fit_transform(features.matrix(np.float32))
    features.close()
    for axis in range(2):  # PCA axes are defined up to their sign
        a, b = result.array[:, axis], expected[:, axis]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-3 * np.abs(b).max()
    assert result.metrics["paths"] == sorted(result.metrics["paths"]) and len(result.metrics["paths"]) == 9
    assert result.metrics["labels"].count("texture") == 3
    assert isinstance(result.display, Scatter) and frames == []
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == result.metrics["paths"]
    assert float(rows[4]["x"]) == pytest.approx(float(result.array[4, 0]), rel=1e-4)


def test_colour_by_prediction_uses_the_models_classes(labelled_folder):
    model = make_tiny_model(size=32)
    result, _ = run(MethodContext(model=model, image=None), dataset=str(labelled_folder), layer="features.4",
                    algo="pca", color="prediction")
    assert set(result.display.groups) <= set(model.labels)


def test_tsne_keeps_separated_clusters_apart_and_streams():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)) * 10
    vectors = np.concatenate([c + rng.normal(size=(40, 64)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(4), 40)
    job = tsne_2d(vectors, perplexity=15)
    chunks = 0
    try:
        while True:
            layout, fraction = next(job)
            chunks += 1
    except StopIteration as stop:
        layout = stop.value
    assert chunks > 10 and fraction == 1.0
    distances = np.linalg.norm(layout[:, None] - layout[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.argsort(axis=1)[:, :5]
    assert (labels[nearest] == labels[:, None]).mean() > 0.95


def test_tsne_job_streams_frames_and_cancels(labelled_folder):
    model = make_tiny_model(size=32)
    cancel = CancelToken()
    ctx = MethodContext(model=model, image=None, cancel=cancel)
    job = METHODS["embed"].start(ctx, dataset=str(labelled_folder), layer="features.4", algo="tsne", perplexity=2)
    with pytest.raises(JobCancelled):
        for event in job:
            if isinstance(event, Frame):
                assert isinstance(event.display, Scatter) and event.display.xy.shape == (9, 2)
                cancel.cancel()


def test_grid_assignment_puts_one_image_per_cell_and_keeps_a_grid_in_place():
    columns, rows = 5, 4
    xs, ys = np.meshgrid(np.arange(columns), np.arange(rows))
    layout = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    shuffled = np.random.default_rng(1).permutation(len(layout))
    chosen, cells = snap_to_grid(layout[shuffled], columns, rows)
    assert len({tuple(c) for c in cells}) == columns * rows
    np.testing.assert_array_equal(layout[shuffled][chosen], cells)  # a grid stays where it is
    many = np.random.default_rng(2).normal(size=(100, 2))
    chosen, cells = snap_to_grid(many, 3, 3)
    assert len(chosen) == 9 == len({tuple(c) for c in cells})


def test_grid_picture_is_a_mosaic_of_clickable_images(labelled_folder):
    result, _ = run(MethodContext(model=make_tiny_model(size=32), image=None), dataset=str(labelled_folder),
                    layer="features.4", algo="pca", grid="3x3")
    assert isinstance(result.display, Gallery) and len(result.display.regions) == 9
    assert {r.path for r in result.display.regions} == set(result.metrics["paths"])


def test_bad_grid_and_tiny_datasets_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path))
    with pytest.raises(MethodInputError, match="20x15"):
        METHODS["embed"].param("grid").coerce("twenty")
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(sample_paths()["coffee"], folder / "coffee.png")
    with pytest.raises(MethodInputError, match="at least 2"):
        run(MethodContext(model=make_tiny_model(size=32), image=None), dataset=str(folder), layer="features.4", algo="pca")
