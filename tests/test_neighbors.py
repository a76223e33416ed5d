"""Nearest neighbours: exact distances, the query left out, pixel space on digits."""

import shutil

import numpy as np
import pytest

from engine.data.datasets import open_dataset
from engine.data.extraction import extract, image_vector
from engine.core.jobs import drive
from engine.methods import METHODS, MethodContext
from engine.data.samples import sample_paths
from tests.conftest import make_tiny_model


@pytest.fixture
def photo_folder(labelled_folder):
    shutil.copy(sample_paths()["coffee"], labelled_folder / "photo" / "coffee-copy.png")
    return labelled_folder


def run(ctx, **params):
    spec = METHODS["neighbors"]
    return drive(spec.start(ctx, params))


def test_a_duplicate_comes_first_and_the_query_itself_is_left_out(photo_folder):
    model = make_tiny_model(size=32)
    query = photo_folder / "photo" / "coffee.png"
    result = run(MethodContext(model=model, image=None), dataset=str(photo_folder), layer="features.4", k=3,
                 query=str(query))
    for space in ("neighbors", "pixel_neighbors"):
        found = result.metrics[space]
        assert str(query) not in [n["path"] for n in found]
        assert found[0]["path"].endswith("coffee-copy.png") and found[0]["distance"] == pytest.approx(0, abs=1e-3)
        assert [n["distance"] for n in found] == sorted(n["distance"] for n in found)
    # Each tile of the gallery opens its image: query, then the feature row, then the pixel row.
    assert [r.path for r in result.display.regions][1:4] == [n["path"] for n in result.metrics["neighbors"]]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_distances_are_the_exact_ones(photo_folder, metric):
    model = make_tiny_model(size=32)
    query = photo_folder / "photo" / "rocket.jpg"
    result = run(MethodContext(model=model, image=None), dataset=str(photo_folder), layer="features.4", k=4,
                 metric=metric, space="feature", query=str(query))
    features = drive(extract(model, open_dataset(str(photo_folder)), "features.4"))
    vectors = features.matrix(np.float64)
    q = image_vector(model, str(query), "features.4").astype(np.float64)
    if metric == "l2":
        expected = np.linalg.norm(vectors - q, axis=1)
    else:
        expected = 1 - vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    by_path = dict(zip(features.paths, expected))
    features.close()
    for neighbour in result.metrics["neighbors"]:
        assert neighbour["distance"] == pytest.approx(by_path[neighbour["path"]], rel=1e-3, abs=1e-4)


def test_through_the_faiss_index_the_neighbours_are_the_scans(photo_folder, monkeypatch):
    import engine.data.vector_index as vector_index

    model = make_tiny_model(size=32)
    params = dict(dataset=str(photo_folder), layer="features.4", k=4, metric="cosine", space="feature",
                  query=str(photo_folder / "photo" / "rocket.jpg"))
    scanned = run(MethodContext(model=model, image=None), **params)
    monkeypatch.setattr(vector_index, "DEFAULT_PLAN", vector_index.IndexPlan(flat_from=1))
    messages = []
    indexed = drive(METHODS["neighbors"].start(MethodContext(model=model, image=None), params),
                    on_progress=lambda p: messages.append(p.message))
    assert any(m.startswith("indexing") for m in messages)
    assert indexed.metrics["neighbors"] == scanned.metrics["neighbors"]
    features = drive(extract(model, open_dataset(str(photo_folder)), "features.4"))
    assert sorted(p.suffix for p in features.store.folder.glob("index-cosine-*")) == [".faiss", ".json"]
    features.close()


def test_pixel_neighbours_of_a_digit_are_mostly_the_same_digit(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path))
    model = make_tiny_model(size=32)
    digits = open_dataset("digits")
    agree = 0
    queries = [digits.items[i] for i in range(0, 1797, 181)]
    for item in queries:
        result = run(MethodContext(model=model, image=None), dataset="digits", space="pixel", k=5, query=item.path)
        agree += sum(n["label"] == item.label for n in result.metrics["neighbors"])
    assert agree >= 0.85 * 5 * len(queries)  # raw-pixel kNN on these digits is known to be ~98% right


def test_no_query_and_no_image_is_a_clear_error(photo_folder):
    from engine.core.errors import MethodInputError

    with pytest.raises(MethodInputError, match="needs an image"):
        run(MethodContext(model=make_tiny_model(size=32), image=None), dataset=str(photo_folder), layer="features.4")
