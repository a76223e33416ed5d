"""The FAISS neighbour index over a feature store: exact against the scan (flat), recall (IVF),
reuse, rebuilding when the rows change or the file is damaged, cancel, concurrent builders."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import engine.data.vector_index as vector_index
from engine.core.errors import JobCancelled, MethodInputError
from engine.core.jobs import CancelToken, Progress, drive
from engine.data.datasets import Dataset, DatasetItem
from engine.data.extraction import Extracted
from engine.data.feature_store import FeatureStore
from engine.data.nearest import nearest
from engine.data.vector_index import IndexPlan, index_files, load_index, open_index

COUNT, DIM, CENTRES = 20_000, 64, 40
KEY = {"model": "m", "layer": "l", "kind": "avgpool"}


def clustered(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """Points around a few dozen centres, spread like features of a few dozen classes:
    neighbours mean something here, unlike in uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)) * 4
    return (centres[rng.integers(0, CENTRES, count)] + rng.standard_normal((count, dim))).astype(np.float32)


def items(count: int, start: int = 0) -> list[DatasetItem]:
    return [DatasetItem(f"/data/{i:06d}.png", None, 100, i) for i in range(start, start + count)]


def fill(folder, count: int, seed: int = 0) -> FeatureStore:
    store = FeatureStore.open(folder, KEY)
    store.append(items(count), clustered(count, seed=seed))
    return store


def unseen_queries(count: int = 40, seed: int = 7) -> np.ndarray:
    """Queries near the data but not in it (another draw of the same centres, jittered)."""
    rng = np.random.default_rng(seed)
    near = clustered(COUNT, seed=0)[rng.integers(0, COUNT, count)]
    return near + 0.5 * rng.standard_normal((count, DIM)).astype(np.float32)


def exact(store: FeatureStore, rows: np.ndarray, queries: np.ndarray, metric: str, k: int = 10):
    return nearest(store.blocks(), queries, k, metric, norms=store.norms(), subset=rows)


def index_names(store: FeatureStore) -> list[str]:
    return sorted(p.name for p in store.folder.iterdir() if p.name.startswith(("index-", ".index-")))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """20,000 x 64 clustered vectors in a store, shared by the read-only tests."""
    store = fill(tmp_path_factory.mktemp("big"), COUNT)
    yield store
    store.close()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_the_flat_index_gives_the_exact_scans_answer(big, metric):
    rows = np.arange(COUNT)[::2]  # a dataset's subset of the store's rows
    index = drive(open_index(big, rows, metric, kind="flat"))
    queries = unseen_queries()
    found, distances = index.search(queries, 10)
    want, want_distances = exact(big, rows, queries, metric)
    assert np.array_equal(found, want)
    assert np.allclose(distances, want_distances, rtol=1e-6, atol=1e-6)
    single, single_distances = index.search(queries[3], 10)
    assert np.array_equal(single, want[3]) and np.allclose(single_distances, want_distances[3], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_the_ivf_index_finds_most_true_neighbours_at_exact_distances(big, metric):
    rows = np.arange(COUNT)
    index = drive(open_index(big, rows, metric, plan=IndexPlan(ivf_from=1_000)))
    assert index.kind == "ivf" and 1 <= index.meta["nprobe"] < index.meta["nlist"]  # approximate, not a full scan
    queries = unseen_queries(100)
    found, distances = index.search(queries, 10)
    want, _ = exact(big, rows, queries, metric)
    recall = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found, want)])
    assert recall >= 0.95
    # Each distance is the true distance of the row returned with it, nearest first.
    for query, positions, returned in zip(queries[:5], found, distances):
        vectors = big.matrix(rows[positions], dtype=np.float64)
        if metric == "l2":
            truth = np.linalg.norm(vectors - query, axis=1)
        else:
            truth = 1 - vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
        assert np.allclose(returned, truth, rtol=1e-5, atol=1e-5) and np.all(np.diff(returned) >= 0)


def test_the_plan_picks_the_scan_then_flat_then_ivf():
    plan = IndexPlan(flat_from=100, ivf_from=1_000)
    assert [plan.kind(n) for n in (99, 100, 999, 1_000)] == ["scan", "flat", "flat", "ivf"]
    assert IndexPlan().kind(vector_index.IVF_FROM - 1) == "scan"  # the default: no flat tier
    assert IndexPlan().kind(vector_index.IVF_FROM) == "ivf"


def test_the_index_is_saved_and_reused_not_rebuilt(tmp_path, monkeypatch):
    store = fill(tmp_path, 3_000)
    rows = np.arange(3_000)
    first = drive(open_index(store, rows, "l2", kind="flat"))
    path = first.path
    written = path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt an index that was saved")

    monkeypatch.setattr(vector_index, "_build_flat", no_build)
    second = drive(open_index(store, rows, "l2", kind="flat"))
    assert second.path == path and path.stat().st_mtime_ns == written
    assert np.array_equal(second.search(clustered(5, seed=3), 10)[0], first.search(clustered(5, seed=3), 10)[0])
    # Other files appended to the store do not touch these rows: still the same index.
    store.append(items(500, start=3_000), clustered(500, seed=4))
    third = drive(open_index(store, rows, "l2", kind="flat"))
    assert third.path == path and path.stat().st_mtime_ns == written
    store.close()


def test_rows_added_to_the_dataset_rebuild_its_index_and_retire_the_old_one(tmp_path):
    store = fill(tmp_path, 3_000)
    old_rows = np.arange(3_000)
    old = drive(open_index(store, old_rows, "l2", kind="flat", name="photos"))
    other = drive(open_index(store, old_rows[:1_000], "l2", kind="flat", name="another dataset"))
    added = store.append(items(500, start=3_000), clustered(500, seed=5) + 40)  # far from everything before
    rows = np.concatenate([old_rows, added])
    new = drive(open_index(store, rows, "l2", kind="flat", name="photos"))
    assert new.path != old.path and not old.path.exists() and other.path.exists()
    query = store.matrix(added[:1], dtype=np.float32)[0]
    found, _ = new.search(query, 10)
    assert found[0] == 3_000 and np.array_equal(found, exact(store, rows, query, "l2")[0])
    assert load_index(store, old_rows, "l2", "flat", name="photos") is None
    store.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "meta"])
def test_a_damaged_index_is_rebuilt_not_an_error(tmp_path, damage):
    store = fill(tmp_path, 3_000)
    rows = np.arange(3_000)
    index_path, meta_path = index_files(store, rows, "cosine", "flat")
    drive(open_index(store, rows, "cosine", kind="flat"))
    if damage == "garbage":  # same length, so only FAISS's own reading can tell
        data = bytearray(index_path.read_bytes())
        data[:64] = b"\xff" * 64
        index_path.write_bytes(bytes(data))
    elif damage == "truncated":
        index_path.write_bytes(index_path.read_bytes()[:1000])
    else:
        meta_path.write_text("{not json")
    assert load_index(store, rows, "cosine", "flat") is None
    rebuilt = drive(open_index(store, rows, "cosine", kind="flat"))
    queries = clustered(5, seed=9)
    assert np.array_equal(rebuilt.search(queries, 10)[0], exact(store, rows, queries, "cosine")[0])
    assert load_index(store, rows, "cosine", "flat") is not None
    store.close()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_a_cancelled_build_leaves_no_index_behind(tmp_path, kind):
    store = fill(tmp_path, 6_000)
    cancel = CancelToken()
    job = open_index(store, np.arange(6_000), "l2", kind=kind, cancel=cancel, chunk_rows=1_000)
    messages = []
    with pytest.raises(JobCancelled):
        for event in job:
            messages.append(event.message)
            if len(messages) == 2:
                cancel.cancel()
    assert len(messages) == 2 and all(isinstance(m, str) and m for m in messages)
    assert index_names(store) == []
    store.close()


def test_two_builders_of_one_index_leave_one_whole_index(tmp_path):
    """One build finishes while another is midway (two processes, say): the second's rename
    replaces the first's file whole, and every reader sees a complete, matching index."""
    store = fill(tmp_path, 4_000)
    rows = np.arange(4_000)
    slow = open_index(store, rows, "l2", kind="flat", chunk_rows=500)
    assert isinstance(next(slow), Progress) and isinstance(next(slow), Progress)
    first = drive(open_index(store, rows, "l2", kind="flat"))
    try:
        while True:
            next(slow)
    except StopIteration as stop:
        second = stop.value
    assert second.path == first.path
    assert sorted(index_names(store)) == sorted([first.path.name, first.path.with_suffix(".json").name])
    queries = clustered(5, seed=11)
    want = exact(store, rows, queries, "l2")[0]
    for index in (first, second, load_index(store, rows, "l2", "flat")):
        assert np.array_equal(index.search(queries, 10)[0], want)
    store.close()


def test_extracted_nearest_goes_through_the_index_past_the_plans_threshold(tmp_path):
    store = fill(tmp_path, 3_000)
    dataset = Dataset(root=tmp_path, name="clusters", items=items(3_000))
    kept = np.arange(0, 3_000, 3)  # some files could not be read: the dataset's rows are a subset
    extracted = Extracted(dataset=dataset, layer="l", kind="avgpool", indices=kept, rows=kept, store=store,
                          index_plan=IndexPlan(flat_from=500))
    events = list(_events(extracted.prepare_nearest("cosine")))
    assert events and events[-1].fraction == 1.0
    [index_file] = [name for name in index_names(store) if name.endswith(".faiss")]
    assert "-flat" in index_file
    query = clustered(1, seed=13)[0]
    positions, distances = extracted.nearest(query, 8, "cosine")
    want, want_distances = exact(store, kept, query, "cosine", 8)
    assert np.array_equal(positions, want) and np.allclose(distances, want_distances, atol=1e-6)
    small = Extracted(dataset=dataset, layer="l", kind="avgpool", indices=kept, rows=kept, store=store)
    assert np.array_equal(small.nearest(query, 8, "cosine")[0], want)  # the default plan scans this few
    assert small._indexes == {"cosine": None}
    store.close()


def test_a_folder_that_cannot_take_the_index_still_answers(tmp_path, monkeypatch):
    store = fill(tmp_path, 2_000)
    rows = np.arange(2_000)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vector_index, "write_together", full_disk)
    index = drive(open_index(store, rows, "l2", kind="flat"))
    queries = clustered(3, seed=15)
    assert np.array_equal(index.search(queries, 10)[0], exact(store, rows, queries, "l2")[0])
    assert index_names(store) == []
    store.close()


def test_without_faiss_the_message_says_what_to_install(tmp_path, monkeypatch):
    store = fill(tmp_path, 600)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MethodInputError, match="pip install faiss-cpu"):
        drive(open_index(store, np.arange(600), "l2", plan=IndexPlan(ivf_from=100)))
    assert drive(open_index(store, np.arange(600), "l2")) is None  # the scan needs no FAISS
    store.close()


def test_a_wrong_metric_or_kind_is_refused_by_name(big):
    with pytest.raises(ValueError, match="metric must be one of l2, cosine, not 'dot'"):
        drive(open_index(big, np.arange(10), "dot"))
    with pytest.raises(ValueError, match="index kind must be one of scan, flat, ivf, not 'hnsw'"):
        drive(open_index(big, np.arange(10), "l2", kind="hnsw"))


def _events(job):
    try:
        while True:
            yield next(job)
    except StopIteration:
        return
