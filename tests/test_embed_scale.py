"""Embeddings past what fits at once: chunked PCA is the exact PCA, t-SNE places held-out
points into a fitted map and keeps that map for points added later, cancel stops it."""

import numpy as np
import pytest

from engine.core.errors import JobCancelled
from engine.core.jobs import CancelToken, Frame, Progress, drive
from engine.data import embedding
from engine.data.embedding import Rows, pca_2d_large, tsne_2d_large
from engine.methods import METHODS, MethodContext
from tests.conftest import make_tiny_model


def finish(job):
    steps = []
    try:
        while True:
            steps.append(next(job))
    except StopIteration as stop:
        return stop.value, steps


def clusters(count_each: int, seed: int = 0, centres_seed: int = 0):
    centres = np.random.default_rng(centres_seed).normal(size=(4, 64)) * 10
    rng = np.random.default_rng(seed)
    vectors = np.concatenate([c + rng.normal(size=(count_each, 64)) for c in centres]).astype(np.float32)
    return vectors, np.repeat(np.arange(4), count_each)


def test_chunked_pca_is_scikit_learns(monkeypatch):
    from sklearn.decomposition import PCA

    monkeypatch.setattr(embedding, "READ_ROWS", 300)  # ten blocks
    rng = np.random.default_rng(0)
    # far from zero and with unequal axes, where a one-pass covariance loses digits if done naively
    vectors = (rng.normal(size=(3000, 40)) * np.linspace(0.5, 8, 40) + 1000).astype(np.float32)
    layout, steps = finish(pca_2d_large(Rows.of_array(vectors)))
    expected = PCA(n_components=2, random_state=0).fit_transform(vectors.astype(np.float64))
    np.testing.assert_allclose(layout, expected, atol=1e-3 * np.abs(expected).max())  # the same signs, too
    assert len(steps) == 2 * 10 and steps[-1].fraction == pytest.approx(1.0)
    projection, _ = finish(embedding.fit_pca(Rows.of_array(vectors), 5))
    reference = PCA(n_components=5).fit(vectors.astype(np.float64)).explained_variance_
    np.testing.assert_allclose(projection.explained_variance, reference, rtol=1e-3)


def test_tsne_places_held_out_points_in_their_cluster_and_keeps_the_map(tmp_path, monkeypatch):
    from scipy.spatial import cKDTree

    monkeypatch.setattr(embedding, "EXAGGERATION_ITERATIONS", 100)  # four clusters this far apart need no more
    monkeypatch.setattr(embedding, "ITERATIONS", 150)
    vectors, labels = clusters(150)
    keep = tmp_path / "map.pickle"
    layout, steps = finish(tsne_2d_large(Rows.of_array(vectors), perplexity=20, keep=keep, fit_points=200))
    fitted = next(step.positions for step in steps if step.layout is not None)
    held_out = np.setdiff1d(np.arange(len(vectors)), fitted)
    assert len(fitted) == 200 and len(held_out) == 400
    assert any("placing" in step.message for step in steps)
    _, nearest = cKDTree(layout[fitted]).query(layout[held_out], k=5)
    assert (labels[fitted][nearest] == labels[held_out, None]).mean() > 0.95

    # The dataset grows: its new points are placed into the kept map, nothing is fitted again.
    def no_refit(*_args, **_kwargs):
        raise AssertionError("the kept map was fitted again")

    monkeypatch.setattr(embedding, "_optimise_tsne", no_refit)
    more, more_labels = clusters(50, seed=1)
    grown = np.concatenate([vectors, more])
    rows = Rows(len(grown), grown.shape[1], lambda positions: grown[positions], np.arange(len(grown)))
    again, steps = finish(tsne_2d_large(rows, perplexity=20, keep=keep, fit_points=200))
    np.testing.assert_array_equal(again[:len(vectors)], layout)  # placed before: where they were
    assert steps and all(step.layout is None for step in steps)
    _, nearest = cKDTree(layout[fitted]).query(again[len(vectors):], k=5)
    assert (labels[fitted][nearest] == more_labels[:, None]).mean() > 0.95
    other = tmp_path / "other.pickle"
    keep.rename(other)  # other settings or no file: fitted afresh, which the patch above refuses
    with pytest.raises(AssertionError, match="fitted again"):
        finish(tsne_2d_large(rows, perplexity=25, keep=other, fit_points=200))


def test_a_damaged_kept_map_is_fitted_again(tmp_path):
    keep = tmp_path / "map.pickle"
    keep.write_bytes(b"not a pickle")
    assert embedding.load_map(keep, {"perplexity": 30.0, "seed": 0, "dim": 64}) is None


def large_embed(monkeypatch, labelled_folder, cancel=None, **params):
    """``embed`` over the 9 sample photos as if they were past ``LARGE``: 5 fitted, 4 placed."""
    import engine.methods.embed as embed_method

    monkeypatch.setattr(embed_method, "LARGE", 4)
    monkeypatch.setattr(embedding, "TSNE_FIT_POINTS", 5)
    monkeypatch.setattr(embedding, "PLACE_ROWS", 2)
    monkeypatch.setattr(embedding, "EXAGGERATION_ITERATIONS", 50)  # five points settle at once
    monkeypatch.setattr(embedding, "ITERATIONS", 50)
    ctx = MethodContext(model=make_tiny_model(size=32), image=None, cancel=cancel or CancelToken())
    return METHODS["embed"].start(ctx, {"dataset": str(labelled_folder), "layer": "features.4", **params})


def test_large_pca_through_the_method_is_the_exact_one(labelled_folder, monkeypatch):
    exact = drive(METHODS["embed"].start(MethodContext(model=make_tiny_model(size=32), image=None),
                                         {"dataset": str(labelled_folder), "layer": "features.4", "algo": "pca"}))
    large = drive(large_embed(monkeypatch, labelled_folder, algo="pca"))
    for axis in range(2):
        a, b = large.array[:, axis], exact.array[:, axis]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-3 * np.abs(b).max()


def test_cancel_while_placing_keeps_the_map_for_the_next_run(labelled_folder, monkeypatch):
    cancel = CancelToken()
    frames = 0
    with pytest.raises(JobCancelled):
        for event in large_embed(monkeypatch, labelled_folder, cancel, algo="tsne", perplexity=2):
            frames += isinstance(event, Frame)
            if isinstance(event, Progress) and "placing" in event.message:
                cancel.cancel()
    assert frames > 0  # the fit streamed
    kept = list((labelled_folder.parent / "cache").rglob("tsne-maps/*.pickle"))
    assert len(kept) == 1
    events = []
    result = drive(large_embed(monkeypatch, labelled_folder, algo="tsne", perplexity=2), on_progress=events.append,
                   on_frame=events.append)
    assert result.array.shape == (9, 2) and np.isfinite(result.array).all()
    assert not any(isinstance(event, Frame) for event in events)  # the kept map: nothing fitted again


def test_a_large_embedding_keeps_its_paths_in_a_csv_not_in_every_record(labelled_folder, monkeypatch):
    import csv

    result = drive(large_embed(monkeypatch, labelled_folder, algo="pca"))
    assert "paths" not in result.metrics and "labels" not in result.metrics
    with open(result.metrics["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == sorted(result.display.paths)
    coordinates = np.array([[float(row["x"]), float(row["y"])] for row in rows])
    np.testing.assert_allclose(coordinates, result.array, rtol=1e-5, atol=1e-6)
