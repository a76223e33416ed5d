"""The on-disk feature store (shards, index, crash safety) and the nearest-neighbour query."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from engine.data.datasets import DatasetItem
from engine.data.feature_store import FeatureStore
from engine.data.nearest import nearest, row_norms

KEY = {"model": "m", "weights": "w", "layer": "conv", "kind": "avgpool", "preprocessing": {"size": 8}}


def items(n: int, start: int = 0, size: int = 100) -> list[DatasetItem]:
    return [DatasetItem(f"/data/{i:05d}.png", None, size, 1_000 + i) for i in range(start, start + n)]


def vectors(n: int, dim: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32) * 3


def test_append_then_lookup_round_trips_through_float16(tmp_path):
    with FeatureStore.open(tmp_path, KEY) as store:
        assert store.dim is None and len(store) == 0
        assert store.lookup(items(3)).tolist() == [-1, -1, -1]
        values = vectors(3)
        rows = store.append(items(3), values)
        assert rows.tolist() == [0, 1, 2] and store.dim == 6 and len(store) == 3
        assert store.lookup(items(3)).tolist() == [0, 1, 2]
        assert store.lookup(items(2, start=1) + items(1, start=7)).tolist() == [1, 2, -1]
        stored = store.matrix([2, 0], dtype=np.float32)
        assert np.array_equal(stored, values[[2, 0]].astype(np.float16).astype(np.float32))
        assert store.matrix([0, 1, 2]).dtype == np.float16


def test_a_changed_file_misses(tmp_path):
    with FeatureStore.open(tmp_path, KEY) as store:
        store.append(items(2), vectors(2))
        touched = [DatasetItem(items(1)[0].path, None, 100, 999_999)]
        resized = [DatasetItem(items(2)[1].path, None, 101, 1_001)]
        assert store.lookup(touched + resized).tolist() == [-1, -1]
        store.append(touched, vectors(1, seed=5))  # the new version gets a new row
        assert store.lookup(touched + items(1)).tolist() == [2, -1]
        assert len(store) == 3 and store.live_rows == 2


def test_reopening_sees_every_committed_row(tmp_path):
    first = FeatureStore.open(tmp_path, KEY)
    first.append(items(4), vectors(4))
    second = FeatureStore.open(tmp_path, KEY)  # another process, say; the first is still open
    assert second.lookup(items(4)).tolist() == [0, 1, 2, 3] and second.dim == 6
    assert second.folder == first.folder
    second.append(items(2, start=4), vectors(2, seed=1))
    assert first.lookup(items(6)).tolist() == list(range(6))
    first.close(), second.close()


def test_different_keys_are_different_stores(tmp_path):
    a = FeatureStore.open(tmp_path, KEY)
    b = FeatureStore.open(tmp_path, {**KEY, "layer": "other"})
    c = FeatureStore.open(tmp_path, KEY, dtype=np.float32)
    assert len({a.folder, b.folder, c.folder}) == 3
    a.append(items(1), vectors(1))
    assert b.lookup(items(1)).tolist() == [-1] and c.lookup(items(1)).tolist() == [-1]
    c.append(items(1), vectors(1))
    assert c.matrix([0]).dtype == np.float32 and np.array_equal(c.matrix([0]), vectors(1))
    for store in (a, b, c):
        store.close()


def test_more_rows_than_one_shard(tmp_path):
    values = vectors(13, dim=4)
    with FeatureStore.open(tmp_path, KEY, shard_rows=5) as store:
        store.append(items(3), values[:3])
        store.append(items(10, start=3), values[3:])  # crosses two shard boundaries
        assert sorted(p.name for p in store.folder.glob("shard-*.vec")) == [
            "shard-00000.vec", "shard-00001.vec", "shard-00002.vec"]
        expected = values.astype(np.float16)
        assert [len(b) for b in store.blocks()] == [5, 5, 3]
        assert np.array_equal(np.concatenate(store.blocks()), expected)
        rows = store.lookup(items(13))
        assert rows.tolist() == list(range(13))
        scattered = np.array([12, 0, 7, 5, 4, 9])
        assert np.array_equal(store.matrix(scattered), expected[scattered])
        assert np.allclose(store.norms(), np.linalg.norm(expected.astype(np.float32), axis=1), rtol=1e-6)
        assert np.allclose(store.norms([3, 11]), store.norms()[[3, 11]])
    with FeatureStore.open(tmp_path, KEY, shard_rows=999) as again:  # an existing store keeps its shards
        assert again.shard_rows == 5 and np.array_equal(again.matrix(np.arange(13)), expected)


def test_consecutive_rows_in_one_shard_are_a_memory_map_not_a_copy(tmp_path):
    with FeatureStore.open(tmp_path, KEY) as store:
        store.append(items(6), vectors(6))
        view = store.matrix([1, 2, 3, 4])
        assert isinstance(view, np.memmap) and not view.flags.writeable
        assert np.shares_memory(view, store.blocks()[0])


def test_a_failed_append_leaves_nothing_behind_and_the_next_reuses_its_rows(tmp_path, monkeypatch):
    with FeatureStore.open(tmp_path, KEY) as store:
        store.append(items(2), vectors(2))

        class Boom(Exception):
            pass

        real = store._db

        class FailingConnection:
            """Writes the vectors, then dies before the index commits: a crash mid-append."""

            def __getattr__(self, name):
                return getattr(real, name)

            def executemany(self, *args):
                raise Boom

        monkeypatch.setattr(store, "_db", FailingConnection())
        with pytest.raises(Boom):
            store.append(items(3, start=2), vectors(3, seed=1))
        monkeypatch.setattr(store, "_db", real)
        assert len(store) == 2 and store.lookup(items(5)).tolist() == [0, 1, -1, -1, -1]
        fresh = vectors(3, seed=2)
        assert store.append(items(3, start=2), fresh).tolist() == [2, 3, 4]
        assert np.array_equal(store.matrix([2, 3, 4], dtype=np.float32), fresh.astype(np.float16).astype(np.float32))
        assert real.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_index_is_plain_sqlite(tmp_path):
    with FeatureStore.open(tmp_path, KEY) as store:
        store.append(items(2), vectors(2))
        folder = store.folder
    with sqlite3.connect(folder / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 2
        info = dict(db.execute("SELECT name, value FROM info"))
    assert info["rows"] == "2" and info["dim"] == "6" and info["dtype"] == "float16"


def test_float16_clips_instead_of_overflowing(tmp_path):
    with FeatureStore.open(tmp_path, KEY) as store:
        store.append(items(1), np.array([[1e6, -1e6, np.nan, 1.0, 0.0, 2.0]]))
        row = store.matrix([0], dtype=np.float32)[0]
        assert row[0] == 65504 and row[1] == -65504 and np.isnan(row[2])


def test_wrong_shapes_are_refused(tmp_path):
    with FeatureStore.open(tmp_path, KEY, dim=6) as store:
        with pytest.raises(ValueError):
            store.append(items(2), vectors(3))
        with pytest.raises(ValueError, match="6 features"):
            store.append(items(1), vectors(1, dim=5))
        assert len(store) == 0
    with pytest.raises(ValueError, match="6 features"):
        FeatureStore.open(tmp_path, KEY, dim=7)
    with FeatureStore.open(tmp_path, KEY) as store, pytest.raises(IndexError):
        store.matrix([0])


# --------------------------------------------------------------------------- nearest


def brute_force(matrix: np.ndarray, query: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x = matrix.astype(np.float64)
    q = query.astype(np.float64)
    if metric == "l2":
        distance = np.sqrt(((x - q) ** 2).sum(axis=1))
    else:
        distance = 1 - x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    order = np.argsort(distance, kind="stable")[:k]
    return order, distance[order]


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_nearest_matches_a_brute_force_sort(metric, dtype):
    rng = np.random.default_rng(1)
    matrix = (rng.standard_normal((3000, 64)) + rng.uniform(-1, 1, 64)).astype(dtype)
    for trial in range(5):
        query = rng.standard_normal(64).astype(np.float32)
        if trial == 0:
            query = matrix[17].astype(np.float32)  # a row itself: distance 0
        indices, distances = nearest(matrix, query, 10, metric)
        expected, expected_distances = brute_force(matrix, query, 10, metric)
        assert indices.tolist() == expected.tolist()
        assert np.allclose(distances, expected_distances, rtol=1e-5, atol=1e-6)
        if trial == 0:
            assert indices[0] == 17 and distances[0] < 1e-6


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_nearest_over_blocks_with_norms_and_a_subset(metric):
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((1000, 32)).astype(np.float16)
    blocks = [matrix[:300], matrix[300:301], matrix[301:]]
    subset = rng.permutation(1000)[:400]
    query = rng.standard_normal(32)
    indices, distances = nearest(blocks, query, 7, metric, norms=row_norms(matrix), subset=subset)
    expected, expected_distances = brute_force(matrix[subset], query, 7, metric)
    assert indices.tolist() == expected.tolist() and np.allclose(distances, expected_distances, rtol=1e-5)


def test_nearest_answers_several_queries_at_once():
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((500, 16)).astype(np.float16)
    queries = rng.standard_normal((4, 16))
    indices, distances = nearest(matrix, queries, 5, "l2")
    assert indices.shape == (4, 5) and distances.shape == (4, 5)
    for q in range(4):
        assert indices[q].tolist() == brute_force(matrix, queries[q], 5, "l2")[0].tolist()


def test_nearest_edge_cases():
    matrix = np.array([[1, 0], [0, 0], [np.nan, 1], [3, 0], [0, 2]], dtype=np.float16)
    indices, distances = nearest(matrix, np.array([1.0, 0.0]), 10, "cosine")
    assert len(indices) == 5 and indices[-1] == 2 and np.isinf(distances[-1])  # NaN rows come last
    assert indices[:2].tolist() == [0, 3] and np.allclose(distances[:2], 0)
    assert np.isclose(distances[indices.tolist().index(1)], 1.0)  # a zero row is at distance 1
    indices, distances = nearest(matrix, np.array([0.0, 0.0]), 2, "l2")
    assert indices.tolist() == [1, 0] and distances.tolist() == [0.0, 1.0]
    assert len(nearest(matrix, np.zeros(2), 3, "l2", subset=np.array([], dtype=np.int64))[0]) == 0
    with pytest.raises(ValueError):
        nearest(matrix, np.zeros(3), 3, "l2")
    with pytest.raises(ValueError):
        nearest(matrix, np.zeros(2), 3, "manhattan")


def test_large_values_do_not_overflow_the_half_precision_pass():
    rng = np.random.default_rng(4)
    matrix = (rng.uniform(0, 6000, (200, 256))).astype(np.float16)  # norms near 55,000
    query = matrix[50].astype(np.float64) + 1
    indices, distances = nearest(matrix, query, 3, "l2")
    expected, expected_distances = brute_force(matrix, query, 3, "l2")
    assert indices.tolist() == expected.tolist() and np.all(np.isfinite(distances))


def test_nearest_over_a_store(tmp_path):
    values = vectors(40, dim=8, seed=9)
    with FeatureStore.open(tmp_path, KEY, shard_rows=16) as store:
        store.append(items(40), values)
        rows = np.arange(40)[::-1]
        indices, _ = nearest(store.blocks(), values[3], 3, "l2", norms=store.norms(), subset=rows)
        assert rows[indices[0]] == 3


@pytest.mark.parametrize("damage", ["index", "shard"])
def test_a_damaged_store_starts_again_empty(tmp_path, damage):
    with FeatureStore.open(tmp_path, KEY) as store:
        store.append(items(3), vectors(3))
        folder = store.folder
    if damage == "index":
        (folder / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
        for extra in folder.glob("index.sqlite-*"):
            extra.unlink()
    else:
        (folder / "shard-00000.vec").write_bytes(b"\0" * 10)
    with FeatureStore.open(tmp_path, KEY) as store:
        assert len(store) == 0 and store.lookup(items(3)).tolist() == [-1, -1, -1]
        store.append(items(1), vectors(1))
        assert store.lookup(items(1)).tolist() == [0]
